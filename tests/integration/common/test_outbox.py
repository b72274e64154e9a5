"""The transactional outbox and the idempotent-consumer helper on real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.shop.v1 import shop_pb2

from services.common.db import create_pool, migrate
from services.common.events import new_envelope
from services.common.idempotency import claim_event
from services.common.kafka import KafkaPublisher, supports_idempotence
from services.common.outbox import OutboxRelay, add_to_outbox
from tests.support import eventually, unique


@pytest.fixture
async def schema(infra: dict[str, str]) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    name = unique("outbox_test").replace("-", "_")
    await migrate(infra["DATABASE_URL"], name, None)
    pool = await create_pool(infra["DATABASE_URL"], name)
    yield pool, name
    await pool.close()


@pytest.fixture
async def topic(infra: dict[str, str]) -> str:
    name = unique("test.outbox")
    admin = AIOKafkaAdminClient(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()
    return name


@pytest.fixture
async def publisher(infra: dict[str, str]) -> AsyncIterator[KafkaPublisher]:
    p = KafkaPublisher(
        infra["KAFKA_BOOTSTRAP_SERVERS"],
        "test",
        idempotent=supports_idempotence(infra["NUDGE_KAFKA_KIND"]),
    )
    await p.start()
    yield p
    await p.stop()


def event(i: int) -> Envelope:
    return new_envelope(
        "ws", shop_pb2.ShopEvent(contact_id=f"c{i}", searched=shop_pb2.Searched(query=str(i)))
    )


async def read(infra: dict[str, str], topic: str, count: int) -> list[Envelope]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"],
        group_id=unique("reader"),
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: list[Envelope] = []
    try:
        async with asyncio.timeout(30):
            while len(found) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    found += [Envelope.FromString(r.value) for r in records]
    finally:
        await consumer.stop()
    return found


async def test_committed_rows_go_out_in_order_and_rolled_back_ones_never(
    schema: tuple[asyncpg.Pool, str],
    topic: str,
    publisher: KafkaPublisher,
    infra: dict[str, str],
) -> None:
    pool, name = schema
    sent = [event(i) for i in range(1200)]  # more than one relay batch
    async with pool.acquire() as conn:
        async with conn.transaction():
            for env in sent[:600]:
                await add_to_outbox(conn, name, topic, "key", env)
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await add_to_outbox(conn, name, topic, "key", event(-1))
                raise RuntimeError("the state change failed")
        async with conn.transaction():
            for env in sent[600:]:
                await add_to_outbox(conn, name, topic, "key", env)

    relay = OutboxRelay(pool, name, publisher)
    task = asyncio.create_task(relay.run())
    try:
        got = await read(infra, topic, len(sent))
        assert [e.event_id for e in got] == [e.event_id for e in sent]
        await eventually(lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"), timeout=10)
    finally:
        task.cancel()


async def test_a_commit_wakes_the_relay_without_waiting_for_its_poll(
    schema: tuple[asyncpg.Pool, str],
    topic: str,
    publisher: KafkaPublisher,
    infra: dict[str, str],
) -> None:
    pool, name = schema
    relay = OutboxRelay(pool, name, publisher, poll_s=30)
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: relay.published == 0)
        started = time.monotonic()
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, name, topic, "key", event(1))
        await eventually(lambda: relay.published == 1, timeout=10)
        assert time.monotonic() - started < 5  # far below the 30 s poll: NOTIFY woke it
    finally:
        task.cancel()


async def test_an_event_is_claimed_once_and_a_rollback_releases_it(
    schema: tuple[asyncpg.Pool, str],
) -> None:
    pool, _ = schema
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                assert await claim_event(conn, "consumer", "e1")
                raise RuntimeError("handler failed after claiming")
        async with conn.transaction():
            assert await claim_event(conn, "consumer", "e1")  # the rollback released it
        async with conn.transaction():
            assert not await claim_event(conn, "consumer", "e1")
            assert await claim_event(conn, "other-consumer", "e1")
