"""The WorkflowService alone, in-process, for the API tests (gRPC and gateway).

Real parts: the triggers schema migrated in the session's PostgreSQL, API keys checked by
the real contacts service through the Redis cache, the common gRPC server with its
interceptors (errors, auth, workspace scoping). Not started: the Faust worker and the timer
loop, which the API tests do not need (they read what the API wrote, and insert the runs
the engine would write).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
import grpc
import redis.asyncio as aioredis
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.triggers.v1 import triggers_pb2_grpc

import services.triggers
from services.common.auth import RemoteApiKeyVerifier
from services.common.db import create_pool, migrate
from services.common.grpc_client import channel
from services.common.grpc_server import start_server
from services.triggers.config import Settings
from services.triggers.entrypoints.grpc import WorkflowServicer
from tests.integration.conftest import Workspace
from tests.support import free_port, unique

SCHEMA = "triggers"
MIGRATIONS = Path(services.triggers.__file__).parent / "migrations"
SERVICE_NAME = "nudge.triggers.v1.WorkflowService"


@dataclass
class WorkflowServer:
    address: str
    pool: asyncpg.Pool
    contacts_address: str  # the contacts service it asks (API keys, a test run's contact)


@contextlib.asynccontextmanager
async def workflow_server(contacts_address: str) -> AsyncIterator[WorkflowServer]:
    settings = Settings()
    await migrate(settings.database_url, SCHEMA, MIGRATIONS)
    pool = await create_pool(settings.database_url, SCHEMA, max_size=4)
    redis = aioredis.from_url(settings.redis_url)
    contacts = channel(contacts_address)
    port = free_port()
    server = await start_server(
        port=port,
        servicers=[
            (
                triggers_pb2_grpc.add_WorkflowServiceServicer_to_server,
                WorkflowServicer(pool, contacts, settings.internal_token),
                SERVICE_NAME,
            )
        ],
        verifier=RemoteApiKeyVerifier(contacts, redis, settings.internal_token),
        internal_token=settings.internal_token,
    )
    try:
        yield WorkflowServer(
            address=f"127.0.0.1:{port}", pool=pool, contacts_address=contacts_address
        )
    finally:
        await server.stop(1)
        await contacts.close()
        await redis.aclose()
        await pool.close()


async def new_contact(contacts_address: str, ws: Workspace) -> str:
    """A contact of ``ws``: a test run needs one (the API refuses an id it does not know)."""
    async with grpc.aio.insecure_channel(contacts_address) as channel:
        answer = await contacts_pb2_grpc.ContactServiceStub(channel).CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(email=f"{unique('run')}@example.com", first_name="Ada")
            ),
            metadata=ws.metadata,
        )
    return str(answer.contact.id)


async def insert_run(
    pool: asyncpg.Pool,
    workspace_id: str,
    workflow_id: str,
    *,
    started_at: datetime,
    state: str = "waiting",
    position: str | None = None,
    contact_id: str | None = None,
    version: int = 1,
    test_recipient: str = "",
    steps: tuple[tuple[str, str], ...] = (),
) -> str:
    """A run as the engine would have written it, with its steps taken (step id, outcome)."""
    run_id = uuid.uuid4()
    contact = uuid.UUID(contact_id) if contact_id else uuid.uuid4()
    ended = state in ("completed", "exited", "cancelled")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO runs (workspace_id, id, workflow_id, version, contact_id, state,"
            " position, trigger_event_id, started_at, updated_at, ended_at, end_reason,"
            " test_recipient) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11, $12)",
            uuid.UUID(workspace_id),
            run_id,
            uuid.UUID(workflow_id),
            version,
            contact,
            state,
            None if ended else position,
            f"event/{run_id}",
            started_at,
            started_at if ended else None,
            state if ended else "",
            test_recipient,
        )
        for step_id, outcome in steps:
            await conn.execute(
                "INSERT INTO run_steps (workspace_id, run_id, step_id, iteration, workflow_id,"
                " version, contact_id, outcome, at) VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8)",
                uuid.UUID(workspace_id),
                run_id,
                step_id,
                uuid.UUID(workflow_id),
                version,
                contact,
                outcome,
                started_at,
            )
    return str(run_id)
