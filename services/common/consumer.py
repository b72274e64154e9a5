"""The Kafka consumer loop every service uses: concurrent per key, in order within a key,
committing only what is finished, dead-lettering what never will be.

How a record flows:

- One **fetch task** keeps calling ``getmany``, so aiokafka's ``max_poll_interval_ms`` is
  never exceeded however slow a handler is (a member that stops polling is thrown out of
  the group and its partitions are handed over mid-work). It dispatches each record to the
  **lane** of its key (the record key, across topics: one contact's records of two topics
  wait on each other too; the partition when there is no key). A lane runs one record at a
  time, in offset order; different lanes run in parallel on ``concurrency`` workers.
- At most ``max_in_flight`` records are fetched and not finished: at the bound the fetch
  task pauses every assigned partition (``consumer.pause``) and keeps polling, and resumes
  them once half the room is free again.
- Per partition the loop tracks the offsets not finished yet and commits the lowest of
  them (or one past the last record fetched, when none is left): a record finished above a
  slow one is redelivered after a crash, never one below it is lost. Commits happen every
  ``commit_interval_s``, when partitions are revoked (after waiting up to
  ``drain_timeout_s`` for their running handlers) and on stop.

What a failure does (:func:`failure_kind` decides):

- **permanent** (the record is not an envelope, SQLSTATE class 22 or 54, a handler's
  :class:`PermanentError`): the same record would fail the same way forever; it goes to the
  dead-letter topic at once.
- **dependency outage** (see :func:`is_dependency_outage`: the database, the broker, another
  service or Redis does not answer): the record is fine, the world is not. It is retried
  without limit, backing off up to ``max_backoff_s``, and while any record waits on an
  outage no new record is started and fetching is paused: consumption pauses, nothing is
  dead-lettered, and it resumes by itself once the dependency answers.
- **anything else**: retried with exponential backoff, ``max_attempts`` attempts in all;
  then dead-lettered, so that the partition moves on.

A dead-lettered record keeps its key, value and headers, plus ``nudge.dlq.*`` headers
(original topic, partition, offset, consumer group, reason, attempts), and is sent to
``dead_letter_topic`` (:data:`services.common.topics.DEAD_LETTER`). Its offset counts as
finished only once the broker acknowledged that send; a failing send is retried like an
outage. Delivery stays at-least-once, so every handler must be idempotent on ``event_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum

import asyncpg
import grpc
import redis.exceptions
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
)
from google.protobuf.message import DecodeError
from nudge.events.v1.envelope_pb2 import Envelope
from opentelemetry import context, trace

from services.common import metrics
from services.common.context import event_id_var, workspace_id_var
from services.common.errors import PermanentError, Unavailable
from services.common.topics import DEAD_LETTER
from services.common.tracing import (
    OFFSET,
    PARTITION,
    KafkaHeaders,
    envelope_ids,
    extract_headers,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

Handler = Callable[[Envelope, ConsumerRecord], Awaitable[None]]


class UndecodableRecord(PermanentError):
    """The record's value is not an :class:`Envelope`: no retry can change that."""


# Failures that the same record will always cause: not an envelope, invalid data for
# PostgreSQL (SQLSTATE class 22), values past its limits (class 54, e.g. an index row too
# large), or a handler's verdict.
PERMANENT = (asyncpg.DataError, asyncpg.ProgramLimitExceededError, PermanentError)

