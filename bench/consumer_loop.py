"""How much the consumer loop costs against a bare aiokafka consumer, in the same run.

    .venv/bin/python bench/consumer_loop.py [--scale N] [--concurrency C]

Starts Kafka alone (the local stack on a free port, or ``KAFKA_BOOTSTRAP_SERVERS``), produces
N envelopes (1,000 keys over 4 partitions, each with a trace header, as the outbox relay
sends them) with ``create_batch``, then measures, in this order:
1. bare: one ``AIOKafkaConsumer`` without a group calling ``getmany`` (median of 3 reads);
2. the loop with a no-op handler: its cost per record (decoding, trace context, lanes,
   commits);
3. ``handle_record`` alone in a tight loop (decoding, trace context, workspace): the floor
   ceiling of any loop around it;
4. the loop with a handler that awaits 5 ms, as a handler waiting on a database would:
   what the per-key concurrency buys (one record at a time would be 200 records/s).
Rates run from the first record handled to the last, so joining the group is not counted.
The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _system import local_infra  # type: ignore[import-not-found]  # noqa: E402
from aiokafka import (  # noqa: E402
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRecord,
    TopicPartition,
)
from nudge.events.v1.envelope_pb2 import Envelope  # noqa: E402
from nudge.shop.v1 import shop_pb2  # noqa: E402

from deploy.local.topics import ensure_topics  # noqa: E402
from services.common.events import new_envelope  # noqa: E402
from services.common.kafka import KafkaConsumerLoop, handle_record  # noqa: E402
from services.common.topics import DEAD_LETTER  # noqa: E402

PARTITIONS = 4
KEYS = 1000
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def produce(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        value = new_envelope(
            "ws-bench",
            shop_pb2.ShopEvent(contact_id="c", searched=shop_pb2.Searched(query="shoes")),
        ).SerializeToString()
        batches = {p: producer.create_batch() for p in range(PARTITIONS)}
        sent = []
        for n in range(count):
            key = n % KEYS
            partition = key % PARTITIONS
            args: dict[str, Any] = {
                "key": f"c{key}".encode(),
                "value": value,
                "timestamp": None,
                "headers": [("traceparent", TRACEPARENT)],
            }
            batch = batches[partition]
            if batch.append(**args) is None:  # full: send it, start the next
                sent.append(await producer.send_batch(batch, topic, partition=partition))
                batches[partition] = producer.create_batch()
                batches[partition].append(**args)
        for partition, batch in batches.items():
            if batch.record_count():
                sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def bare(bootstrap: str, topic: str, count: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        first_batch = 0
        first = 0.0
        while seen < count:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            got = sum(len(records) for records in batches.values())
            if got and not first:
                # The rate runs from the first batch on, as the loop's from its first record.
                first, first_batch = time.perf_counter(), got
            seen += got
        return (count - first_batch) / (time.perf_counter() - first)
    finally:
        await consumer.stop()


async def through_loop(
    bootstrap: str, topic: str, count: int, handler_s: float, concurrency: int
) -> float:
    first = 0.0
    last = 0.0
    done = asyncio.Event()
    handled = 0

    async def handler(envelope: Envelope, record: object) -> None:
        nonlocal first, last, handled
        if handler_s:
            await asyncio.sleep(handler_s)
        handled += 1
        now = time.perf_counter()
        if handled == 1:
            first = now
        if handled == count:
            last = now
            done.set()

    loop = KafkaConsumerLoop(
        bootstrap, f"bench-{uuid.uuid4().hex[:8]}", [topic], handler, concurrency=concurrency
    )
    await loop.start()
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.wait_for(done.wait(), timeout=max(120.0, count * handler_s))
    finally:
        await loop.stop()
        await task
    return (count - 1) / (last - first)


async def handle_record_alone(count: int) -> float:
    """``handle_record`` in a tight loop, no Kafka: decoding and entering the trace context
    and workspace, which every record costs whatever the loop does around it."""
    value = new_envelope(
        "ws-bench", shop_pb2.ShopEvent(contact_id="c", searched=shop_pb2.Searched(query="shoes"))
    ).SerializeToString()
    record = ConsumerRecord(
        topic="t",
        partition=0,
        offset=0,
        timestamp=0,
        timestamp_type=0,
        key=b"c1",
        value=value,
        checksum=None,
        serialized_key_size=2,
        serialized_value_size=len(value),
        headers=(("traceparent", TRACEPARENT),),
    )

    async def noop(envelope: Envelope, record: object) -> None:
        return None

    started = time.perf_counter()
    for _ in range(count):
        await handle_record(record, noop, "bench")
    return count / (time.perf_counter() - started)


async def measure(bootstrap: str, kind: str, scale: int, concurrency: int) -> dict[str, object]:
    topic = f"bench.consumer.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, {topic: PARTITIONS, DEAD_LETTER: PARTITIONS})
    started = time.perf_counter()
    await produce(bootstrap, topic, scale)
    produce_s = time.perf_counter() - started
    bare_rates = [await bare(bootstrap, topic, scale) for _ in range(3)]
    bare_rate = statistics.median(bare_rates)
    alone = await handle_record_alone(scale)
    noop = await through_loop(bootstrap, topic, scale, 0.0, concurrency)
    slow = await through_loop(bootstrap, topic, scale, 0.005, concurrency)
    ideal_5ms = concurrency / 0.005
    return {
        "kafka_kind": kind,
        "records": scale,
        "keys": KEYS,
        "partitions": PARTITIONS,
        "concurrency": concurrency,
        "produce_msgs_per_s": round(scale / produce_s),
        "bare_msgs_per_s": round(bare_rate),
        "bare_runs_msgs_per_s": [round(r) for r in bare_rates],
        "handle_record_alone_msgs_per_s": round(alone),
        "loop_noop_msgs_per_s": round(noop),
        "loop_5ms_msgs_per_s": round(slow),
        "loop_noop_to_bare_ratio": round(noop / bare_rate, 4),
        "loop_noop_to_handle_record_alone_ratio": round(noop / alone, 3),
        "loop_5ms_to_bare_ratio": round(slow / bare_rate, 4),
        "loop_5ms_to_ideal_ratio": round(slow / ideal_5ms, 3),
        "loop_5ms_to_sequential_ratio": round(slow / 200, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=20000, help="records to produce")
    parser.add_argument("--concurrency", type=int, default=16, help="the loop's handlers")
    args = parser.parse_args()
    with local_infra(("kafka",)) as (env, _):
        figures = asyncio.run(
            measure(
                env["KAFKA_BOOTSTRAP_SERVERS"],
                env.get("NUDGE_KAFKA_KIND", "?"),
                args.scale,
                args.concurrency,
            )
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
