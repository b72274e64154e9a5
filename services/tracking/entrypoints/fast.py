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
from typing import Any

from opentelemetry import context, propagate, trace

from services.common.links import InvalidLink, LinkClaims, LinkKind, verify
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

    @staticmethod
    def handles(scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            return False
        path: str = scope["path"]
        return (path.startswith("/o/") and path.endswith(".gif")) or path.startswith("/c/")

    async def __call__(self, scope: Scope, send: Send) -> None:
        headers = _headers(scope)
        traceparent = headers.get("traceparent", "")
        if traceparent.endswith("-01") or (self._sample and random.random() < self._sample):
            token = context.attach(propagate.extract(headers))
            try:
                with tracer.start_as_current_span(
                    f"GET {scope['path'][:3]}{{token}}", kind=trace.SpanKind.SERVER
                ):
                    await self._answer(scope, headers, send)
            finally:
                context.detach(token)
        else:
            await self._answer(scope, headers, send)

    async def _answer(self, scope: Scope, headers: dict[str, str], send: Send) -> None:
        path: str = scope["path"]
        is_open = path.startswith("/o/")
        token = path[3:-4] if is_open else path[3:]
        kind = LinkKind.OPEN if is_open else LinkKind.CLICK
        try:
            claims = verify(self._secret, token, kind)
        except InvalidLink as err:
            # Cheap on purpose: no Kafka, no I/O, the same answer whatever is wrong.
            log.debug("rejected a %s link: %s", kind.name.lower(), err)
            await _respond(send, 404, _NOT_FOUND_HEADERS, _NOT_FOUND)
            return
        if scope["method"] == "GET":  # a HEAD is a link checker's, not a reader's
            self._record(scope, headers, claims, is_open)
        if is_open:
            await _respond(send, 200, _PIXEL_HEADERS, PIXEL)
        else:
            location = claims.url.encode()  # is_web_url() held: printable, no CR/LF
            await _respond(
                send, 302, [(b"location", location), (b"content-length", b"0"), *_NO_STORE], b""
            )

    def _record(
        self, scope: Scope, headers: dict[str, str], claims: LinkClaims, is_open: bool
    ) -> None:
        try:
            client = scope.get("client")
            peer = client[0] if client else ""
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


def _headers(scope: Scope) -> dict[str, str]:
    wanted = ("user-agent", "x-forwarded-for", "traceparent", "tracestate")
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        if key in wanted:
            out[key] = value.decode("latin-1")
    return out


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
