"""The transactional outbox: a state change and its event commit together.

``add_to_outbox`` writes the event into the service's ``outbox`` table inside the caller's
transaction (and NOTIFYs, delivered at commit); :class:`OutboxRelay` publishes the rows to
Kafka in id order and deletes them once acked. The relay is at-least-once: a crash between
the ack and the delete republishes, and consumers are idempotent on ``event_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import zlib
from collections.abc import Sequence

import asyncpg
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.kafka import KafkaPublisher
from services.common.tracing import current_traceparent

log = logging.getLogger(__name__)

BATCH = 500


def _channel(schema: str) -> str:
    return f"{schema}_outbox"


async def add_to_outbox(
    conn: asyncpg.Connection, schema: str, topic: str, key: str, envelope: Envelope
) -> None:
    """Queue ``envelope`` for ``topic``; must run inside the transaction of the state change."""
    await conn.execute(
        "INSERT INTO outbox (topic, key, value, headers) VALUES ($1, $2, $3, $4::jsonb)",
        topic,
        key.encode(),
        envelope.SerializeToString(),
        json.dumps(current_traceparent()),
    )
    await conn.execute("SELECT pg_notify($1, '')", _channel(schema))


async def add_many_to_outbox(
    conn: asyncpg.Connection,
    schema: str,
    topic: str,
    events: Sequence[tuple[str, Envelope, dict[str, str]]],
) -> None:
    """Queue many ``(key, envelope, trace headers)`` for ``topic`` in one statement and one
    NOTIFY, in the order given; must run inside the transaction of the state change. For
    ingestion, where a round trip per event would cost more than the event itself."""
    if not events:
        return
    await conn.execute(
        "INSERT INTO outbox (topic, key, value, headers)"
        " SELECT $1, k, v, h::jsonb FROM unnest($2::bytea[], $3::bytea[], $4::text[])"
        " WITH ORDINALITY AS r(k, v, h, n) ORDER BY n",
        topic,
        [key.encode() for key, _, _ in events],
        [envelope.SerializeToString() for _, envelope, _ in events],
        [json.dumps(headers) for _, _, headers in events],
    )
    await conn.execute("SELECT pg_notify($1, '')", _channel(schema))


class OutboxRelay:
    """Moves outbox rows to Kafka. One relay drains a schema at a time (advisory lock), so
    rows leave in commit order even with several replicas running."""

    def __init__(
        self, pool: asyncpg.Pool, schema: str, publisher: KafkaPublisher, *, poll_s: float = 1.0
    ) -> None:
        self._pool = pool
        self._schema = schema
        self._publisher = publisher
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._lock_key = zlib.crc32(f"outbox:{schema}".encode())
        self.published = 0

    async def run(self) -> None:
        listener: asyncpg.Connection = await self._pool.acquire()
        try:
            await listener.add_listener(_channel(self._schema), self._on_notify)
            failures = 0
            while True:
                try:
                    while await self.drain_once() == BATCH:
                        pass
                    failures = 0
                except Exception:
                    # Broker or database away: the rows stay in the outbox (the transaction
                    # rolled back) and go out once both answer again.
                    failures += 1
                    log.exception("outbox relay of %s failed; retrying", self._schema)
                    await asyncio.sleep(min(0.1 * 2**failures, 10.0))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_s)
                self._wake.clear()
        finally:
            with contextlib.suppress(Exception):
                await listener.remove_listener(_channel(self._schema), self._on_notify)
            await self._pool.release(listener)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def drain_once(self) -> int:
        """Publish up to one batch; returns how many rows were published."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_key):
                return 0
            rows = await conn.fetch(
                "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT $1", BATCH
            )
            if not rows:
                return 0
            await self._publisher.send_batch(
                (
                    r["topic"],
                    r["key"],
                    r["value"],
                    [(k, v.encode()) for k, v in json.loads(r["headers"]).items()],
                )
                for r in rows
            )
            await conn.execute(
                "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
        self.published += len(rows)
        return len(rows)
