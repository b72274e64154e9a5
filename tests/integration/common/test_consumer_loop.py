"""The consumer loop on a real Kafka: keys in parallel and each key in order, commits only
below the first unfinished record, no rebalance while a handler outlasts the poll interval,
a bounded number of records in flight, dead-lettering after a bounded number of attempts.

The helpers here are shared with ``test_consumer_loop_outages.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.shop.v1 import shop_pb2

from deploy.local.topics import ensure_topics
from services.common.consumer import (
    DLQ_ATTEMPTS,
    DLQ_GROUP,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
)
from services.common.events import new_envelope
from services.common.kafka import KafkaConsumerLoop
from tests.support import eventually, unique


def payload(text: str) -> bytes:
    """An envelope whose search query carries ``text``, for the handler to read back."""
    event = shop_pb2.ShopEvent(contact_id="c", searched=shop_pb2.Searched(query=text))
    return new_envelope(unique("ws"), event).SerializeToString()


def text_of(envelope: Envelope) -> str:
    return str(envelope.shop_event.searched.query)


async def new_topic(bootstrap: str, partitions: int, prefix: str = "test.loop") -> str:
    topic = unique(prefix)
    await ensure_topics(bootstrap, {topic: partitions})
    return topic


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Send ``(key, value)`` records in order and wait for every ack."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, value, key=key, headers=headers or [])
            for key, value in records
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def read_all(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Every record of ``topic`` so far (no group: nothing joins, nothing commits)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        found: list[ConsumerRecord] = []
        while True:
            positions = [await consumer.position(tp) for tp in tps]
            if all(position >= ends[tp] for position, tp in zip(positions, tps, strict=True)):
                return found
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                found.extend(records)
    finally:
        await consumer.stop()


def dead_letters_of(records: list[ConsumerRecord], group: str) -> list[ConsumerRecord]:
    return [r for r in records if dict(r.headers).get(DLQ_GROUP) == group.encode()]


@contextlib.asynccontextmanager
async def running(loop: KafkaConsumerLoop) -> AsyncIterator[asyncio.Task[None]]:
    """The loop started and running; stopped (and its run task ended) after."""
    await loop.start()
    task = asyncio.create_task(loop.run())
    try:
        yield task
    finally:
        await loop.stop()
        await asyncio.wait_for(task, timeout=30)


async def test_keys_run_in_parallel_and_each_key_in_order(infra: dict[str, str]) -> None:
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    topic = await new_topic(bootstrap, 4)
    keys, per_key = 30, 20
    # Interleaved, as producers would send them: key order within a partition is what counts.
    await produce(
        bootstrap,
        topic,
        ((f"k{k}".encode(), payload(f"k{k}:{n}")) for n in range(per_key) for k in range(keys)),
    )
    seen: dict[str, list[int]] = defaultdict(list)
    running_keys: set[str] = set()
    same_key_overlaps = 0
    active = max_active = 0
    rng = random.Random(11)

    async def handler(envelope: Envelope, record: Any) -> None:
        nonlocal active, max_active, same_key_overlaps
        key, n = text_of(envelope).split(":")
        if key in running_keys:
            same_key_overlaps += 1
        running_keys.add(key)
        active += 1
        max_active = max(max_active, active)
        try:
            await asyncio.sleep(rng.random() * 0.004)
            seen[key].append(int(n))
        finally:
            active -= 1
            running_keys.discard(key)

    loop = KafkaConsumerLoop(bootstrap, unique("g"), [topic], handler, concurrency=8)
    async with running(loop):
        await eventually(lambda: sum(map(len, seen.values())) == keys * per_key, timeout=90)
    assert {key: ns for key, ns in seen.items()} == {
        f"k{k}": list(range(per_key)) for k in range(keys)
    }
    assert same_key_overlaps == 0
    assert max_active > 1, "handlers never overlapped: the loop ran one record at a time"
    assert loop.dead_lettered == 0


async def test_commits_stop_below_an_unfinished_record_and_a_restart_redelivers_from_it(
    infra: dict[str, str],
) -> None:
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    topic = await new_topic(bootstrap, 1)
    group = unique("g")
    total, stuck = 20, 5
    await produce(bootstrap, topic, ((f"k{n}".encode(), payload(str(n))) for n in range(total)))
    first: set[int] = set()
    never = asyncio.Event()

    async def blocks_on_stuck(envelope: Envelope, record: Any) -> None:
        n = int(text_of(envelope))
        if n == stuck:
            await never.wait()
        first.add(n)

    loop = KafkaConsumerLoop(bootstrap, group, [topic], blocks_on_stuck, drain_timeout_s=0.5)
    async with running(loop):
        await eventually(lambda: first == set(range(total)) - {stuck}, timeout=60)
        # Everything above the stuck record is done; the commit must still stop at it.
        tp = TopicPartition(topic, 0)

        async def committed_at_stuck() -> bool:
            return (await committed(bootstrap, group)).get(tp) == stuck

        await eventually(committed_at_stuck, timeout=30)
    never.set()

    second: list[int] = []

    async def records_offsets(envelope: Envelope, record: Any) -> None:
        second.append(record.offset)

    async with running(KafkaConsumerLoop(bootstrap, group, [topic], records_offsets)):
        await eventually(lambda: len(second) >= total - stuck, timeout=60)

        async def all_committed() -> bool:
            return (await committed(bootstrap, group)).get(tp) == total

        await eventually(all_committed, timeout=30)
    # The stuck record and those not yet committed came again; nothing below it did.
    assert sorted(second) == list(range(stuck, total))
    assert first | {int(o) for o in second} == set(range(total))


async def test_a_handler_slower_than_the_poll_interval_keeps_its_partitions(
    infra: dict[str, str],
) -> None:
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    topic = await new_topic(bootstrap, 2)
    group = unique("g")
    poll_interval_ms = 1500
    await produce(bootstrap, topic, ((f"k{n % 4}".encode(), payload(str(n))) for n in range(12)))
    handled: list[int] = []

    async def slow_first(envelope: Envelope, record: Any) -> None:
        n = int(text_of(envelope))
        if n == 0:
            # The subject of this test: one handler busy for three poll intervals.
            await asyncio.sleep(3 * poll_interval_ms / 1000)
        handled.append(n)

    loop = KafkaConsumerLoop(
        bootstrap, group, [topic], slow_first, max_poll_interval_ms=poll_interval_ms
    )
    async with running(loop):
        await eventually(lambda: 0 in handled, timeout=60)

        async def all_committed() -> bool:
            return sum((await committed(bootstrap, group)).values()) == 12

        await eventually(all_committed, timeout=30)
        assert loop.assignments == 1, "the group rebalanced while the slow handler ran"
    assert sorted(handled) == list(range(12)), "records were redelivered after a rebalance"


async def test_records_in_flight_stay_within_the_bound(infra: dict[str, str]) -> None:
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    topic = await new_topic(bootstrap, 2)
    bound, total = 10, 100
    await produce(bootstrap, topic, ((f"k{n}".encode(), payload(str(n))) for n in range(total)))
    release = asyncio.Event()
    handled: set[int] = set()
    most_in_flight = 0

    loop: KafkaConsumerLoop

    async def waits(envelope: Envelope, record: Any) -> None:
        nonlocal most_in_flight
        most_in_flight = max(most_in_flight, loop.in_flight)
        await release.wait()
        handled.add(int(text_of(envelope)))

    loop = KafkaConsumerLoop(
        bootstrap, unique("g"), [topic], waits, concurrency=4, max_in_flight=bound
    )
    async with running(loop):
        await eventually(lambda: loop.in_flight == bound and loop.paused, timeout=60)
        assert not handled
        release.set()
        await eventually(lambda: len(handled) == total, timeout=60)
    assert most_in_flight <= bound
    assert most_in_flight > 0


async def test_a_record_that_keeps_failing_is_dead_lettered_and_its_key_moves_on(
    infra: dict[str, str],
) -> None:
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    topic = await new_topic(bootstrap, 1)
    dead_letters = await new_topic(bootstrap, 1, "test.dlq")
    group = unique("g")
    bad = payload("bad")
    await produce(
        bootstrap,
        topic,
        [(b"same", payload("ok-1")), (b"same", bad), (b"same", payload("ok-2"))],
        headers=[("x-origin", b"test")],
    )
    handled: list[str] = []
    attempts = 0

    async def fails_on_bad(envelope: Envelope, record: Any) -> None:
        nonlocal attempts
        if text_of(envelope) == "bad":
            attempts += 1
            raise RuntimeError("the template engine choked")
        handled.append(text_of(envelope))

    loop = KafkaConsumerLoop(
        bootstrap,
        group,
        [topic],
        fails_on_bad,
        max_attempts=3,
        retry_backoff_s=0.01,
        dead_letter_topic=dead_letters,
    )
    async with running(loop):
        await eventually(lambda: handled == ["ok-1", "ok-2"], timeout=60)
        tp = TopicPartition(topic, 0)

        async def all_committed() -> bool:
            return (await committed(bootstrap, group)).get(tp) == 3

        await eventually(all_committed, timeout=30)
    assert attempts == 3
    assert loop.dead_lettered == 1
    [letter] = await read_all(bootstrap, dead_letters)
    assert (letter.key, letter.value) == (b"same", bad)
    headers = dict(letter.headers)
    assert headers["x-origin"] == b"test"
    assert headers[DLQ_TOPIC] == topic.encode()
    assert headers[DLQ_PARTITION] == b"0"
    assert headers[DLQ_OFFSET] == b"1"
    assert headers[DLQ_GROUP] == group.encode()
    assert headers[DLQ_REASON] == b"RuntimeError: the template engine choked"
    assert headers[DLQ_ATTEMPTS] == b"3"
