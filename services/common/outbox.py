"""The transactional outbox: a state change and its event commit together.

``add_to_outbox`` writes the event into the service's ``outbox`` table inside the caller's
transaction; a statement trigger NOTIFYs the relay once per transaction, delivered at commit
(common migration 0002). :class:`OutboxRelay` publishes the rows to Kafka and deletes them
once acked. The relay is at-least-once: a crash between the ack and the delete republishes,
and consumers are idempotent on ``event_id``.

Order: the rows of one partition (so of one key) reach Kafka in id order, first copies
included: the relay sends one atomic record batch per partition at a time and stops that
partition at the first batch that fails, so nothing after a failed row is ever published
before it. A row the broker refuses for good goes to ``outbox_dead_letters`` with the error
instead of blocking its partition.

No database transaction stays open while the relay waits for Kafka: one relay per schema
holds a session-level advisory lock on a dedicated connection (which also LISTENs), reads
and deletes rows in short statements, and gives up a round of publishing after
``publish_timeout_s`` (the rows stay and go out in a later round).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence

import asyncpg
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import fastjson, metrics
from services.common.kafka import PRODUCER_BROKEN, RECORD_REFUSED, KafkaPublisher, OutRecord
from services.common.tracing import current_traceparent

log = logging.getLogger(__name__)

# Rows read per round. A round costs a SELECT, a DELETE and one awaited record batch per
# partition whatever its size, so bigger rounds drain a backlog (a bulk import's million
# events) several times faster; 5,000 rows of ~300 bytes are ~1.5 MB in memory.
BATCH = 5000
# How often the relay holding the lock measures the backlog for the metrics.
MEASURE_S = 5.0


def _channel(schema: str) -> str:
    return f"{schema}_outbox"


async def add_to_outbox(
    conn: asyncpg.Connection, schema: str, topic: str, key: str, envelope: Envelope
) -> None:
    """Queue ``envelope`` for ``topic``; must run inside the transaction of the state change.
    One statement: the table's trigger notifies the relay (``schema`` names the channel)."""
    await conn.execute(
        "INSERT INTO outbox (topic, key, value, headers) VALUES ($1, $2, $3, $4::jsonb)",
        topic,
        key.encode(),
        envelope.SerializeToString(),
        fastjson.dumps(current_traceparent()),
    )


class _Refused(Exception):
    """The broker refused a batch for good; the round stops and the producer is replaced."""


class _Row:
    __slots__ = ("id", "record", "topic")

    def __init__(self, row: asyncpg.Record) -> None:
        self.id: int = row["id"]
        self.topic: str = row["topic"]
        headers = [(k, v.encode()) for k, v in fastjson.loads(row["headers"]).items()]
        self.record = OutRecord(key=row["key"], value=row["value"], headers=headers)


