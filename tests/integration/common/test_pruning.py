"""Pruning the idempotency claims (``processed_events``, contacts' ``ingested_events``) past
the horizon, on real PostgreSQL: what is older goes, a replay inside the horizon stays a
no-op, and the horizon outlives every topic's retention on the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.common import clock
from services.common.db import create_pool, migrate
from services.common.idempotency import HORIZON, claim_event, prune_claims, prune_forever
from services.common.topics import TOPICS
from services.contacts.adapters.postgres import HeldClaim, IngestionClaim, claim_ingestions
from services.contacts.bootstrap import MIGRATIONS as CONTACTS_MIGRATIONS
from tests.support import eventually, unique

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    """A schema with the common tables and the contacts service's own."""
    name = unique("prune_test").replace("-", "_")
    await migrate(infra["DATABASE_URL"], name, CONTACTS_MIGRATIONS)
    p = await create_pool(infra["DATABASE_URL"], name)
    yield p
    await p.close()


@pytest.fixture
def frozen() -> Iterator[clock.FrozenClock]:
    frozen = clock.FrozenClock(NOW)
    clock.set_clock(frozen)
    yield frozen
    clock.set_clock(clock.SystemClock())


async def claim_at(pool: asyncpg.Pool, event_id: str, at: datetime) -> None:
    async with pool.acquire() as conn, conn.transaction():
        assert await claim_event(conn, "consumer", event_id)
        await conn.execute(
            "UPDATE processed_events SET processed_at = $1 WHERE event_id = $2", at, event_id
        )


async def test_processed_events_past_the_horizon_go_and_a_replay_inside_it_is_a_no_op(
    pool: asyncpg.Pool,
) -> None:
    await claim_at(pool, "old", NOW - HORIZON - timedelta(hours=1))
    await claim_at(pool, "inside", NOW - HORIZON + timedelta(hours=1))
    await claim_at(pool, "new", NOW)

    assert await prune_claims(pool, "processed_events", NOW - HORIZON) == 1

    async with pool.acquire() as conn, conn.transaction():
        assert not await claim_event(conn, "consumer", "inside")  # replayed: still a no-op
        assert not await claim_event(conn, "consumer", "new")
        assert await claim_event(conn, "consumer", "old")  # pruned: its record is long gone


async def test_pruning_goes_in_small_transactions_until_nothing_is_left(
    pool: asyncpg.Pool,
) -> None:
    old = NOW - HORIZON - timedelta(days=1)
    await pool.execute(
        "INSERT INTO processed_events (consumer, event_id, processed_at)"
        " SELECT 'consumer', 'e' || i, $1 FROM generate_series(1, 2500) i",
        old,
    )
    assert await prune_claims(pool, "processed_events", NOW - HORIZON, batch=1000) == 2500
    assert await pool.fetchval("SELECT count(*) FROM processed_events") == 0


async def test_ingested_events_past_the_horizon_go_and_a_retry_inside_it_is_a_no_op(
    pool: asyncpg.Pool, frozen: clock.FrozenClock
) -> None:
    workspace = uuid.uuid4()
    contact = uuid.uuid4()
    payload = b"the same event"

    async def claim(key: str, at: datetime) -> tuple[uuid.UUID, HeldClaim | None]:
        event_id = uuid.uuid4()
        async with pool.acquire() as conn, conn.transaction():
            held = await claim_ingestions(
                conn, [IngestionClaim(workspace, key, event_id, contact, payload)], at
            )
        return event_id, held.get((workspace, key))

    first: dict[str, uuid.UUID] = {}
    for key, at in [
        ("old", NOW - HORIZON - timedelta(hours=1)),
        ("inside", NOW - timedelta(days=29)),
    ]:
        event_id, held = await claim(key, at)
        assert held is None
        first[key] = event_id

    task = asyncio.create_task(prune_forever(pool, ("processed_events", "ingested_events")))
    try:
        await eventually(
            lambda: pool.fetchval("SELECT count(*) = 1 FROM ingested_events"), timeout=10
        )
    finally:
        task.cancel()

    _, retried = await claim("inside", NOW)
    assert retried is not None  # the platform's retry is still recognised
    assert retried.event_id == first["inside"]
    _, again = await claim("old", NOW)
    assert again is None


async def test_the_horizon_outlives_every_topics_retention(infra: dict[str, str]) -> None:
    if infra["NUDGE_KAFKA_KIND"].startswith("tansu"):
        pytest.skip("Tansu does not describe topic configurations")
    admin = AIOKafkaAdminClient(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await admin.start()
    try:
        answers = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in TOPICS]
        )
    finally:
        await admin.close()
    retention = {
        name: int(value)
        for answer in answers
        for _error, _message, _type, name, entries in answer.resources
        for key, value, *_ in entries
        if key == "retention.ms"
    }
    assert set(retention) == set(TOPICS)
    for topic, ms in retention.items():
        assert ms != -1 and timedelta(milliseconds=ms) < HORIZON, topic
