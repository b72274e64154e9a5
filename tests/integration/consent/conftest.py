"""Fixtures of the consent tests: a pool on the contacts schema, beside the running service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.db import create_pool
from tests.integration.conftest import RunningService, Workspace
from tests.support import unique


@pytest.fixture
async def pool(
    infra: dict[str, str], contacts_service: RunningService
) -> AsyncIterator[asyncpg.Pool]:
    """The contacts schema, migrated by the running service."""
    p = await create_pool(infra["DATABASE_URL"], "contacts", max_size=4)
    yield p
    await p.close()


async def envelopes_until(
    infra: dict[str, str],
    topic: str,
    key: str,
    last: str | Callable[[Envelope], bool],
    timeout: float = 60,
) -> list[Envelope]:
    """The envelopes on ``topic`` keyed by ``key``, in order, up to and including the first
    that is ``last`` (its event id, or a predicate); the outbox relays a key's rows in order."""
    is_last = last if callable(last) else (lambda e: e.event_id == last)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"],
        group_id=unique("consent-reader"),
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: list[Envelope] = []
    try:
        async with asyncio.timeout(timeout):
            while not any(is_last(e) for e in found):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [
                        Envelope.FromString(r.value) for r in records if r.key == key.encode()
                    ]
    finally:
        await consumer.stop()
    end = next(n for n, e in enumerate(found) if is_last(e))
    return found[: end + 1]


@pytest.fixture
async def channel(contacts_service: RunningService) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        yield ch


async def new_workspace(contacts_service: RunningService) -> Workspace:
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        answer = await contacts_pb2_grpc.WorkspaceServiceStub(ch).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Other shop", slug=unique("ws")),
            metadata=(("authorization", "Admin test-admin-token"),),
        )
    return Workspace(id=answer.workspace_id, api_key=answer.api_key)


async def create_contact(
    channel: grpc.aio.Channel, ws: Workspace, *consents: int, email: str = ""
) -> str:
    answer = await contacts_pb2_grpc.ContactServiceStub(channel).CreateContact(
        contacts_pb2.CreateContactRequest(
            contact=contacts_pb2.Contact(email=email or f"{unique('c')}@example.com"),
            consents=list(consents),  # type: ignore[arg-type]
        ),
        metadata=ws.metadata,
    )
    return str(answer.contact.id)


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    """The field names of an INVALID_ARGUMENT's BadRequest details."""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.BadRequest details"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


def internal_metadata(workspace_id: str) -> tuple[tuple[str, str], ...]:
    return (
        ("authorization", "Internal dev-internal-token"),
        ("x-nudge-workspace-id", workspace_id),
    )
