"""``nudge trace``: one trace as an indented tree in the terminal, or the traces of a contact
or a message.

    nudge trace TRACE_ID [--json] [--jaeger URL] [--traces-dir DIR]
    nudge trace --contact ID | --message ID [--json] [--jaeger URL] [--traces-dir DIR]

Where the spans come from, in order:

1. Jaeger's HTTP API (``GET {url}/api/traces/{id}``): ``--jaeger URL``, else
   ``NUDGE_JAEGER_URL``, else http://127.0.0.1:16686 when something answers there
   (``make run TRACES=jaeger``);
2. the JSON-lines files the services write (services/common/tracing.py): ``--traces-dir``,
   else ``NUDGE_TRACES_DIR``, else the traces folder of the state directory that
   ``make run`` uses (``$NUDGE_HOME`` or ``.nudge``, then ``traces/``).

``--jaeger`` alone asks Jaeger only, ``--traces-dir`` alone the files only. A trace found
nowhere is an error (exit code 1) that names where it looked: Jaeger keeps its traces in
memory, so a restarted Jaeger no longer knows a trace the files still have.

Each line: service, span name, duration, status (``ERROR`` when the span's status says so,
else ``OK``) and the attributes that find things (workspace, contact, message, topic,
partition, offset). Children are under their parent, ordered by start; a span whose parent
is not in the trace (the caller's own span, say) is a root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from deploy.local import paths
from services.common.tracing import CONTACT, MESSAGE, OFFSET, PARTITION, TOPIC, WORKSPACE

DEFAULT_JAEGER = "http://127.0.0.1:16686"
# (attribute, label) in the order printed.
SHOWN = (
    (WORKSPACE, "workspace"),
    (CONTACT, "contact"),
    (MESSAGE, "message"),
    (TOPIC, "topic"),
    (PARTITION, "partition"),
    (OFFSET, "offset"),
)
FIND_BY = {"contact": CONTACT, "message": MESSAGE}
TIMEOUT_S = 5.0


class TraceError(Exception):
    """What the command tells the user before exiting with code 1."""


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    service: str
    name: str
    start_us: int
    duration_us: int
    kind: str = ""  # SERVER, CLIENT, CONSUMER, PRODUCER, INTERNAL
    error: bool = False
    status_message: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    children: list[Span] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "ERROR" if self.error else "OK"

    def shown(self) -> list[tuple[str, str]]:
        return [(label, self.attributes[key]) for key, label in SHOWN if self.attributes.get(key)]

    def as_json(self) -> dict[str, Any]:
        return {
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "service": self.service,
            "name": self.name,
            "kind": self.kind,
            "start_us": self.start_us,
            "duration_ms": round(self.duration_us / 1000, 3),
            "status": self.status,
            "status_message": self.status_message,
            "attributes": self.attributes,
            "children": [child.as_json() for child in self.children],
        }


# -- reading ------------------------------------------------------------------------------


def span_from_line(record: Mapping[str, Any]) -> Span:
    """A span as services/common/tracing.py's ``JsonLinesSpanExporter`` wrote it. Lines
    written before it recorded the status have none: OK."""
    start = int(record.get("start_ns") or 0)
    end = int(record.get("end_ns") or start)
    return Span(
        trace_id=str(record.get("trace_id", "")),
        span_id=str(record.get("span_id", "")),
        parent_id=str(record.get("parent_id", "")),
        service=str(record.get("service") or "?"),
        name=str(record.get("name", "")),
        start_us=start // 1000,
        duration_us=max(0, end - start) // 1000,
        kind=str(record.get("kind") or ""),
        error=record.get("status") == "ERROR",
        status_message=str(record.get("status_message") or ""),
        attributes={str(k): str(v) for k, v in (record.get("attributes") or {}).items()},
    )


def file_spans(traces_dir: Path, needle: str = "") -> Iterator[Span]:
    """Every span of the JSON-lines files in ``traces_dir`` whose line contains ``needle``
    (a cheap filter before parsing: files hold every trace of a run). A line cut short by a
    process that died mid-write is skipped."""
    for path in sorted(traces_dir.glob("*.jsonl")):
        try:
            with path.open(encoding="utf-8", errors="replace") as lines:
                for line in lines:
                    if needle and needle not in line:
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict):
                        yield span_from_line(record)
        except OSError:
            continue


def _tag_text(tag: Mapping[str, Any]) -> str:
    value = tag.get("value")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def jaeger_spans(answer: Mapping[str, Any]) -> list[Span]:
    """The spans of a Jaeger API answer (``/api/traces/{id}`` or ``/api/traces?...``):
    ``data`` holds traces, each with ``spans`` and the ``processes`` naming their services.
    OpenTelemetry's status is in the tags ``otel.status_code`` and
    ``otel.status_description`` (``error: true`` too, for an ERROR)."""
    spans: list[Span] = []
    for trace_data in answer.get("data") or []:
        processes = trace_data.get("processes") or {}
        for raw in trace_data.get("spans") or []:
            tags = {str(t.get("key")): _tag_text(t) for t in raw.get("tags") or []}
            parent = next(
                (
                    str(ref.get("spanID", ""))
                    for ref in raw.get("references") or []
                    if ref.get("refType") == "CHILD_OF" and ref.get("traceID") == raw.get("traceID")
                ),
                "",
            )
            process = processes.get(raw.get("processID"), {})
            spans.append(
                Span(
                    trace_id=str(raw.get("traceID", "")).rjust(32, "0"),
                    span_id=str(raw.get("spanID", "")),
                    parent_id=parent,
                    service=str(process.get("serviceName") or "?"),
                    name=str(raw.get("operationName", "")),
                    start_us=int(raw.get("startTime") or 0),
                    duration_us=int(raw.get("duration") or 0),
                    kind=tags.get("span.kind", "").upper(),
                    error=tags.get("otel.status_code") == "ERROR" or tags.get("error") == "true",
                    status_message=tags.get("otel.status_description", ""),
                    attributes=tags,
                )
            )
    return spans


# -- the sources --------------------------------------------------------------------------


def default_traces_dir(environ: Mapping[str, str]) -> Path:
    """``NUDGE_TRACES_DIR``, else the folder ``make run`` writes to (deploy/local/paths.py)."""
    if environ.get("NUDGE_TRACES_DIR"):
        return Path(environ["NUDGE_TRACES_DIR"])
    return paths.traces_dir()


@dataclass
class Sources:
    """Where to look, in order: a Jaeger (``jaeger``, ``jaeger_required``: an error when it
    does not answer, rather than the files), then a folder of JSON-lines files."""

    jaeger: str | None
    jaeger_required: bool
    traces_dir: Path | None

    @classmethod
    def choose(
        cls, jaeger: str | None, traces_dir: str | None, environ: Mapping[str, str]
    ) -> Sources:
        if jaeger and not traces_dir:
            return cls(jaeger.rstrip("/"), True, None)
        if traces_dir and not jaeger:
            return cls(None, False, Path(traces_dir))
        url = jaeger or environ.get("NUDGE_JAEGER_URL") or DEFAULT_JAEGER
        files = Path(traces_dir) if traces_dir else default_traces_dir(environ)
        return cls(url.rstrip("/"), bool(jaeger), files)


class JaegerClient:
    def __init__(self, url: str, client: httpx.Client) -> None:
        self.url = url
        self._client = client

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> httpx.Response:
        return self._client.get(f"{self.url}{path}", params=params)

    def trace(self, trace_id: str) -> list[Span]:
        answer = self._get(f"/api/traces/{trace_id}")
        if answer.status_code == 404:
            return []
        answer.raise_for_status()
        return jaeger_spans(answer.json())

    def find(self, key: str, value: str) -> list[Span]:
        """The spans of every trace with a span tagged ``key=value``: Jaeger's search wants
        a service, so each service it knows is asked."""
        services = self._get("/api/services")
        services.raise_for_status()
        found: list[Span] = []
        for service in services.json().get("data") or []:
            answer = self._get(
                "/api/traces",
                {"service": service, "tags": json.dumps({key: value}), "limit": "100"},
            )
            answer.raise_for_status()
            found.extend(jaeger_spans(answer.json()))
        return found


def _jaeger_down(url: str, err: Exception) -> TraceError:
    return TraceError(f"Jaeger at {url} does not answer ({type(err).__name__}: {err})")


def load_trace(trace_id: str, sources: Sources, client: httpx.Client) -> tuple[list[Span], str]:
    """The spans of ``trace_id`` and where they were found; raises :class:`TraceError`."""
    trace_id = trace_id.strip().lower()
    looked: list[str] = []
    if sources.jaeger:
        try:
            spans = JaegerClient(sources.jaeger, client).trace(trace_id)
            if spans:
                return spans, f"Jaeger {sources.jaeger}"
            looked.append(f"Jaeger {sources.jaeger}")
        except (httpx.HTTPError, ValueError) as err:
            if sources.jaeger_required:
                raise _jaeger_down(sources.jaeger, err) from err
    if sources.traces_dir is not None:
        spans = [s for s in file_spans(sources.traces_dir, trace_id) if s.trace_id == trace_id]
        if spans:
            return spans, f"files {sources.traces_dir}"
        looked.append(f"the files in {sources.traces_dir}")
    raise TraceError(f"trace {trace_id} not found (looked in {' and '.join(looked)})")


def find_traces(
    key: str, value: str, sources: Sources, client: httpx.Client
) -> tuple[list[Span], str]:
    """Every span of the traces with a span whose attribute ``key`` is ``value``."""
    if sources.jaeger:
        try:
            spans = JaegerClient(sources.jaeger, client).find(key, value)
            if spans:
                return spans, f"Jaeger {sources.jaeger}"
        except (httpx.HTTPError, ValueError) as err:
            if sources.jaeger_required:
                raise _jaeger_down(sources.jaeger, err) from err
    if sources.traces_dir is not None:
        candidates = list(file_spans(sources.traces_dir, value))
        ids = {s.trace_id for s in candidates if s.attributes.get(key) == value}
        if ids:
            wanted = [s for s in file_spans(sources.traces_dir) if s.trace_id in ids]
            return wanted, f"files {sources.traces_dir}"
    return [], ""


# -- the tree -----------------------------------------------------------------------------


def build_tree(spans: Iterable[Span]) -> list[Span]:
    """The roots, each with its children under it, everything ordered by start. A span
    whose parent is not among ``spans`` is a root. Duplicates (one span in two files) are
    kept once."""
    unique: dict[str, Span] = {}
    for span in spans:
        span.children = []
        unique.setdefault(span.span_id, span)
    roots: list[Span] = []
    for span in unique.values():
        parent = unique.get(span.parent_id) if span.parent_id else None
        if parent is not None and parent is not span:
            parent.children.append(span)
        else:
            roots.append(span)
    for span in unique.values():
        span.children.sort(key=_order)
    return sorted(roots, key=_order)


def _order(span: Span) -> tuple[int, str]:
    return span.start_us, span.span_id


def _walk(spans: Sequence[Span]) -> Iterator[Span]:
    for span in spans:
        yield span
        yield from _walk(span.children)


def _ms(us: int) -> str:
    return f"{us / 1000:.1f} ms"


def render_tree(trace_id: str, roots: Sequence[Span], source: str) -> str:
    """The text ``nudge trace`` prints: a header line, then one line per span."""
    every = list(_walk(roots))
    services = sorted({s.service for s in every})
    if every:
        begin = min(s.start_us for s in every)
        end = max(s.start_us + s.duration_us for s in every)
    else:
        begin = end = 0
    lines = [
        f"trace {trace_id}: {len(every)} spans, {len(services)} services "
        f"({', '.join(services)}), {_ms(end - begin)}, from {source}"
    ]

    def add(span: Span, prefix: str, branch: str) -> None:
        detail = "  ".join(f"{label}={value}" for label, value in span.shown())
        status = span.status
        if status == "ERROR" and span.status_message:
            status = f"ERROR ({span.status_message})"
        text = f"{prefix}{branch}{span.service}  {span.name}  {_ms(span.duration_us)}  {status}"
        lines.append(f"{text}  {detail}" if detail else text)
        inner = prefix + ("" if not branch else "   " if branch == "└─ " else "│  ")
        for index, child in enumerate(span.children):
            add(child, inner, "└─ " if index == len(span.children) - 1 else "├─ ")

    for root in roots:
        add(root, "", "")
    return "\n".join(lines) + "\n"


def render_json(trace_id: str, roots: Sequence[Span], source: str) -> str:
    body = {
        "trace_id": trace_id,
        "source": source,
        "spans": [root.as_json() for root in roots],
    }
    return json.dumps(body, indent=1) + "\n"


def summarize(spans: Iterable[Span]) -> list[dict[str, Any]]:
    """One entry per trace, oldest first: its id, start, span count and first span."""
    by_trace: dict[str, list[Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    found = []
    for trace_id, members in by_trace.items():
        roots = build_tree(members)
        first = roots[0]
        found.append(
            {
                "trace_id": trace_id,
                "start_us": first.start_us,
                "spans": len({s.span_id for s in members}),
                "root": f"{first.service}  {first.name}",
            }
        )
    return sorted(found, key=lambda t: (t["start_us"], t["trace_id"]))


# -- the command --------------------------------------------------------------------------


def add_parser(areas: Any) -> None:
    """``nudge trace``, registered by services/cli/__init__.py."""
    command = areas.add_parser(
        "trace",
        help="print a trace as a tree, or list the traces of a contact or a message",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("trace_id", nargs="?", help="the trace id (32 hex digits)")
    which = command.add_mutually_exclusive_group()
    which.add_argument("--contact", metavar="ID", help="list the traces naming this contact")
    which.add_argument("--message", metavar="ID", help="list the traces naming this message")
    command.add_argument("--json", action="store_true", help="JSON instead of the tree")
    command.add_argument("--jaeger", metavar="URL", help="Jaeger's UI/API base URL")
    command.add_argument("--traces-dir", metavar="DIR", help="the JSON-lines files' folder")
    command.set_defaults(run=run)


def run(
    arguments: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """The command; ``transport`` replaces the network for the unit tests' recorded
    Jaeger answers."""
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    err = err or sys.stderr
    wanted = [(kind, getattr(arguments, kind)) for kind in FIND_BY if getattr(arguments, kind)]
    if bool(arguments.trace_id) == bool(wanted):
        err.write("nudge trace: give a TRACE_ID, or --contact ID, or --message ID\n")
        return 2
    sources = Sources.choose(arguments.jaeger, arguments.traces_dir, environ)
    try:
        with httpx.Client(timeout=TIMEOUT_S, transport=transport) as client:
            if arguments.trace_id:
                spans, source = load_trace(arguments.trace_id, sources, client)
                trace_id = arguments.trace_id.strip().lower()
                roots = build_tree(spans)
                render = render_json if arguments.json else render_tree
                out.write(render(trace_id, roots, source))
                return 0
            kind, value = wanted[0]
            spans, source = find_traces(FIND_BY[kind], value, sources, client)
    except TraceError as error:
        err.write(f"nudge trace: {error}\n")
        return 1
    traces = summarize(spans)
    if not traces:
        err.write(f"nudge trace: no trace names {kind} {value}\n")
        return 1
    if arguments.json:
        out.write(json.dumps({"source": source, "traces": traces}, indent=1) + "\n")
        return 0
    for found in traces:
        began = datetime.fromtimestamp(found["start_us"] / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S")
        out.write(f"{found['trace_id']}  {began}  {found['spans']:>3} spans  {found['root']}\n")
    out.flush()  # the list before the summary, when both go to one file or terminal
    err.write(f"{len(traces)} trace(s) naming {kind} {value}, from {source}\n")
    return 0
