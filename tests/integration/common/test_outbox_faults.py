"""The outbox relay when the broker refuses rows: for good (dead letters), or for a moment in
the middle of a batch (the order of a key holds). Real PostgreSQL and Kafka."""

from __future__ import annotations

import asyncio

import asyncpg

from services.common.kafka import KafkaPublisher
from services.common.outbox import OutboxRelay
from tests.integration.common.outbox_helpers import (
    FaultyProducer,
    event,
    expected_by_key,
    first_copies_by_key,
    new_topic,
    queue,
    read_until,
)
from tests.support import eventually


async def run_relay(relay: OutboxRelay) -> asyncio.Task[None]:
    return asyncio.create_task(relay.run())


async def test_a_row_over_the_producers_limit_is_dead_lettered_and_the_next_go_out(
    schema: tuple[asyncpg.Pool, str], publisher: KafkaPublisher, infra: dict[str, str]
) -> None:
    pool, name = schema
    topic = await new_topic(infra["KAFKA_BOOTSTRAP_SERVERS"])
    before, huge, after = event(1), event(2, pad=1_100_000), event(3)  # > max_request_size
    await queue(pool, name, topic, [("k", before), ("k", huge), ("k", after)])

    relay = OutboxRelay(pool, name, publisher)
    task = await run_relay(relay)
    try:
        found = await read_until(
            infra["KAFKA_BOOTSTRAP_SERVERS"], topic, {before.event_id, after.event_id}
        )
        assert first_copies_by_key(found) == {"k": [before.event_id, after.event_id]}
        await eventually(lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"))
        dead = await pool.fetch("SELECT value, error FROM outbox_dead_letters")
        assert [bytes(d["value"]) for d in dead] == [huge.SerializeToString()]
        assert "max_request_size" in dead[0]["error"]
        assert relay.dead_lettered == 1
        assert relay.published == 2
    finally:
        task.cancel()


async def test_a_row_the_broker_refuses_inside_a_batch_is_dead_lettered_alone(
    schema: tuple[asyncpg.Pool, str], publisher: KafkaPublisher, infra: dict[str, str]
) -> None:
    """The topic takes batches of at most 8 KiB: the relay's batch with a 12 KiB row in it is
    refused whole; the relay finds the row, dead-letters it and sends the others in order."""
    pool, name = schema
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    topic = await new_topic(bootstrap, 1, **{"max.message.bytes": "8192"})
    good = [("k", event(i)) for i in range(20)]
    refused = event(99, pad=12_000)
    sent = [*good[:10], ("k", refused), *good[10:]]
    await queue(pool, name, topic, sent)

    relay = OutboxRelay(pool, name, publisher)
    task = await run_relay(relay)
    try:
        found = await read_until(bootstrap, topic, {e.event_id for _, e in good})
        assert first_copies_by_key(found) == expected_by_key(good)
        await eventually(lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"))
        dead = await pool.fetch("SELECT value, error FROM outbox_dead_letters")
        assert [bytes(d["value"]) for d in dead] == [refused.SerializeToString()]
        assert "MessageSizeTooLarge" in dead[0]["error"]
        assert relay.dead_lettered == 1
        # The partition still takes records after the refusal (the producer's sequence
        # numbers survived it).
        later = event(100)
        await queue(pool, name, topic, [("k", later)])
        await read_until(bootstrap, topic, {later.event_id})
    finally:
        task.cancel()


async def test_a_broker_fault_mid_batch_keeps_each_keys_order(
    schema: tuple[asyncpg.Pool, str], publisher: KafkaPublisher, infra: dict[str, str]
) -> None:
    """Four contacts on two partitions, rows of 20 KB (several batches per partition and
    round); the broker fails the send holding one row of the middle once. Read back from
    Kafka, every contact's events first arrive in the order they were committed."""
    pool, name = schema
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    topic = await new_topic(bootstrap, 2)
    sent = [
        (f"contact-{i % 4}", event(i, pad=20_000, contact=f"contact-{i % 4}")) for i in range(160)
    ]
    faulty = sent[70][1]
    await queue(pool, name, topic, sent)
    producer = FaultyProducer(publisher._producer, {faulty.SerializeToString()})
    publisher._producer = producer

    relay = OutboxRelay(pool, name, publisher)
    task = await run_relay(relay)
    try:
        found = await read_until(bootstrap, topic, {e.event_id for _, e in sent})
        assert producer.failed == 1  # the fault happened
        assert first_copies_by_key(found) == expected_by_key(sent)
        await eventually(lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"))
    finally:
        task.cancel()
        publisher._producer = producer._inner
