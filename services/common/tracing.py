"""OpenTelemetry setup and W3C trace-context propagation over Kafka headers.

Spans go to OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (Jaeger in docker compose), and
to JSON-lines files under ``NUDGE_TRACES_DIR`` when that is set (the tests read them to check
that one trace spans HTTP, gRPC, Kafka, Faust and SMTP).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

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


def setup_tracing(service: str, otlp_endpoint: str = "", traces_dir: str = "") -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"nudge-{service}"}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    if traces_dir:
        path = Path(traces_dir) / f"{service}.{os.getpid()}.jsonl"
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    trace.set_tracer_provider(provider)
    return provider


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
