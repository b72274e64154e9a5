"""Kafka producer and consumer helpers that carry the trace context in record headers.

Values are :class:`Envelope` protobufs; keys are the id whose order matters (contact id).
Producers await each send with ``linger_ms=0``: an awaited send with a linger waits out the
linger every time (DESIGN.md, measured). The consumer loop lives in
:mod:`services.common.consumer` (re-exported here); it commits after handling, so delivery
is at-least-once and every handler must be idempotent on ``event_id``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidProducerEpoch,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
    UnknownProducerId,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from nudge.events.v1.envelope_pb2 import Envelope
from opentelemetry import trace

from services.common.consumer import PERMANENT, Handler, KafkaConsumerLoop, handle_record
from services.common.tracing import OFFSET, PARTITION, KafkaHeaders, envelope_ids, inject_headers

# The consumer side moved to services.common.consumer; these names stay importable here.
__all__ = [
    "PERMANENT",
    "Handler",
    "KafkaConsumerLoop",
    "KafkaPublisher",
    "handle_record",
    "supports_idempotence",
]

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


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
        ) as span:
            sent = await self._producer.send_and_wait(
                topic,
                envelope.SerializeToString(),
                key=key.encode(),
                headers=inject_headers(headers),
            )
            if span.is_recording():
                span.set_attribute(PARTITION, sent.partition)
                span.set_attribute(OFFSET, sent.offset)

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
        **envelope_ids(envelope),
    }
