"""The open pixel (``GET /o/<token>.gif``) and the click redirect (``GET /c/<token>``), served
straight from the ASGI call, before FastAPI's routing, dependency injection and middleware.

These two answer every image load and every click of every mail, thousands a second at a
campaign's peak, and they need nothing FastAPI gives: the token is the only input, the
answer is fixed bytes or a redirect. Measured in-process, FastAPI's path (its sync
dependencies each run in a thread, the OpenTelemetry middleware's three spans) cost about ten
times the work itself. The other routes (unsubscribe, preference page, confirmation,
/healthz) stay on FastAPI.

Traces stay useful: a request that carries a sampled ``traceparent`` (somebody is following
it) gets a server span and passes its context on to Kafka; of the others, a fraction
(``TRACKING_TRACE_SAMPLE_RATE``, default 1 %) is traced, enough to see the path's latency
without paying for a span per pixel.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from opentelemetry import context, propagate, trace

from services.common.links import InvalidLink, LinkClaims, LinkKind, verify
from services.common.metrics import RequestStats
from services.common.tracing import annotate
from services.tracking import handlers
from services.tracking.domain.machine_opens import MachineRules, Network, client_address

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

Scope = dict[str, Any]
Send = Any

# The smallest transparent GIF (1x1, 43 bytes).
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
    b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
_NO_STORE = [
    (b"cache-control", b"no-store, max-age=0"),
    (b"referrer-policy", b"no-referrer"),
]
_PIXEL_HEADERS = [
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(PIXEL)).encode()),
    *_NO_STORE,
]
_NOT_FOUND = json.dumps(
    {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no such link"}
).encode()
_NOT_FOUND_HEADERS = [
    (b"content-type", b"application/problem+json"),
    (b"content-length", str(len(_NOT_FOUND)).encode()),
    *_NO_STORE,
]


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer of the hot paths, in both forms: ASGI's (``status``, ``headers``, ``body``)
    and the bytes of its status line and headers (``head``: each line ends with CRLF, the
    blank line is not included) that services/tracking/entrypoints/server.py writes."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    head: bytes


def _answer(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> Answer:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()]
    lines += [name + b": " + value + b"\r\n" for name, value in headers]
    return Answer(status, headers, body, b"".join(lines))


_PIXEL_ANSWER = _answer(200, _PIXEL_HEADERS, PIXEL)
_NOT_FOUND_ANSWER = _answer(404, _NOT_FOUND_HEADERS, _NOT_FOUND)
_REDIRECT_TAIL = [(b"content-length", b"0"), *_NO_STORE]
_REDIRECT_HEAD = b"HTTP/1.1 302 Found\r\nlocation: "
_REDIRECT_REST = b"".join(name + b": " + value + b"\r\n" for name, value in _REDIRECT_TAIL)


def _redirect(location: bytes) -> Answer:
    return Answer(
        302,
        [(b"location", location), *_REDIRECT_TAIL],
        b"",
        _REDIRECT_HEAD + location + b"\r\n" + _REDIRECT_REST,
    )


_OPEN_ROUTE = "/o/{token}.gif"
_CLICK_ROUTE = "/c/{token}"
_STATUS_TEXT = {status.value: str(status.value) for status in HTTPStatus}


class HotPaths:
    """What the two routes need, read once from the app's state at start."""

    def __init__(
        self,
        secret: str,
        publisher: handlers.EventPublisher,
        rules: MachineRules,
        trusted_proxies: tuple[Network, ...],
        trace_sample_rate: float,
    ) -> None:
        self._secret = secret
        self._publisher = publisher
        self._rules = rules
        self._trusted = trusted_proxies
        self._sample = trace_sample_rate
        # Hits by route and status, and the time to answer them (the scrape reads them).
        self.stats = RequestStats("nudge_tracking_hits", "nudge_tracking_hit_seconds")

    @staticmethod
    def handles(scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return False
        return HotPaths.is_hot(scope["path"])

    @staticmethod
    def is_hot(path: str) -> bool:
        """``/o/<token>.gif`` and ``/c/<token>`` (the path without its query)."""
        return (path.startswith("/o/") and path.endswith(".gif")) or path.startswith("/c/")

    async def __call__(self, scope: Scope, send: Send) -> None:
        """The ASGI form (a request pipelined behind a slower one, in-process tests)."""
        client = scope.get("client")
        answer = self.answer(
            scope["method"], scope["path"], scope["headers"], client[0] if client else ""
        )
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": answer.headers}
        )
        await send({"type": "http.response.body", "body": answer.body})

    def answer(
        self, method: str, path: str, raw_headers: list[tuple[bytes, bytes]], peer: str
    ) -> Answer:
        """Verify, record (a GET, into the publisher's buffer) and answer: no I/O, nothing
        awaited, so the HTTP protocol can answer from its parser callback."""
        started = time.perf_counter()
        answer = self._traced_answer(method, path, raw_headers, peer)
        self.stats.observe(
            _OPEN_ROUTE if path.startswith("/o/") else _CLICK_ROUTE,
            _STATUS_TEXT[answer.status],
            time.perf_counter() - started,
        )
        return answer

    def _traced_answer(
        self, method: str, path: str, raw_headers: list[tuple[bytes, bytes]], peer: str
    ) -> Answer:
        headers = _headers(raw_headers)
        traceparent = headers.get("traceparent", "")
        if traceparent.endswith("-01") or (self._sample and random.random() < self._sample):
            token = context.attach(propagate.extract(headers))
            try:
                with tracer.start_as_current_span(
                    f"GET {path[:3]}{{token}}", kind=trace.SpanKind.SERVER
                ) as span:
                    return self._answer(method, path, headers, peer, span)
            finally:
                context.detach(token)
        return self._answer(method, path, headers, peer)

    def _answer(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        peer: str,
        span: trace.Span | None = None,
    ) -> Answer:
        """``span``: the sampled hit's span, named with the link's ids (unsampled hits pay
        nothing for that)."""
        is_open = path.startswith("/o/")
        token = path[3:-4] if is_open else path[3:]
        kind = LinkKind.OPEN if is_open else LinkKind.CLICK
        try:
            claims = verify(self._secret, token, kind)
        except InvalidLink as err:
            # Cheap on purpose: no Kafka, no I/O, the same answer whatever is wrong.
            log.debug("rejected a %s link: %s", kind.name.lower(), err)
            return _NOT_FOUND_ANSWER
        if span is not None:
            annotate(
                span,
                workspace_id=claims.workspace_id,
                contact_id=claims.contact_id,
                message_id=claims.message_id,
            )
        if method == "GET":  # a HEAD is a link checker's, not a reader's
            self._record(peer, headers, claims, is_open)
        if is_open:
            return _PIXEL_ANSWER
        return _redirect(claims.url.encode())  # is_web_url() held: printable, no CR/LF

    def _record(
        self, peer: str, headers: dict[str, str], claims: LinkClaims, is_open: bool
    ) -> None:
        try:
            forwarded = headers.get("x-forwarded-for", "")
            hit = handlers.hit(
                headers.get("user-agent", ""), client_address(peer, forwarded, self._trusted)
            )
            if is_open:
                handlers.record_open(self._publisher, self._rules, claims, hit)
            else:
                handlers.record_click(self._publisher, self._rules, claims, hit)
        except Exception:
            # The reader must still see the image or get where they were going.
            log.exception("could not record a hit on message %s", claims.message_id)


_WANTED = {
    b"user-agent": "user-agent",
    b"x-forwarded-for": "x-forwarded-for",
    b"traceparent": "traceparent",
    b"tracestate": "tracestate",
}


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The four headers the hot paths read (names are lower-case: ASGI's rule, and the
    protocol's)."""
    out: dict[str, str] = {}
    for name, value in raw:
        key = _WANTED.get(name)
        if key is not None:
            out[key] = value.decode("latin-1")
    return out
