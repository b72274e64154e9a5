"""Kafka producer and consumer helpers that carry the trace context in record headers.

Values are :class:`Envelope` protobufs; keys are the id whose order matters (contact id).
Producers await each send with ``linger_ms=0``: an awaited send with a linger waits out the
linger every time (DESIGN.md, measured). Consumers commit after handling, so delivery is
at-least-once and every handler must be idempotent on ``event_id``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import (
    CommitFailedError,
    CorruptRecordException,
    IllegalStateError,
    InvalidProducerEpoch,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
    UnknownProducerId,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from google.protobuf.message import DecodeError
from nudge.events.v1.envelope_pb2 import Envelope
from opentelemetry import context, trace

from services.common.context import event_id_var, workspace_id_var
from services.common.errors import PermanentError
from services.common.tracing import KafkaHeaders, extract_headers, inject_headers

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

Handler = Callable[[Envelope, ConsumerRecord], Awaitable[None]]

# Failures that the same record will always cause: invalid data for PostgreSQL (SQLSTATE class
# 22), values past its limits (class 54, e.g. an index row too large), or a handler's verdict.
PERMANENT = (asyncpg.DataError, asyncpg.ProgramLimitExceededError, PermanentError)


def supports_idempotence(kafka_kind: str) -> bool:
    """Tansu fails InitProducerId (DESIGN.md): no idempotent producer there."""
    return not kafka_kind.startswith("tansu")


class KafkaPublisher:
    """Publishes envelopes; used by the outbox relay and by the few direct publishers."""

    # Large batches: the relay sends one batch per partition at a time (to keep the order
    # of a key when a send fails), so a batch should carry many rows.
    BATCH_BYTES = 256 * 1024
    MAX_REQUEST_BYTES = 1024 * 1024  # aiokafka's default, and about the broker's message limit

    def __init__(self, bootstrap_servers: str, client_id: str, *, idempotent: bool) -> None:
        self._settings: dict[str, object] = {
            "bootstrap_servers": bootstrap_servers,
            "client_id": client_id,
            "acks": "all",
            "linger_ms": 0,
            "enable_idempotence": idempotent,
            "max_batch_size": self.BATCH_BYTES,
            "max_request_size": self.MAX_REQUEST_BYTES,
        }
        self._producer = AIOKafkaProducer(**self._settings)
        self._partitioner = DefaultPartitioner()

    async def start(self) -> None:
        await self._producer.start()

    async def restart(self) -> None:
        """Replace the producer by a new one (new producer id, sequence numbers from zero).

        The way out after the broker refused a batch of an idempotent producer: the refused
        batch leaves a gap in the partition's sequence numbers, and every later send to that
        partition fails with OutOfOrderSequenceNumber until the producer id changes.
        """
        old = self._producer
        self._producer = AIOKafkaProducer(**self._settings)
        await self._producer.start()
        try:
            await asyncio.wait_for(old.stop(), 10)
        except Exception:
            log.warning("the replaced Kafka producer did not stop cleanly", exc_info=True)

    async def stop(self) -> None:
        await self._producer.stop()

    async def publish(
        self, topic: str, key: str, envelope: Envelope, headers: KafkaHeaders | None = None
    ) -> None:
        """Send one envelope and wait for the broker's ack, with the current trace context."""
        with tracer.start_as_current_span(
            f"{topic} publish", kind=trace.SpanKind.PRODUCER, attributes=_attrs(topic, envelope)
        ):
            await self._producer.send_and_wait(
                topic,
                envelope.SerializeToString(),
                key=key.encode(),
                headers=inject_headers(headers),
            )

    async def partition_for(self, topic: str, key: bytes | None) -> int:
        """The partition :meth:`publish` would choose for ``key`` (the producer's default
        partitioner, murmur2 like Java's, so every producer of a key agrees)."""
        all_partitions = sorted(await self._producer.partitions_for(topic))
        return int(self._partitioner(key, all_partitions, all_partitions))

    def too_large(self, record: OutRecord) -> str | None:
        """Why the producer would refuse ``record`` whatever happens, or None."""
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
            record.key, record.value, record.headers
        )
        limit = self.MAX_REQUEST_BYTES
        if size > limit:
            return f"record of {size} bytes exceeds the producer's max_request_size ({limit})"
        return None

    async def send_atomic_batch(
        self, topic: str, partition: int, records: Sequence[OutRecord]
    ) -> tuple[int, asyncio.Future[object]]:
        """Queue one record batch of the first records of ``records`` that fit (at least one)
        for ``partition``; returns how many it holds and the future of the broker's answer.

        A record batch is written whole or not at all, and the batches of a partition leave
        in the order they were queued: a caller that awaits each batch before queueing the
        next knows that nothing after a failed record reached the partition.
        """
        batch = self._producer.create_batch()
        count = 0
        for record in records:
            if (
                batch.append(
                    timestamp=None, key=record.key, value=record.value, headers=record.headers
                )
                is None
            ):
                break
            count += 1
        batch.close()
        future = await self._producer.send_batch(batch, topic, partition=partition)
        return count, future


