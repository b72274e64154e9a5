"""``nudge trace`` (services/cli/traces.py): the tree it prints, from the JSON-lines files
and from Jaeger's API, and how it finds traces by contact or message.

The recorded data under data/ is real: one signup's trace, as the services of
``make run TRACES=jaeger`` wrote it to their JSON-lines files (signup_trace.jsonl) and as
Jaeger's API answered for the same trace (jaeger_trace.json). Jaeger's answers are served
by an httpx transport here; the e2e test (tests/e2e/test_trace_command.py) runs the
command on a live system's files."""

from __future__ import annotations

import argparse
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli import parser
from services.cli.traces import Span, build_tree, jaeger_spans, render_tree, run, span_from_line

DATA = Path(__file__).parent / "data"
JAEGER = "http://jaeger.test:16686"


def recorded_lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / "signup_trace.jsonl").read_text().splitlines()]


def recorded_trace_id() -> str:
    return str(recorded_lines()[0]["trace_id"])


def jaeger_answer() -> dict[str, Any]:
    answer: dict[str, Any] = json.loads((DATA / "jaeger_trace.json").read_text())
    return answer


@pytest.fixture
def traces_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "traces"
    folder.mkdir()
    shutil.copy(DATA / "signup_trace.jsonl", folder / "gateway.1.jsonl")
    return folder


