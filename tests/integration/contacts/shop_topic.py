"""Reading shop.events.v1 in ingestion tests: which events reached the topic, and how often.

Events of one contact share a partition (the key is the contact id) and the outbox relays
rows in commit order, so once a marker event tracked after the others has arrived, every
event of that contact accepted before it has arrived too: tests wait on the marker, not on
a clock.
"""

from __future__ import annotations

import asyncio
import collections

import asyncpg
from aiokafka import AIOKafkaConsumer
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.topics import SHOP_EVENTS
from tests.support import unique


async def event_ids_until_marker(
    bootstrap: str, contact_id: str, marker_event_id: str, timeout: float = 60
) -> collections.Counter[str]:
    """How many times each event of ``contact_id`` is on the topic, read from the start
    until the marker event (which is counted too) has been seen."""
    consumer = AIOKafkaConsumer(
        SHOP_EVENTS,
        bootstrap_servers=bootstrap,
        group_id=unique("test-ingest-reader"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: collections.Counter[str] = collections.Counter()
    try:
        async with asyncio.timeout(timeout):
            while marker_event_id not in seen:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        if record.key == contact_id.encode():
                            seen[Envelope.FromString(record.value).event_id] += 1
    finally:
        await consumer.stop()
    return seen


async def claimed_keys(database_url: str, workspace_id: str) -> set[str]:
    """The idempotency keys contacts holds for the workspace (an accepted event each)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT idempotency_key FROM contacts.ingested_events WHERE workspace_id = $1",
            workspace_id,
        )
    finally:
        await conn.close()
    return {r["idempotency_key"] for r in rows}
