"""OpenTelemetry setup and W3C trace-context propagation over Kafka headers.

Spans go to OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (Jaeger in docker compose, or
``make run TRACES=jaeger``), and to JSON-lines files under ``NUDGE_TRACES_DIR`` when that is
set (``nudge trace`` reads them; the tests too, to check that one trace spans HTTP, gRPC,
Kafka, Faust and SMTP).

Every span that handles a contact or a message names them with :data:`WORKSPACE`,
:data:`CONTACT` and :data:`MESSAGE`, so that a trace can be found from either id
(``nudge trace --contact ID``). The helpers below only read fields the message already has
(no new spans, no lookups), because they run on the consumers' hot paths.
"""

from __future__ import annotations

import functools
import json
import os
import random
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

KafkaHeaders = list[tuple[str, bytes]]

WORKSPACE = "nudge.workspace_id"
CONTACT = "nudge.contact_id"
MESSAGE = "nudge.message_id"
# OpenTelemetry's semantic conventions for Kafka.
TOPIC = "messaging.destination.name"
PARTITION = "messaging.kafka.destination.partition"
OFFSET = "messaging.kafka.message.offset"


@functools.cache
def _id_fields(descriptor: Descriptor) -> tuple[str, str, bool]:
    """Where a message type keeps its ids, worked out once per type: the field holding the
    contact (``contact_id``, or ``contact``), the contact's own id field inside that
    (``contact_id`` of a ``ContactRef``, ``id`` of a ``Contact``; "" when the first is the
    id itself), and whether it has a ``message_id``."""
    fields = descriptor.fields_by_name
    outer, inner = "", ""
    if "contact_id" in fields:
        outer = "contact_id"
    elif "contact" in fields and (sub := fields["contact"].message_type) is not None:
        names = sub.fields_by_name
        inner = "contact_id" if "contact_id" in names else "id" if "id" in names else ""
        outer = "contact" if inner else ""
    return outer, inner, "message_id" in fields


def _text(message: Message, name: str) -> str:
    value = getattr(message, name)
    return value if isinstance(value, str) else ""


def message_ids(message: Message) -> dict[str, str]:
    """The contact and message ids a protobuf message names itself: a ``contact_id``, a
    ``contact`` (a ``ContactRef`` by id, or a ``Contact`` with its ``id``) and a
    ``message_id`` field; empty values are left out. Which fields to read is known per
    type (:func:`_id_fields`), so a message without ids costs one cached look-up."""
    found: dict[str, str] = {}
    outer, inner, has_message = _id_fields(message.DESCRIPTOR)
    if outer:
        value = getattr(message, outer)
        contact = _text(value, inner) if inner else _text(message, outer)
        if contact:
            found[CONTACT] = contact
    if has_message and (sent := _text(message, "message_id")):
        found[MESSAGE] = sent
    return found


def envelope_ids(envelope: Message) -> dict[str, str]:
    """:func:`message_ids` of an envelope's payload (``nudge.events.v1.Envelope``)."""
    kind = envelope.WhichOneof("payload")
    return message_ids(getattr(envelope, kind)) if kind else {}


def annotate(span: trace.Span | None = None, **ids: str) -> None:
    """Set ``nudge.<name>`` attributes (``workspace_id=``, ``contact_id=``,
    ``message_id=``) on ``span`` (default: the current span), leaving out empty values; a
    span that does not record costs nothing more."""
    span = span or trace.get_current_span()
    if span.is_recording():
        for name, value in ids.items():
            if value:
                span.set_attribute(f"nudge.{name}", value)


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per finished span to a file of this process's own."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for span in spans:
                ctx = span.get_span_context()
                parent = span.parent
                self._file.write(
                    json.dumps(
                        {
                            "name": span.name,
                            "service": span.resource.attributes.get("service.name"),
                            "trace_id": format(ctx.trace_id, "032x") if ctx else "",
                            "span_id": format(ctx.span_id, "016x") if ctx else "",
                            "parent_id": format(parent.span_id, "016x") if parent else "",
                            "kind": span.kind.name,
                            # UNSET (the default), OK or ERROR; an ERROR's description.
                            "status": span.status.status_code.name,
                            "status_message": span.status.description or "",
                            "start_ns": span.start_time,
                            "end_ns": span.end_time,
                            "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
                        }
                    )
                    + "\n"
                )
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


class IdsOnlyTracer(trace.NoOpTracer):
    """Spans that carry ids and record nothing: for a process whose spans nobody receives.

    The SDK's spans cost the hot paths a few per cent of their CPU (attributes, events,
    timestamps, the span processors), and with no exporter all of it is thrown away. These
    still give every span a trace id (a new one, or the parent's) and a span id of its own,
    so that log lines name their trace and the trace context goes on to the next service
    over gRPC and Kafka with its *sampled* flag set: a service that does export records its
    spans as children of these, whose own spans are missing from its trace."""

    def start_span(
        self,
        name: str,
        context: context.Context | None = None,
        *args: object,
        **kwargs: object,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        valid = parent.is_valid
        return trace.NonRecordingSpan(
            trace.SpanContext(
                trace_id=parent.trace_id if valid else random.getrandbits(128) or 1,
                span_id=random.getrandbits(64) or 1,
                is_remote=False,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
                trace_state=parent.trace_state if valid else None,
            )
        )


class IdsOnlyTracerProvider(trace.NoOpTracerProvider):
    """Gives out :class:`IdsOnlyTracer`, whatever the instrumentation's name."""

    def get_tracer(self, *args: object, **kwargs: object) -> trace.Tracer:
        return _IDS_ONLY


_IDS_ONLY = IdsOnlyTracer()


def setup_tracing(
    service: str, otlp_endpoint: str = "", traces_dir: str = ""
) -> trace.TracerProvider:
    """Spans to OTLP and/or JSON-lines files; with neither, :class:`IdsOnlyTracerProvider`
    (nothing recorded, ids still made and propagated)."""
    if not otlp_endpoint and not traces_dir:
        provider: trace.TracerProvider = IdsOnlyTracerProvider()
        trace.set_tracer_provider(provider)
        return provider
    sdk = TracerProvider(resource=Resource.create({"service.name": f"nudge-{service}"}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        sdk.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    if traces_dir:
        path = Path(traces_dir) / f"{service}.{os.getpid()}.jsonl"
        sdk.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    trace.set_tracer_provider(sdk)
    return sdk


def inject_headers(headers: KafkaHeaders | None = None) -> KafkaHeaders:
    """The current trace context as Kafka record headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    out = list(headers or [])
    out.extend((k, v.encode()) for k, v in carrier.items())
    return out


def extract_headers(headers: Iterable[tuple[str, bytes]] | None) -> context.Context:
    """The trace context carried by Kafka record headers (empty when there is none)."""
    carrier = {k: v.decode("latin-1") for k, v in (headers or [])}
    return propagate.extract(carrier)


def current_traceparent() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