def nudge(
    *argv: str,
    environ: dict[str, str] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> tuple[int, str, str]:
    arguments: argparse.Namespace = parser().parse_args(["trace", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = run(arguments, environ or {}, out, err, transport)
    return code, out.getvalue(), err.getvalue()


def serving(routes: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    return httpx.MockTransport(routes)


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def span(span_id: str, parent: str, start: int, **fields: Any) -> Span:
    values: dict[str, Any] = {
        "trace_id": "ab" * 16,
        "span_id": span_id,
        "parent_id": parent,
        "service": "nudge-x",
        "name": f"span {span_id}",
        "start_us": start,
        "duration_us": 1500,
    }
    values.update(fields)
    return Span(**values)


# -- the tree -----------------------------------------------------------------------------


def test_children_sit_under_their_parent_in_start_order_with_status_and_ids() -> None:
    spans = [
        span("c2", "root", 300, service="nudge-delivery", name="smtp send"),
        span(
            "root",
            "",
            100,
            service="nudge-gateway",
            name="POST /v1/events",
            duration_us=12_345,
            attributes={"nudge.contact_id": "c-1", "nudge.workspace_id": "w-1", "x": "hidden"},
        ),
        span(
            "c1",
            "root",
            200,
            service="nudge-contacts",
            name="TrackEvent",
            error=True,
            status_message="boom",
        ),
        span(
            "g1",
            "c1",
            250,
            name="shop.events.v1 process",
            attributes={
                "messaging.destination.name": "shop.events.v1",
                "messaging.kafka.destination.partition": "2",
                "messaging.kafka.message.offset": "17",
            },
        ),
    ]
    text = render_tree("ab" * 16, build_tree(spans), "files /t")
    assert text.splitlines() == [
        f"trace {'ab' * 16}: 4 spans, 4 services (nudge-contacts, nudge-delivery, "
        "nudge-gateway, nudge-x), 12.3 ms, from files /t",
        "nudge-gateway  POST /v1/events  12.3 ms  OK  workspace=w-1  contact=c-1",
        "├─ nudge-contacts  TrackEvent  1.5 ms  ERROR (boom)",
        "│  └─ nudge-x  shop.events.v1 process  1.5 ms  OK  topic=shop.events.v1  partition=2  "
        "offset=17",
        "└─ nudge-delivery  smtp send  1.5 ms  OK",
    ]


def test_a_span_whose_parent_is_not_in_the_trace_is_a_root_and_duplicates_count_once() -> None:
    spans = [span("b", "elsewhere", 20), span("a", "", 10), span("a", "", 10)]
    roots = build_tree(spans)
    assert [root.span_id for root in roots] == ["a", "b"]
    assert all(not root.children for root in roots)


def test_an_error_status_is_read_from_the_files_and_from_jaeger() -> None:
    line = {"span_id": "a", "name": "smtp send", "start_ns": 0, "end_ns": 2_000_000}
    failed = span_from_line({**line, "status": "ERROR", "status_message": "554 refused"})
    assert (failed.status, failed.status_message) == ("ERROR", "554 refused")
    assert span_from_line({**line, "status": "UNSET"}).status == "OK"
    assert span_from_line(line).status == "OK"  # a line written before statuses were
    tags = [
        {"key": "otel.status_code", "type": "string", "value": "ERROR"},
        {"key": "otel.status_description", "type": "string", "value": "554 refused"},
    ]
    raw = {"traceID": "ab", "spanID": "a", "operationName": "smtp send", "processID": "p1"}
    answer = {"data": [{"spans": [{**raw, "tags": tags}, {**raw, "spanID": "b", "tags": []}]}]}
    [bad, good] = jaeger_spans(answer)
    assert (bad.status, bad.status_message, good.status) == ("ERROR", "554 refused", "OK")
    assert bad.trace_id == "ab".rjust(32, "0")


# -- from the files -----------------------------------------------------------------------


def test_a_recorded_signup_prints_as_a_tree_from_the_files(traces_dir: Path) -> None:
    trace_id = recorded_trace_id()
    code, out, err = nudge(trace_id, "--traces-dir", str(traces_dir))
    assert code == 0, err
    lines = out.splitlines()
    count = len({line["span_id"] for line in recorded_lines()})
    assert lines[0].startswith(f"trace {trace_id}: {count} spans, ")
    assert lines[0].endswith(f"from files {traces_dir}")
    assert len(lines) == 1 + count
    # The signup's request is the root; the mail's hand-off is deep below it.
    assert lines[1].startswith("nudge-gateway  POST /v1/events")
    [smtp] = [line for line in lines if "  smtp send  " in line]
    assert smtp.index("nudge-delivery") > 3
    assert "contact=" in smtp and "message=" in smtp
    processed = [line for line in lines if "delivery.requests.v1 process" in line]
    assert processed and "topic=delivery.requests.v1" in processed[0]
    assert "partition=" in processed[0] and "offset=" in processed[0]


def test_the_json_output_nests_the_same_tree(traces_dir: Path) -> None:
    trace_id = recorded_trace_id()
    code, out, _ = nudge(trace_id, "--json", "--traces-dir", str(traces_dir))
    assert code == 0
    body = json.loads(out)
    assert body["trace_id"] == trace_id
    [root] = body["spans"]
    assert root["service"] == "nudge-gateway"

    def count(node: dict[str, Any]) -> int:
        return 1 + sum(count(child) for child in node["children"])

    assert count(root) == len({line["span_id"] for line in recorded_lines()})


def test_an_unknown_trace_is_an_error_naming_where_it_looked(traces_dir: Path) -> None:
    code, out, err = nudge("0" * 32, "--traces-dir", str(traces_dir))
    assert code == 1
    assert out == ""
    assert f"trace {'0' * 32} not found" in err and str(traces_dir) in err


def test_a_contacts_traces_are_listed_from_the_files(traces_dir: Path) -> None:
    contact = next(
        line["attributes"]["nudge.contact_id"]
        for line in recorded_lines()
        if "nudge.contact_id" in line["attributes"]
    )
    code, out, err = nudge("--contact", contact, "--traces-dir", str(traces_dir))
    assert code == 0, err
    assert out.startswith(recorded_trace_id())
    assert "nudge-gateway  POST /v1/events" in out
    code, _, err = nudge("--message", "no-such-message", "--traces-dir", str(traces_dir))
    assert code == 1 and "no trace names message no-such-message" in err


def test_a_trace_id_or_a_search_is_required() -> None:
    assert nudge()[0] == 2


# -- from Jaeger ----------------------------------------------------------------------------


def test_a_recorded_jaeger_answer_prints_as_the_same_tree(traces_dir: Path) -> None:
    answer = jaeger_answer()
    trace_id = recorded_trace_id()

    def routes(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/api/traces/{trace_id}":
            return httpx.Response(200, json=answer)
        return httpx.Response(404, json={"errors": [{"msg": "trace not found"}]})

    code, from_jaeger, err = nudge(trace_id, "--jaeger", JAEGER, transport=serving(routes))
    assert code == 0, err
    _, from_files, _ = nudge(trace_id, "--traces-dir", str(traces_dir))
    assert from_jaeger.splitlines()[0].endswith(f"from Jaeger {JAEGER}")

    def shape(text: str) -> list[tuple[str, ...]]:
        """Each line without its duration (Jaeger rounds to microseconds)."""
        return [
            tuple(p for p in line.split("  ") if not p.endswith(" ms"))
            for line in text.splitlines()[1:]
        ]

    assert shape(from_jaeger) == shape(from_files)


def test_jaeger_first_then_the_files_when_jaeger_does_not_know_the_trace(
    traces_dir: Path,
) -> None:
    def unknown(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"errors": [{"msg": "trace not found"}]})

    trace_id = recorded_trace_id()
    environ = {"NUDGE_JAEGER_URL": JAEGER, "NUDGE_TRACES_DIR": str(traces_dir)}
    code, out, _ = nudge(trace_id, environ=environ, transport=serving(unknown))
    assert code == 0 and f"from files {traces_dir}" in out.splitlines()[0]
    code, out, _ = nudge(trace_id, environ=environ, transport=serving(refused))
    assert code == 0 and f"from files {traces_dir}" in out.splitlines()[0]
    code, _, err = nudge("0" * 32, environ=environ, transport=serving(unknown))
    assert code == 1 and f"Jaeger {JAEGER}" in err and str(traces_dir) in err


def test_a_jaeger_named_on_the_command_line_must_answer() -> None:
    code, out, err = nudge("ab" * 16, "--jaeger", JAEGER, transport=serving(refused))
    assert code == 1 and out == ""
    assert f"Jaeger at {JAEGER} does not answer" in err


def test_a_messages_traces_are_searched_in_every_service_jaeger_knows() -> None:
    answer = jaeger_answer()
    asked: list[tuple[str, dict[str, str]]] = []

    def routes(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/services":
            return httpx.Response(200, json={"data": ["nudge-gateway", "nudge-delivery"]})
        params = dict(request.url.params)
        asked.append((params["service"], json.loads(params["tags"])))
        found = answer if params["service"] == "nudge-delivery" else {"data": []}
        return httpx.Response(200, json=found)

    code, out, err = nudge("--message", "m-1", "--jaeger", JAEGER, transport=serving(routes))
    assert code == 0, err
    assert asked == [
        ("nudge-gateway", {"nudge.message_id": "m-1"}),
        ("nudge-delivery", {"nudge.message_id": "m-1"}),
    ]
    assert out.startswith(recorded_trace_id())
