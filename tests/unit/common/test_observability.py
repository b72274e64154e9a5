import json
import logging

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from services.common.context import workspace_id_var
from services.common.logs import JsonFormatter
from services.common.tracing import extract_headers, inject_headers

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