# The database is down, restarting, refusing connections or out of resources: class 08
# (connection exceptions), 53 (insufficient resources: too many connections, disk full),
# and the class 57 codes of a server shutting down or starting up. Not 57014 (a statement
# timeout), which a record can cause every time.
_DATABASE_OUTAGE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
_OUTAGES = (
    OSError,
    *_DATABASE_OUTAGE,
    KafkaConnectionError,
    KafkaTimeoutError,
    Unavailable,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
_GRPC_OUTAGE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

DLQ_TOPIC = "nudge.dlq.topic"
DLQ_PARTITION = "nudge.dlq.partition"
DLQ_OFFSET = "nudge.dlq.offset"
DLQ_GROUP = "nudge.dlq.group"
DLQ_REASON = "nudge.dlq.reason"
DLQ_ATTEMPTS = "nudge.dlq.attempts"
_REASON_LIMIT = 2000


class FailureKind(Enum):
    PERMANENT = "permanent"
    OUTAGE = "outage"
    TRANSIENT = "transient"


def is_dependency_outage(err: BaseException) -> bool:
    """A dependency does not answer, rather than this record being wrong.

    Counted as outages: any ``OSError`` (connection refused or reset, DNS, timeouts, an
    SMTP server that does not connect); PostgreSQL connection failures, shutdowns, start-ups
    and resource exhaustion (``_DATABASE_OUTAGE``); retriable Kafka errors, connection
    errors and timeouts; gRPC ``UNAVAILABLE`` and ``DEADLINE_EXCEEDED``; Redis connection
    errors and timeouts; and :class:`Unavailable`, our own word for all of these. An error
    raised ``from`` one of them counts too (a client wrapping its transport error), and so
    does asyncpg's complaint that a transaction cannot end on a connection that broke inside
    it (an ``InterfaceError`` raised *during* the handling of the outage: the server shut the
    connection, the network dropped it).
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, _OUTAGES):
            return True
        if isinstance(seen, asyncpg.InterfaceError) and seen.__context__ is not None:
            return is_dependency_outage(seen.__context__)
        if isinstance(seen, KafkaError) and seen.retriable:
            return True
        if isinstance(seen, grpc.aio.AioRpcError) and seen.code() in _GRPC_OUTAGE:
            return True
        seen = seen.__cause__
    return False


def failure_kind(err: BaseException) -> FailureKind:
    """Permanent wins over outage: a bad record stays bad whatever else went wrong."""
    if isinstance(err, PERMANENT):
        return FailureKind.PERMANENT
    if is_dependency_outage(err):
        return FailureKind.OUTAGE
    return FailureKind.TRANSIENT


def _span_attributes(topic: str, envelope: Envelope) -> dict[str, str]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.message.id": envelope.event_id,
        "nudge.workspace_id": envelope.workspace_id,
        "nudge.event_type": envelope.type,
    }


async def handle_record(record: ConsumerRecord, handler: Handler, consumer_name: str) -> None:
    """Decode one record, enter its trace context and workspace, and call the handler.

    A record that is not an envelope cannot become one by retrying: it raises
    :class:`UndecodableRecord` (a :class:`PermanentError`), which the loop dead-letters.
    """
    try:
        if record.value is None:
            raise DecodeError("a record without a value (tombstone)")
        envelope = Envelope.FromString(record.value)
    except DecodeError as err:
        raise UndecodableRecord(f"not an envelope: {err}") from err
    token = context.attach(extract_headers(record.headers))
    ws_token = workspace_id_var.set(envelope.workspace_id)
    ev_token = event_id_var.set(envelope.event_id)
    try:
        with tracer.start_as_current_span(
            f"{record.topic} process",
            kind=trace.SpanKind.CONSUMER,
            attributes={
                **_span_attributes(record.topic, envelope),
                **envelope_ids(envelope),
                PARTITION: record.partition,
                OFFSET: record.offset,
                "messaging.consumer.group.name": consumer_name,
            },
        ):
            await handler(envelope, record)
    finally:
        event_id_var.reset(ev_token)
        workspace_id_var.reset(ws_token)
        context.detach(token)


def dead_letter_headers(
    record: ConsumerRecord, group_id: str, reason: BaseException, attempts: int
) -> KafkaHeaders:
    """The record's own headers (its trace context among them), then where it came from
    and why it is here."""
    text = f"{type(reason).__name__}: {reason}"[:_REASON_LIMIT]
    own = [(k, v) for k, v in (record.headers or ()) if not k.startswith("nudge.dlq.")]
    return [
        *own,
        (DLQ_TOPIC, record.topic.encode()),
        (DLQ_PARTITION, str(record.partition).encode()),
        (DLQ_OFFSET, str(record.offset).encode()),
        (DLQ_GROUP, group_id.encode()),
        (DLQ_REASON, text.encode()),
        (DLQ_ATTEMPTS, str(attempts).encode()),
    ]


@dataclass(eq=False)
class PartitionProgress:
    """What one assigned partition has fetched and not finished. A new instance per
    assignment: handlers still running for a revoked partition update an orphan."""

    pending: set[int] = field(default_factory=set)
    next_offset: int | None = None  # one past the last record fetched
    committed: int | None = None
    running: int = 0
    revoked: asyncio.Event = field(default_factory=asyncio.Event)

    def fetched(self, offset: int) -> None:
        self.pending.add(offset)
        self.next_offset = offset + 1

    def finished(self, offset: int) -> None:
        self.pending.discard(offset)

    def committable(self) -> int | None:
        """The offset to commit: the lowest not finished, else one past the last fetched;
        ``None`` when there is nothing new to commit."""
        offset = min(self.pending) if self.pending else self.next_offset
        if offset is None or offset == self.committed:
            return None
        return offset


@dataclass(eq=False)
class _Lane:
    key: Hashable
    records: deque[tuple[ConsumerRecord, PartitionProgress]] = field(default_factory=deque)


@dataclass
class _DeadLetter:
    reason: BaseException
    attempts: int


class _Abandoned(Exception):
    """The record's partition was revoked or the loop is stopping: leave it to whoever
    fetches it next."""


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: KafkaConsumerLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._loop._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._loop.assignments += 1
        log.info("group %s assigned %s", self._loop.group_id, sorted(assigned))


class KafkaConsumerLoop:
    """Consumes ``topics`` in group ``group_id``, calling ``handler`` for each record: in
    parallel across keys, in order within one, committing only finished work. See the
    module docstring for the flow, the failure policy and the counters' meaning.

    Counters (for tests and metrics): ``handled``, ``dead_lettered``, ``retries`` (failed
    attempts retried with a limit), ``outage_retries`` (retried without one),
    ``assignments`` (partition assignments received, 1 without rebalances).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        topics: list[str],
        handler: Handler,
        *,
        max_records: int = 500,
        concurrency: int = 16,
        max_in_flight: int = 1000,
        max_attempts: int = 5,
        retry_backoff_s: float = 0.1,
        max_backoff_s: float = 10.0,
        commit_interval_s: float = 0.5,
        drain_timeout_s: float = 5.0,
        dead_letter_topic: str = DEAD_LETTER,
        max_poll_interval_ms: int = 300_000,
    ) -> None:
        if concurrency < 1 or max_in_flight < 1 or max_attempts < 1:
            raise ValueError("concurrency, max_in_flight and max_attempts must be positive")
        self.group_id = group_id
        self._topics = list(topics)
        self._handler = handler
        self._max_records = max_records
        self._concurrency = concurrency
        self._max_in_flight = max_in_flight
        self._max_attempts = max_attempts
        self._retry_backoff_s = retry_backoff_s
        self._max_backoff_s = max_backoff_s
        self._commit_interval_s = commit_interval_s
        self._drain_timeout_s = drain_timeout_s
        self._dead_letter_topic = dead_letter_topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=False,
            # New groups read from the start: Tansu's LATEST is wrong (DESIGN.md), and a new
            # service must see what was published before it first joined.
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            # Time for a revoke to wait out its running handlers before the group moves on.
            rebalance_timeout_ms=max(10_000, int(drain_timeout_s * 1000) + 5_000),
            max_poll_interval_ms=max_poll_interval_ms,
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=f"{group_id}-dead-letters",
            acks="all",
            linger_ms=0,
        )
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._lanes: dict[Hashable, _Lane] = {}
        self._ready: asyncio.Queue[_Lane] = asyncio.Queue()
        self._in_flight = 0  # fetched, not finished nor dropped
        self._running = 0  # inside a handler or its retries
        self._outages = 0  # records waiting on a dependency outage
        self._no_outage = asyncio.Event()
        self._no_outage.set()
        self._handler_ended = asyncio.Event()
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._started_run = False
        self._paused = False
        self._last_commit = 0.0
        self.handled = 0
        self.dead_lettered = 0
        self.retries = 0
        self.outage_retries = 0
        self.assignments = 0
        metrics.watch(self)

    def metric_samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """What Prometheus reads of this loop (services/common/metrics.py)."""
        group = {"group": self.group_id}
        for outcome, value in (
            ("handled", self.handled),
            ("dead_lettered", self.dead_lettered),
            ("retried", self.retries),
            ("outage_retried", self.outage_retries),
        ):
            yield "nudge_consumer_records", {**group, "outcome": outcome}, value
        yield "nudge_consumer_in_flight", group, self._in_flight
        yield "nudge_consumer_paused", group, float(self._paused)
        for tp, progress in list(self._progress.items()):
            highwater = self._consumer.highwater(tp)
            done = progress.committed if progress.committed is not None else progress.next_offset
            if highwater is None or done is None:
                continue
            labels = {**group, "topic": tp.topic, "partition": str(tp.partition)}
            yield "nudge_consumer_lag", labels, max(0, highwater - done)

    @property
    def paused(self) -> bool:
        """Fetching is paused: the in-flight bound is reached or a dependency is out."""
        return self._paused

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def start(self) -> None:
        await self._producer.start()
        try:
            await self._consumer.start()
            self._consumer.subscribe(self._topics, listener=_Rebalance(self))
        except BaseException:
            await self._producer.stop()
            raise

    async def stop(self) -> None:
        """Stop fetching, give running handlers ``drain_timeout_s``, commit what is
        finished, leave the group."""
        self._stopping.set()
        if self._started_run:
            await self._finished.wait()
        await self._commit(self._progress)
        await self._consumer.stop()
        await self._producer.stop()

    async def run(self) -> None:
        """Fetch and dispatch until :meth:`stop` (or cancellation)."""
        self._started_run = True
        workers = [
            asyncio.create_task(self._work(), name=f"{self.group_id}-worker-{i}")
            for i in range(self._concurrency)
        ]
        try:
            await self._fetch(workers)
            await self._wait_idle(self._drain_timeout_s, lambda: self._running == 0)
        finally:
            self._stopping.set()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            try:
                await self._commit(self._progress)
            finally:
                self._finished.set()

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch(self, workers: list[asyncio.Task[None]]) -> None:
        while not self._stopping.is_set():
            for worker in workers:
                if worker.done():
                    # A bug in this module, not a handler's failure: fail loudly.
                    worker.result()
                    raise RuntimeError("a consumer worker stopped")
            self._update_pause()
            room = self._max_in_flight - self._in_flight
            try:
                if self._paused or room <= 0:
                    # Still polling: aiokafka counts time outside getmany against the poll
                    # interval; paused partitions return nothing.
                    await self._consumer.getmany(timeout_ms=50, max_records=1)
                else:
                    batches = await self._consumer.getmany(
                        timeout_ms=200, max_records=min(self._max_records, room)
                    )
                    for tp, records in batches.items():
                        self._dispatch(tp, records)
            except KafkaError as err:
                # The broker is away or the group is in flux: an outage, not a reason to stop.
                log.warning("group %s could not fetch (%r); polling again", self.group_id, err)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
            if time.monotonic() - self._last_commit >= self._commit_interval_s:
                await self._commit(self._progress)

    def _update_pause(self) -> None:
        full = self._in_flight >= self._max_in_flight
        resume_at = self._max_in_flight // 2
        outage = not self._no_outage.is_set()
        if not self._paused and (full or outage):
            self._paused = True
            log.info(
                "group %s pauses fetching (%s)",
                self.group_id,
                "dependency outage" if outage else f"{self._in_flight} records in flight",
            )
        elif self._paused and not outage and self._in_flight <= resume_at:
            self._paused = False
            self._consumer.resume(*self._consumer.assignment())
            log.info("group %s resumes fetching", self.group_id)
        if self._paused:
            # Again on every round: partitions assigned meanwhile start unpaused.
            self._consumer.pause(*self._consumer.assignment())

    def _dispatch(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        progress = self._progress.get(tp)
        if progress is None:
            progress = self._progress[tp] = PartitionProgress()
        for record in records:
            progress.fetched(record.offset)
            key: Hashable = record.key if record.key is not None else (tp.topic, tp.partition)
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane(key)
                self._ready.put_nowait(lane)
            lane.records.append((record, progress))
            self._in_flight += 1

    # -- handling ---------------------------------------------------------------------------

    async def _work(self) -> None:
        """Take a ready lane, handle its first record, put it back if more are queued. A
        lane is in the ready queue or with one worker, never both: one key, one record at
        a time."""
        while True:
            lane = await self._ready.get()
            await self._no_outage.wait()
            if not lane.records or self._stopping.is_set():
                if not lane.records:
                    del self._lanes[lane.key]
                else:
                    self._ready.put_nowait(lane)
                if self._stopping.is_set():
                    return
                continue
            record, progress = lane.records.popleft()
            if not progress.revoked.is_set():
                progress.running += 1
                self._running += 1
                try:
                    if await self._settle(record, progress):
                        progress.finished(record.offset)
                finally:
                    progress.running -= 1
                    self._running -= 1
                    self._handler_ended.set()
            self._in_flight -= 1
            if lane.records:
                self._ready.put_nowait(lane)
            else:
                del self._lanes[lane.key]

    async def _settle(self, record: ConsumerRecord, progress: PartitionProgress) -> bool:
        """Handle the record, or dead-letter it; ``False`` when it was abandoned."""
        try:
            where = f"{record.topic}[{record.partition}]@{record.offset}"
            verdict = await self._retrying(
                progress, where, lambda: handle_record(record, self._handler, self.group_id)
            )
            if verdict is None:
                self.handled += 1
                return True
            reason = verdict.reason
            log.error(
                "dead-lettering %s[%d]@%d after %d attempt(s): %r",
                record.topic,
                record.partition,
                record.offset,
                verdict.attempts,
                reason,
            )
            headers = dead_letter_headers(record, self.group_id, reason, verdict.attempts)
            await self._retrying(
                progress,
                f"dead-lettering {where}",
                lambda: self._producer.send_and_wait(
                    self._dead_letter_topic, record.value, key=record.key, headers=headers
                ),
                limited=False,
            )
            self.dead_lettered += 1
            return True
        except _Abandoned:
            return False

    async def _retrying(
        self,
        progress: PartitionProgress,
        where: str,
        attempt: Callable[[], Awaitable[object]],
        *,
        limited: bool = True,
    ) -> _DeadLetter | None:
        """Call ``attempt`` until it succeeds (``None``) or, when ``limited``, until it
        fails permanently or ``max_attempts`` times (the verdict to dead-letter). Outages
        never count against the limit and close the gate for other records meanwhile."""
        failures = 0
        delay = self._retry_backoff_s
        in_outage = False
        try:
            while True:
                if progress.revoked.is_set() or self._stopping.is_set():
                    raise _Abandoned
                try:
                    await attempt()
                    return None
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    kind = failure_kind(err)
                    if kind is FailureKind.OUTAGE or not limited:
                        if not in_outage:
                            in_outage = True
                            self._outages += 1
                            self._no_outage.clear()
                        self.outage_retries += 1
                        log.warning(
                            "%s: dependency outage (%r); retrying in %.1fs", where, err, delay
                        )
                    else:
                        failures += 1
                        if kind is FailureKind.PERMANENT or failures >= self._max_attempts:
                            return _DeadLetter(err, failures)
                        self.retries += 1
                        log.warning(
                            "%s: attempt %d failed (%r); retrying in %.1fs",
                            where,
                            failures,
                            err,
                            delay,
                        )
                await self._backoff(delay, progress)
                delay = min(delay * 2, self._max_backoff_s)
        finally:
            if in_outage:
                self._outages -= 1
                if self._outages == 0:
                    self._no_outage.set()

    async def _backoff(self, delay: float, progress: PartitionProgress) -> None:
        """Sleep ``delay``, cut short by a revoke or a stop."""
        waits = [
            asyncio.ensure_future(progress.revoked.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    # -- rebalances and commits -------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Stop the revoked partitions' queued records, give their running handlers up to
        ``drain_timeout_s``, commit what is finished. The next owner starts there."""
        leaving = {tp: self._progress.pop(tp) for tp in revoked if tp in self._progress}
        if not leaving:
            return
        for progress in leaving.values():
            progress.revoked.set()
        for lane in self._lanes.values():
            kept = deque(item for item in lane.records if not item[1].revoked.is_set())
            self._in_flight -= len(lane.records) - len(kept)
            lane.records = kept
        await self._wait_idle(
            self._drain_timeout_s, lambda: all(p.running == 0 for p in leaving.values())
        )
        await self._commit(leaving)

    async def _wait_idle(self, timeout: float, idle: Callable[[], bool]) -> None:
        """Until ``idle()`` holds (checked whenever a handler ends) or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        while not idle():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._handler_ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._handler_ended.wait(), remaining)

    async def _commit(self, progress: dict[TopicPartition, PartitionProgress]) -> None:
        self._last_commit = time.monotonic()
        assigned = self._consumer.assignment()
        # Chosen before the await: a revoke may take partitions out of ``progress`` meanwhile.
        chosen = {
            tp: (p, offset)
            for tp, p in progress.items()
            if tp in assigned and (offset := p.committable()) is not None
        }
        if not chosen:
            return
        offsets = {tp: offset for tp, (_, offset) in chosen.items()}
        try:
            # Bounded: with the broker away, aiokafka waits for a coordinator indefinitely,
            # and this task must get back to polling.
            await asyncio.wait_for(self._consumer.commit(offsets), timeout=10)
        except (CommitFailedError, IllegalStateError, KafkaError, TimeoutError) as err:
            # A rebalance or a broker away: the next owner (or this one, later) gets the
            # unfinished records again, and the handlers are idempotent.
            log.warning("offsets %s not committed (%r); records will be redelivered", offsets, err)
            return
        for p, offset in chosen.values():
            p.committed = offset
        log.debug("group %s committed %s", self.group_id, offsets)


__all__ = [
    "DLQ_ATTEMPTS",
    "DLQ_GROUP",
    "DLQ_OFFSET",
    "DLQ_PARTITION",
    "DLQ_REASON",
    "DLQ_TOPIC",
    "PERMANENT",
    "FailureKind",
    "Handler",
    "KafkaConsumerLoop",
    "PartitionProgress",
    "UndecodableRecord",
    "dead_letter_headers",
    "failure_kind",
    "handle_record",
    "is_dependency_outage",
]
