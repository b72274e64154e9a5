"""Delivery prunes its idempotency records (services/delivery/pruning.py), on real
PostgreSQL, Kafka, contacts and the project's SMTP sink: ``transactional_keys`` and
``processed_events`` older than their horizon go (from the task its bootstrap spawns), recent
ones stay, a SendTransactional retried inside the horizon still answers ``replayed``, and a
retry after it is still never sent twice."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import grpc
import pytest
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc

from services.common import clock
from services.common.db import create_pool, migrate
from services.delivery.pruning import HORIZONS, KEY_HORIZON, prune_once
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.delivery.helpers import Sink, address, new_contact, running_sink, status_is
from tests.support import eventually, free_port, unique

S = delivery_pb2
HOUR = timedelta(hours=1)
LATE_RETRY = timedelta(days=7)  # a retry this late must still be recognised


@dataclass(frozen=True)
class Aged:
    """Rows written before delivery started: one just past its table's horizon, one just
    inside it, for each table (in a workspace and under a consumer of the test's own)."""

    workspace_id: uuid.UUID
    consumer: str


async def keys_of(conn: asyncpg.Connection, workspace_id: uuid.UUID) -> set[str]:
    rows = await conn.fetch(
        "SELECT idempotency_key FROM delivery.transactional_keys WHERE workspace_id = $1",
        workspace_id,
    )
    return {row["idempotency_key"] for row in rows}


async def claims_of(conn: asyncpg.Connection, consumer: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT event_id FROM delivery.processed_events WHERE consumer = $1", consumer
    )
    return {row["event_id"] for row in rows}


@pytest.fixture(scope="module")
async def aged(infra: dict[str, str]) -> Aged:
    from services.delivery.bootstrap import MIGRATIONS, SCHEMA

    await migrate(infra["DATABASE_URL"], SCHEMA, MIGRATIONS)
    rows = Aged(uuid.uuid4(), unique("test-prune"))
    conn = await asyncpg.connect(infra["DATABASE_URL"])
    try:
        now = clock.now()
        for name, shift in (("old", HOUR), ("recent", -HOUR)):
            await conn.execute(
                "INSERT INTO delivery.transactional_keys (workspace_id, idempotency_key,"
                " message_id, contact_id, request_sha256, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                rows.workspace_id,
                name,
                uuid.uuid4(),
                uuid.uuid4(),
                b"digest",
                now - HORIZONS["transactional_keys"] - shift,
            )
            await conn.execute(
                "INSERT INTO delivery.processed_events (consumer, event_id, processed_at)"
                " VALUES ($1, $2, $3)",
                rows.consumer,
                name,
                now - HORIZONS["processed_events"] - shift,
            )
        assert await keys_of(conn, rows.workspace_id) == {"old", "recent"}
        assert await claims_of(conn, rows.consumer) == {"old", "recent"}
    finally:
        await conn.close()
    return rows


@pytest.fixture(scope="module")
async def sink(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sink]:
    async with running_sink(tmp_path_factory.mktemp("sink")) as running:
        yield running


@pytest.fixture(scope="module")
async def delivery(
    aged: Aged, contacts_service: RunningService, sink: Sink
) -> AsyncIterator[RunningService]:
    """Started after ``aged`` wrote its rows: its start-up prunes them."""
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    settings = Settings(grpc_port=port, smtp_url=sink.url, smtp_timeout_s=10.0)
    async with run_in_process(serve, settings, port) as running:
        yield running


@pytest.fixture
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(infra["DATABASE_URL"], "delivery")
    yield p
    await p.close()


async def test_delivery_prunes_keys_and_claims_past_their_horizon_and_keeps_recent_ones(
    delivery: RunningService, aged: Aged
) -> None:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:

        async def pruned() -> bool:
            keys = await keys_of(conn, aged.workspace_id)
            claims = await claims_of(conn, aged.consumer)
            return keys == {"recent"} and claims == {"recent"}

        await eventually(pruned, timeout=60, interval=0.2)
        # The old rows went and the recent ones stayed, read once more in the test's body.
        assert await keys_of(conn, aged.workspace_id) == {"recent"}
        assert await claims_of(conn, aged.consumer) == {"recent"}
    finally:
        await conn.close()


async def send(
    delivery: RunningService, ws: Workspace, key: str, contact_id: str
) -> delivery_pb2.SendTransactionalResponse:
    async with grpc.aio.insecure_channel(delivery.address) as ch:
        answer: delivery_pb2.SendTransactionalResponse = (
            await delivery_pb2_grpc.DeliveryServiceStub(ch).SendTransactional(
                delivery_pb2.SendTransactionalRequest(
                    idempotency_key=key,
                    contact_id=contact_id,
                    content=delivery_pb2.MessageContent(subject="Receipt", body_text="Thanks"),
                ),
                metadata=ws.metadata,
            )
        )
    return answer


async def test_a_retry_inside_the_horizon_is_replayed_and_one_after_it_never_sends_twice(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    sink: Sink,
    pool: asyncpg.Pool,
) -> None:
    contact = await new_contact(contacts_service, workspace, address(), consents=())
    inside, past = unique("order"), unique("order")
    first = {key: await send(delivery, workspace, key, contact.id) for key in (inside, past)}
    assert not any(answer.replayed for answer in first.values())
    for answer in first.values():
        await eventually(
            lambda m=answer.message_id: status_is(m, S.MESSAGE_STATUS_SENT), timeout=60
        )
        assert sink.copies(answer.message_id) == 1
    # One key a week old (a caller's retry comes within hours: a week is far beyond it), the
    # other an hour past the horizon; then a round of pruning.
    for key, age in ((inside, LATE_RETRY), (past, KEY_HORIZON + HOUR)):
        await pool.execute(
            "UPDATE transactional_keys SET created_at = now() - $3::interval"
            " WHERE workspace_id = $1 AND idempotency_key = $2",
            uuid.UUID(workspace.id),
            key,
            age,
        )
    deleted = await prune_once(pool, clock.now())
    assert deleted["transactional_keys"] >= 1

    # Inside the horizon: the retried call is recognised, with its first message id.
    retried = await send(delivery, workspace, inside, contact.id)
    assert retried.replayed and retried.message_id == first[inside].message_id
    # Past it: not recognised, yet the same message id, which the ledger has sent already.
    late = await send(delivery, workspace, past, contact.id)
    assert not late.replayed and late.message_id == first[past].message_id
    # A later mail to the same contact comes behind the late retry (same key, in order):
    # once it is sent, the retry was handled, and it sent nothing.
    behind = await send(delivery, workspace, unique("order"), contact.id)
    await eventually(lambda: status_is(behind.message_id, S.MESSAGE_STATUS_SENT), timeout=60)
    assert sink.copies(first[past].message_id) == 1
    assert sink.copies(first[inside].message_id) == 1