@dataclass(frozen=True)
class OutRecord:
    """A record as the outbox stores it: key and value serialized, headers with the trace."""

    key: bytes | None
    value: bytes
    headers: KafkaHeaders


# Failures caused by the record itself: sending it again can never succeed.
RECORD_REFUSED = (MessageSizeTooLargeError, RecordListTooLargeError, CorruptRecordException)
# Failures after which an idempotent producer must start over with a new producer id.
PRODUCER_BROKEN = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch)


def _attrs(topic: str, envelope: Envelope) -> dict[str, str]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.message.id": envelope.event_id,
        "nudge.workspace_id": envelope.workspace_id,
        "nudge.event_type": envelope.type,
    }


async def handle_record(record: ConsumerRecord, handler: Handler, consumer_name: str) -> None:
    """Decode one record, enter its trace context and workspace, and call the handler.

    A record that is not an envelope cannot become one by retrying: it is logged and skipped.
    """
    try:
        envelope = Envelope.FromString(record.value)
    except DecodeError:
        log.error(
            "skipping undecodable record %s[%d]@%d", record.topic, record.partition, record.offset
        )
        return
    token = context.attach(extract_headers(record.headers))
    ws_token = workspace_id_var.set(envelope.workspace_id)
    ev_token = event_id_var.set(envelope.event_id)
    try:
        with tracer.start_as_current_span(
            f"{record.topic} process",
            kind=trace.SpanKind.CONSUMER,
            attributes={
                **_attrs(record.topic, envelope),
                "messaging.consumer.group.name": consumer_name,
            },
        ):
            await handler(envelope, record)
    finally:
        event_id_var.reset(ev_token)
        workspace_id_var.reset(ws_token)
        context.detach(token)


class KafkaConsumerLoop:
    """Consumes topics in a group, handles each record in partition order, commits after.

    A failing handler is retried with backoff rather than skipped: handlers are idempotent,
    and a transient failure (database restarting) must pause the partition, not lose events.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        topics: list[str],
        handler: Handler,
        *,
        max_records: int = 500,
    ) -> None:
        self.group_id = group_id
        self._handler = handler
        self._max_records = max_records
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap_servers,
            group_id=group_id,
            enable_auto_commit=False,
            # New groups read from the start: Tansu's LATEST is wrong (DESIGN.md), and a new
            # service must see what was published before it first joined.
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        self._stopping = asyncio.Event()
        self.skipped = 0

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        self._stopping.set()
        await self._consumer.stop()

    async def run(self) -> None:
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(timeout_ms=500, max_records=self._max_records)
            for records in batches.values():
                for record in records:
                    await self._handle_with_retry(record)
            if batches:
                try:
                    await self._consumer.commit()
                except (CommitFailedError, IllegalStateError) as err:
                    # A rebalance took the partitions away mid-batch: their new owner gets
                    # the records again, and the handlers are idempotent.
                    log.warning("offsets not committed (%s); records will be redelivered", err)

    async def _handle_with_retry(self, record: ConsumerRecord) -> None:
        delay = 0.1
        while True:
            try:
                await handle_record(record, self._handler, self.group_id)
                return
            except asyncio.CancelledError:
                raise
            except PERMANENT as err:
                # Retrying cannot help and would block every later record of the partition.
                self.skipped += 1
                log.error(
                    "skipping %s[%d]@%d, which no retry can handle: %r",
                    record.topic,
                    record.partition,
                    record.offset,
                    err,
                )
                return
            except Exception:
                log.exception(
                    "handler failed on %s[%d]@%d, retrying in %.1fs",
                    record.topic,
                    record.partition,
                    record.offset,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
