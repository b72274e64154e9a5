import json
import logging
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from services.common.context import workspace_id_var
from services.common.logs import JsonFormatter
from services.common.tracing import (
    IdsOnlyTracerProvider,
    extract_headers,
    inject_headers,
    setup_tracing,
)

tracer = TracerProvider().get_tracer("test")


def test_trace_context_survives_a_kafka_hop() -> None:
    with tracer.start_as_current_span("produce") as span:
        headers = inject_headers([("other", b"kept")])
        sent = span.get_span_context()
    assert ("other", b"kept") in headers
    received = trace.get_current_span(extract_headers(headers)).get_span_context()
    assert (received.trace_id, received.span_id) == (sent.trace_id, sent.span_id)


def test_no_headers_means_no_parent() -> None:
    assert not trace.get_current_span(extract_headers(None)).get_span_context().is_valid


def test_log_lines_are_json_with_trace_and_workspace() -> None:
    record = logging.LogRecord("svc.x", logging.INFO, __file__, 1, "sent %s", ("m1",), None)
    token = workspace_id_var.set("ws-1")
    try:
        with tracer.start_as_current_span("work") as span:
            line = json.loads(JsonFormatter("delivery").format(record))
            trace_id = format(span.get_span_context().trace_id, "032x")
    finally:
        workspace_id_var.reset(token)
    assert line["msg"] == "sent m1"
    assert line["service"] == "delivery"
    assert line["workspace_id"] == "ws-1"
    assert line["trace_id"] == trace_id


def test_without_an_exporter_spans_record_nothing_but_carry_ids_to_logs_and_the_next_hop() -> None:
    ids_only = IdsOnlyTracerProvider().get_tracer("test")
    record = logging.LogRecord("svc.x", logging.INFO, __file__, 1, "handled", (), None)
    with (
        ids_only.start_as_current_span("consume", context=extract_headers(None)) as root,
        ids_only.start_as_current_span("send") as child,
    ):
        headers = inject_headers()
        line = json.loads(JsonFormatter("triggers").format(record))
    first, second = root.get_span_context(), child.get_span_context()
    assert first.is_valid and not root.is_recording()
    assert second.trace_id == first.trace_id and second.span_id != first.span_id
    assert line["trace_id"] == format(first.trace_id, "032x")
    assert line["span_id"] == format(second.span_id, "016x")
    # The next service sees this span as the parent, sampled: if it exports, it records.
    received = trace.get_current_span(extract_headers(headers)).get_span_context()
    assert (received.trace_id, received.span_id) == (second.trace_id, second.span_id)
    assert received.trace_flags.sampled


def test_an_incoming_trace_is_continued_without_an_exporter() -> None:
    with tracer.start_as_current_span("upstream") as upstream:
        headers = inject_headers()
    ids_only = IdsOnlyTracerProvider().get_tracer("test")
    span = ids_only.start_span("consume", context=extract_headers(headers))
    assert span.get_span_context().trace_id == upstream.get_span_context().trace_id


def test_setup_tracing_records_spans_only_where_they_are_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not the process's global provider: the first one set would stay for every later test.
    chosen: list[object] = []
    monkeypatch.setattr(trace, "set_tracer_provider", chosen.append)
    assert isinstance(setup_tracing("triggers"), IdsOnlyTracerProvider)
    exporting = setup_tracing("triggers", traces_dir=str(tmp_path))
    assert isinstance(exporting, TracerProvider)
    with exporting.get_tracer("test").start_as_current_span("work") as span:
        assert span.is_recording()
    exporting.shutdown()
    assert chosen == [chosen[0], exporting]
    written = [json.loads(line) for f in tmp_path.iterdir() for line in f.read_text().splitlines()]
    assert [s["name"] for s in written] == ["work"]
