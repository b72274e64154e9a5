"""The "every link clicked at once" rule against the real Redis, with the click times given
(no waiting): what a scanner does is flagged, all of it; what a reader does is not."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from nudge.tracking.v1 import events_pb2
from redis.asyncio import Redis

from services.common.events import new_envelope
from services.common.topics import TRACKING_EVENTS
from services.tracking.adapters.bursts import BurstDetector, burst_key
from services.tracking.adapters.kafka import Pending

T0 = 1_790_000_000.0


@pytest.fixture
async def redis(infra: dict[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(infra["REDIS_URL"])
    yield client
    await client.aclose()


def click(message_id: str, index: int, at: float) -> Pending:
    clicked = events_pb2.LinkClicked(message_id=message_id, contact_id="c", link_index=index)
    envelope = new_envelope("ws", clicked)
    return Pending(
        TRACKING_EVENTS, "c", envelope, [], (burst_key("ws", message_id), str(index)), at
    )


async def test_a_readers_clicks_are_not_a_burst_and_a_scanners_all_are(redis: Redis) -> None:
    detector = BurstDetector(redis, links=3, window_s=3.0, timeout_s=5)
    reader, scanner = str(uuid.uuid4()), str(uuid.uuid4())
    hits = [
        # A reader: two links within a second, a third ten seconds later, the first again.
        click(reader, 0, T0),
        click(reader, 1, T0 + 0.8),
        click(reader, 2, T0 + 10),
        click(reader, 0, T0 + 11),
        # A scanner: every link of the mail within half a second.
        *(click(scanner, n, T0 + 20 + n / 10) for n in range(5)),
    ]
    # As the drain sees them: recorded on arrival (two batches), classified when due.
    await detector.record(hits[:4])
    await detector.record(hits[4:])
    await detector.classify(hits)
    flags = [
        (h.envelope.link_clicked.machine_click, h.envelope.link_clicked.machine_reason)
        for h in hits
    ]
    assert flags[:4] == [(False, "")] * 4
    assert flags[4:] == [(True, "link_burst")] * 5  # the first clicks of the burst too
