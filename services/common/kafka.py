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
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from nudge.events.v1.envelope_pb2 import Envelope
from opentelemetry import trace

from services.common.consumer import PERMANENT, Handler, KafkaConsumerLoop, handle_record
from services.common.tracing import KafkaHeaders, inject_headers

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

    def __init__(self, bootstrap_servers: str, client_id: str, *, idempotent: bool) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            linger_ms=0,
            enable_idempotence=idempotent,
        )

    async def start(self) -> None:
        await self._producer.start()

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

    async def send_batch(
        self, records: Iterable[tuple[str, bytes | None, bytes, KafkaHeaders]]
    ) -> None:
        """Send records as they are (headers already carry their trace) and wait for all acks.
        Records of one partition keep their order."""
        futures = [
            await self._producer.send(topic, value, key=key, headers=headers)
            for topic, key, value, headers in records
        ]
        await asyncio.gather(*futures)


def _attrs(topic: str, envelope: Envelope) -> dict[str, str]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.message.id": envelope.event_id,
        "nudge.workspace_id": envelope.workspace_id,
        "nudge.event_type": envelope.type,
    }
