"""Kafka producer and consumer helpers that carry the trace context in record headers.

Values are :class:`Envelope` protobufs; keys are the id whose order matters (contact id).
Producers await each send with ``linger_ms=0``: an awaited send with a linger waits out the
linger every time (DESIGN.md, measured). Consumers commit after handling, so delivery is
at-least-once and every handler must be idempotent on ``event_id``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import CommitFailedError, IllegalStateError
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
