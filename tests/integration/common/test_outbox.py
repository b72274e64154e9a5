"""The transactional outbox and the idempotent-consumer helper on real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.idempotency import claim_event
from services.common.kafka import KafkaPublisher, OutRecord, supports_idempotence
from services.common.outbox import OutboxRelay, add_to_outbox
from tests.integration.common.outbox_helpers import (
    event,
    expected_by_key,
    first_copies_by_key,
    new_topic,
    queue,
    read_until,
)
from tests.support import eventually, unique


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
    relay = OutboxRelay(pool, name, publisher, poll_s=60)
    task = asyncio.create_task(relay.run())
    try:
        # The relay drained the empty outbox and sleeps until woken: only a NOTIFY can wake
        # it within the next 60 s.
        await eventually(lambda: relay.waiting and relay.connects == 1)
        started = time.monotonic()
        async with pool.acquire() as conn, conn.transaction():
            await add_to_outbox(conn, name, topic, "key", event(1))
        await eventually(lambda: relay.published == 1, timeout=20)
        assert time.monotonic() - started < 30  # far below the 60 s poll: NOTIFY woke it
    finally:
        task.cancel()


async def test_an_insert_is_one_statement_and_a_transaction_notifies_once(
    schema: tuple[asyncpg.Pool, str], topic: str, infra: dict[str, str]
) -> None:
    pool, name = schema
    notified: list[str] = []
    listener = await asyncpg.connect(infra["DATABASE_URL"])
    await listener.add_listener(f"{name}_outbox", lambda *args: notified.append(args[3]))
    statements: list[str] = []
    try:
        async with pool.acquire() as conn:

            def log_query(record: Any) -> None:
                statements.append(record.query)

            conn.add_query_logger(log_query)
            for _ in range(2):
                async with conn.transaction():
                    for i in range(50):
                        await add_to_outbox(conn, name, topic, "key", event(i))
            conn.remove_query_logger(log_query)
            # Notifications arrive in commit order: once "end" is in, the others are too.
            await conn.execute(f"NOTIFY {name}_outbox, 'end'")
        await eventually(lambda: "end" in notified)
        assert notified == ["", "", "end"]
        inserts = [q for q in statements if "outbox" in q]
        assert len(inserts) == 100, "one statement per queued event, no NOTIFY round trip"
        assert not [q for q in statements if "notify" in q.lower()]
    finally:
        await listener.close()


class CancelsItsRelay(KafkaPublisher):
    """A publisher that cancels its relay's task as it queues the ``budget[0]``-th batch of
    all such publishers: a relay killed in the middle of a round (a batch sent, its rows not
    yet deleted). The budget is shared, so only one relay is killed; ``sends`` (shared too)
    says which publisher sent each batch, in order."""

    def __init__(
        self,
        bootstrap: str,
        client_id: str,
        *,
        idempotent: bool,
        budget: list[int],
        sends: list[str],
    ) -> None:
        super().__init__(bootstrap, client_id, idempotent=idempotent)
        self.task: asyncio.Task[None] | None = None
        self.budget = budget
        self.sends = sends
        self.name = client_id

    async def send_atomic_batch(
        self, topic: str, partition: int, records: Sequence[OutRecord]
    ) -> tuple[int, asyncio.Future[object]]:
        self.sends.append(self.name)
        self.budget[0] -= 1
        if self.budget[0] == 0:
            assert self.task is not None
            self.task.cancel()
        return await super().send_atomic_batch(topic, partition, records)


async def test_two_relays_on_one_schema_publish_each_row_in_key_order_and_take_over(
    schema: tuple[asyncpg.Pool, str], infra: dict[str, str]
) -> None:
    """Two relays (two replicas) run on one schema: one drains, the other waits; the drainer
    is killed mid-round and the other takes over. Every row reaches Kafka, each key's
    events first arrive in commit order, and the outbox ends empty."""
    pool, name = schema
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    topic = await new_topic(bootstrap, 2)
    sent = [(f"k{i % 5}", event(i, contact=f"k{i % 5}")) for i in range(3000)]
    idempotent = supports_idempotence(infra["NUDGE_KAFKA_KIND"])
    budget, sends = [20], list[str]()
    publishers = [
        CancelsItsRelay(bootstrap, f"relay-{i}", idempotent=idempotent, budget=budget, sends=sends)
        for i in range(2)
    ]
    for p in publishers:
        await p.start()
    relays = [OutboxRelay(pool, name, p, batch=100) for p in publishers]
    tasks = [asyncio.create_task(r.run()) for r in relays]
    for p, t in zip(publishers, tasks, strict=True):
        p.task = t
    try:
        # Both listen (one holds the lock, the other waits for it) before the rows come.
        await eventually(lambda: all(r.connects == 1 and r.waiting for r in relays))
        for start in range(0, len(sent), 100):
            await queue(pool, name, topic, sent[start : start + 100])
        done, _ = await asyncio.wait(tasks, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, "one relay was killed by the twentieth batch"
        killed = tasks.index(done.pop())
        assert relays[killed].published < len(sent)  # the kill landed mid-stream
        found = await read_until(bootstrap, topic, {e.event_id for _, e in sent})
        assert first_copies_by_key(found) == expected_by_key(sent)
        await eventually(lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"))
        # One relay drained at a time: every batch of the killed one, then the other's.
        first_other = sends.index(f"relay-{1 - killed}")
        assert set(sends[:first_other]) == {f"relay-{killed}"}
        assert set(sends[first_other:]) == {f"relay-{1 - killed}"}
    finally:
        for t in tasks:
            t.cancel()
        for p in publishers:
            await p.stop()


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
