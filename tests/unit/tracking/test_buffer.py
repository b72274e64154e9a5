"""The buffer between the request path and Kafka: bounded, the oldest hits dropped first and
counted, and offering never blocks nor raises (no producer connected here at all)."""

from __future__ import annotations

import uuid

from nudge.tracking.v1 import events_pb2

from services.common.events import new_envelope
from services.common.topics import TRACKING_EVENTS
from services.tracking.adapters.kafka import KafkaTrackingPublisher, Pending


def pending() -> Pending:
    opened = events_pb2.MessageOpened(message_id="m", contact_id="c")
    return Pending(TRACKING_EVENTS, "c", new_envelope(str(uuid.uuid4()), opened), [])


async def test_a_full_buffer_drops_the_oldest_and_counts_them() -> None:
    publisher = KafkaTrackingPublisher("127.0.0.1:1", "external", health_timeout_s=1, capacity=100)
    offered = [pending() for _ in range(150)]
    for item in offered:
        publisher.offer(item)  # never started: nothing drains, nothing blocks
    assert publisher.queued == 100
    assert publisher.stats.as_dict() == {
        "accepted": 150,
        "published": 0,
        "dropped": 50,
        "failed": 0,
    }
    kept = [item.envelope.event_id for item in publisher._buffer]
    assert kept == [item.envelope.event_id for item in offered[50:]]  # the newest 100