async def add_many_to_outbox(
    conn: asyncpg.Connection,
    schema: str,
    topic: str,
    events: Sequence[tuple[str, Envelope, dict[str, str]]],
) -> None:
    """Queue many ``(key, envelope, trace headers)`` for ``topic`` in one statement and one
    NOTIFY, in the order given; must run inside the transaction of the state change (the
    statement trigger of migration 0002 notifies the relay once at commit). For
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
        [fastjson.dumps(headers) for _, _, headers in events],
    )


class OutboxRelay:
    """Moves outbox rows to Kafka. One relay drains a schema at a time (a session advisory
    lock), the others wait for it to go away; see the module docstring for the guarantees.

    Counters for tests and metrics: ``published`` (rows acked by Kafka), ``dead_lettered``,
    ``failed_rounds`` (rounds that stopped on a broker or database failure), ``connects``
    (listening connections opened), ``waiting`` (idle, listening, waiting for a wake-up).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        publisher: KafkaPublisher,
        *,
        poll_s: float = 1.0,
        publish_timeout_s: float = 30.0,
        batch: int = BATCH,
    ) -> None:
        self._pool = pool
        self._schema = schema
        self._publisher = publisher
        self._poll_s = poll_s
        self._publish_timeout_s = publish_timeout_s
        self._batch = batch
        self._wake = asyncio.Event()
        self._lock_key = zlib.crc32(f"outbox:{schema}".encode())
        self.published = 0
        self.dead_lettered = 0
        self.failed_rounds = 0
        self.connects = 0
        self.waiting = False
        self._singly: set[int] = set()  # rows of a refused batch: sent one per batch
        self._in_flight: dict[tuple[str, int], asyncio.Future[object]] = {}
        # What waits, as the relay holding the lock last measured it (None: not measured).
        self.backlog: int | None = None
        self.oldest_age_s: float | None = None
        self._measured_at = 0.0
        metrics.watch(self)

    def metric_samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """What Prometheus reads of this relay (services/common/metrics.py)."""
        labels = {"schema": self._schema}
        yield "nudge_outbox_published", labels, self.published
        yield "nudge_outbox_dead_lettered", labels, self.dead_lettered
        if self.backlog is not None and self.oldest_age_s is not None:
            yield "nudge_outbox_backlog", labels, self.backlog
            yield "nudge_outbox_oldest_age_seconds", labels, self.oldest_age_s

    async def _measure(self, conn: asyncpg.Connection) -> None:
        """The backlog and its oldest row's age, at most every MEASURE_S. Both from the
        primary key's ends (no count of a large table): ids are taken in commit order
        roughly, so max - min + 1 is the backlog give or take rows still in transactions."""
        if time.monotonic() - self._measured_at < MEASURE_S:
            return
        self._measured_at = time.monotonic()
        row = await conn.fetchrow(
            "SELECT max(id) - min(id) + 1 AS backlog, extract(epoch FROM clock_timestamp() -"
            " (SELECT created_at FROM outbox ORDER BY id LIMIT 1))::float8 AS age FROM outbox"
        )
        self.backlog = int(row["backlog"] or 0)
        self.oldest_age_s = max(0.0, float(row["age"] or 0.0))

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self._run_connected()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database went away: the listening connection (and with it the lock)
                # is gone. Open a new one, listen again and take the lock again.
                failures += 1
                log.exception("outbox relay of %s lost its connection; reconnecting", self._schema)
                await asyncio.sleep(min(0.1 * 2**failures, 5.0))
            else:
                failures = 0

    async def _run_connected(self) -> None:
        conn: asyncpg.Connection = await self._pool.acquire()
        lost = asyncio.Event()

        def on_lost(_: object) -> None:
            lost.set()
            self._wake.set()

        locked = False
        try:
            conn.add_termination_listener(on_lost)
            await conn.add_listener(_channel(self._schema), self._on_notify)
            self.connects += 1
            log.info("outbox relay of %s listening", self._schema)
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key):
                await self._idle(self._poll_s)  # another relay drains this schema
                if lost.is_set():
                    return
            locked = True
            failures = 0
            while not lost.is_set():
                # Drain first: rows committed while nobody listened got no wake-up.
                try:
                    await self._measure(conn)
                    while await self._drain():
                        await self._measure(conn)
                    await self._measure(conn)
                    failures = 0
                    await self._idle(min(self._poll_s, MEASURE_S))
                except Exception:
                    if lost.is_set() or conn.is_closed():
                        raise
                    # Broker or database away: the rows stay in the outbox and go out once
                    # both answer again.
                    failures += 1
                    self.failed_rounds += 1
                    log.exception("outbox relay of %s failed; retrying", self._schema)
                    # Back off whatever the notifications say; only a lost connection ends
                    # the pause early.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), min(0.1 * 2**failures, 10.0))
            raise ConnectionError("the outbox relay's connection was lost")
        finally:
            with contextlib.suppress(Exception):
                conn.remove_termination_listener(on_lost)
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await conn.remove_listener(_channel(self._schema), self._on_notify)
                if locked:
                    with contextlib.suppress(Exception):
                        await conn.execute("SELECT pg_advisory_unlock($1)", self._lock_key)
            await self._pool.release(conn)

    async def _idle(self, timeout: float) -> None:
        self.waiting = True
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            self.waiting = False
            self._wake.clear()

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _drain(self) -> bool:
        """One round: publish up to one batch of rows; True when another round should follow
        at once (a full batch was read, or the producer was replaced after a refusal)."""
        rows = [
            _Row(r)
            for r in await self._pool.fetch(
                "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT $1",
                self._batch,
            )
        ]
        if not rows:
            return False
        chains: dict[tuple[str, int], list[_Row]] = defaultdict(list)
        for row in rows:
            reason = self._publisher.too_large(row.record)
            if reason is not None:
                await self._dead_letter(row, reason)
                continue
            partition = await self._publisher.partition_for(row.topic, row.record.key)
            chains[(row.topic, partition)].append(row)
        acked: list[int] = []
        failures: list[BaseException] = []
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                results = await asyncio.gather(
                    *(self._send_chain(t, p, chain, acked) for (t, p), chain in chains.items()),
                    return_exceptions=True,
                )
            failures = [r for r in results if isinstance(r, BaseException)]
        except TimeoutError as err:
            failures = [err]
        finally:
            # Whatever happened, what Kafka acked leaves the outbox (shielded: a cancelled
            # relay should not republish what it knows is out).
            if acked:
                await asyncio.shield(
                    self._pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", acked)
                )
                self.published += len(acked)
        if any(isinstance(f, (_Refused, *PRODUCER_BROKEN)) for f in failures):
            await self._publisher.restart()
        real = [f for f in failures if not isinstance(f, _Refused)]
        if real:
            raise real[0]
        return len(rows) == self._batch or bool(failures)

    async def _send_chain(
        self, topic: str, partition: int, rows: list[_Row], acked: list[int]
    ) -> None:
        """Send the rows of one partition in order, one batch at a time; stop at the first
        failure, so that no row goes out ahead of one before it."""
        i = 0
        while i < len(rows):
            i += await self._send_batch(topic, partition, rows[i:], acked)

    async def _send_batch(
        self, topic: str, partition: int, rows: Sequence[_Row], acked: list[int]
    ) -> int:
        """Send one batch of the first ``rows``; returns how many rows Kafka acked. Raises
        when the broker did not take it (the rows stay in the outbox)."""
        if rows[0].id in self._singly:
            rows = rows[:1]
        # A batch of an earlier round that timed out may still be queued in the producer:
        # let it settle first, so that an outage does not pile up copies of the same rows.
        earlier = self._in_flight.get((topic, partition))
        if earlier is not None and not earlier.done():
            await asyncio.wait([earlier])
        count, future = await self._publisher.send_atomic_batch(
            topic, partition, [r.record for r in rows]
        )
        self._in_flight[(topic, partition)] = future
        try:
            await asyncio.shield(future)  # a timeout must not cancel the producer's future
        except RECORD_REFUSED as err:
            # A batch the broker refused leaves a gap in the producer's sequence numbers of
            # this partition: the chain stops here and the producer is replaced. A refused
            # single row is dead-lettered; the rows of a refused batch go one per batch in
            # the next round, which finds the culprit.
            if count == 1:
                await self._dead_letter(rows[0], repr(err))
                self._singly.discard(rows[0].id)
            else:
                self._singly.update(r.id for r in rows[:count])
            raise _Refused from err
        acked.extend(r.id for r in rows[:count])
        self._singly.difference_update(r.id for r in rows[:count])
        return count

    async def _dead_letter(self, row: _Row, error: str) -> None:
        await self._pool.execute(
            "WITH gone AS (DELETE FROM outbox WHERE id = $1 RETURNING *)"
            " INSERT INTO outbox_dead_letters (id, topic, key, value, headers, created_at, error)"
            " SELECT id, topic, key, value, headers, created_at, $2 FROM gone",
            row.id,
            error,
        )
        self.dead_lettered += 1
        log.error(
            "outbox row %s of %s for %s dead-lettered, the broker refuses it for good: %s",
            row.id,
            self._schema,
            row.topic,
            error,
        )
