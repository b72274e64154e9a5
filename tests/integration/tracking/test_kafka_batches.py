"""The drain publishes opens and clicks as record batches it builds itself (one per partition,
several when one is full), against the real Kafka: every hit arrives once, on the partition
its contact's key names (as a ``send`` would have chosen), in the order offered, with its
trace headers."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.tracking.v1 import events_pb2

from services.common.events import new_envelope
from services.common.topics import TRACKING_EVENTS
from services.tracking.adapters.kafka import KafkaTrackingPublisher, Pending
from tests.support import eventually, unique

HITS = 1500
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_batches_carry_every_hit_once_on_its_keys_partition_in_order(
    infra: dict[str, str],
) -> None:
    servers = infra["KAFKA_BOOTSTRAP_SERVERS"]
    run = str(uuid.uuid4())  # the message id of this test's events
    contacts = [str(uuid.uuid4()) for _ in range(7)]
    # 4 KiB batches: ~20 records each, so a drain round of 1,000 spans many per partition.
    publisher = KafkaTrackingPublisher(
        servers, infra["NUDGE_KAFKA_KIND"], health_timeout_s=5, max_batch_bytes=4096
    )
    await publisher.start()
    try:
        for n in range(HITS):
            opened = events_pb2.MessageOpened(
                message_id=run, contact_id=contacts[n % 7], user_agent=str(n)
            )
            headers = [("traceparent", TRACEPARENT)] if n % 10 == 0 else []
            envelope = new_envelope(str(uuid.uuid4()), opened)
            publisher.offer(Pending(TRACKING_EVENTS, contacts[n % 7], envelope, headers))
        await eventually(lambda: publisher.stats.published == HITS, timeout=60)
        assert publisher.stats.failed == 0
    finally:
        await publisher.stop()

    reader = AIOKafkaConsumer(
        TRACKING_EVENTS,
        bootstrap_servers=servers,
        group_id=unique("tracking-batches"),
        auto_offset_reset="earliest",
    )
    await reader.start()
    seen: list[tuple[int, str, int, bool]] = []  # (partition, contact, n, traced)
    try:

        async def all_read() -> bool:
            for records in (await reader.getmany(timeout_ms=500)).values():
                for record in records:
                    opened = Envelope.FromString(record.value).message_opened
                    if opened.message_id != run:
                        continue
                    assert record.key is not None
                    traced = ("traceparent", TRACEPARENT) in list(record.headers)
                    seen.append(
                        (record.partition, record.key.decode(), int(opened.user_agent), traced)
                    )
            return len(seen) >= HITS

        await eventually(all_read, timeout=60)
        partitions = sorted(reader.partitions_for_topic(TRACKING_EVENTS) or [])
    finally:
        await reader.stop()

    assert len(seen) == HITS
    assert sorted(n for _, _, n, _ in seen) == list(range(HITS))  # each once
    partitioner = DefaultPartitioner()
    for contact in contacts:
        mine = [(p, n) for p, c, n, _ in seen if c == contact]
        assert {p for p, _ in mine} == {partitioner(contact.encode(), partitions, partitions)}
        assert [n for _, n in mine] == sorted(n for _, n in mine)  # in the order offered
    assert all(traced == (n % 10 == 0) for _, _, n, traced in seen)
    assert len({p for p, _, _, _ in seen}) > 1  # the test spans partitions
