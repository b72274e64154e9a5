"""The HTTP protocol of the tracking service: uvicorn's httptools protocol, which answers the
open pixel and the click redirect from its parser callback, without an ASGI request cycle.

Measured under ``hey`` (bench/RESULTS.md, "Issue 14: tracking"), a forged token (one failing
HMAC, no I/O) cost 170-230 µs of CPU per request through uvicorn's ASGI path: the request
cycle object, its task, the coroutine of the app, two ``send`` messages, the response
headers validated and encoded one by one. That was the whole budget of 5,000 requests/s on
a core. Yet the two hot paths need none of it: their work is synchronous (verify the token,
put the hit in the publisher's in-memory buffer, services/tracking/entrypoints/fast.py) and
their answers are fixed bytes or a redirect. So, when the request is a ``GET`` or ``HEAD``
of ``/o/<token>.gif`` or ``/c/<token>``, this protocol computes the answer when the message
is complete and writes it straight to the transport.

Everything else stays uvicorn's: parsing and its limits (httptools), keep-alive and its
timeout, graceful shutdown (an idle connection is closed, nothing is left in flight), and
every other path (unsubscribe, preference page, confirmation, ``/healthz``) goes to the
FastAPI app as before. The order of answers on a connection holds: a hot request arriving
while an ASGI request of the same connection is still being answered (pipelining), or while
the client is not reading (the transport's buffer is full), takes the ASGI path, which
queues behind it and honours the back-pressure; the app answers it with the same
:class:`HotPaths` code.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.tracking.entrypoints.fast import HotPaths

log = logging.getLogger(__name__)

_OPEN = b"/o/"
_CLICK = b"/c/"
_CLOSE = b"connection: close\r\n"
_SERVER_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


def protocol_for(state: Any) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's ``http`` setting; ``state`` is the app's state, whose
    ``hot_paths`` the app's lifespan sets (until then every request takes the ASGI path)."""

    class Protocol(TrackingHttpProtocol):
        app_state_holder = state

    return Protocol


class TrackingHttpProtocol(HttpToolsProtocol):
    app_state_holder: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (method, path, keep-alive) of the request being answered here, or None.
        self._hot: tuple[str, str, bool] | None = None
        # Date header bytes, rebuilt when uvicorn refreshes its default headers (every second).
        self._defaults: object = None
        self._defaults_raw = b""

    def on_message_begin(self) -> None:
        self._hot = None
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        hot = self._hot_request()
        if hot is None:
            super().on_headers_complete()
        else:
            self._hot = hot

    def _hot_request(self) -> tuple[str, str, bool] | None:
        """(method, path, keep-alive) when this request is answered here, else None."""
        url = self.url
        if not (url.startswith(_OPEN) or url.startswith(_CLICK)):
            return None
        if (self.cycle is not None and not self.cycle.response_complete) or self.pipeline:
            return None  # an answer of this connection is still on its way: keep the order
        if self.flow.write_paused or self.parser.should_upgrade():
            return None
        hot_paths = getattr(self.app_state_holder, "hot_paths", None)
        if hot_paths is None:
            return None  # the lifespan has not started the publisher yet
        method = self.parser.get_method()
        if method not in (b"GET", b"HEAD"):
            return None
        path = url.split(b"?", 1)[0]
        if b"%" in path or b"#" in path:
            return None  # a quoted path: uvicorn's unquoting applies
        decoded = path.decode("ascii", "replace")
        if not HotPaths.is_hot(decoded):
            return None
        version = self.parser.get_http_version()
        keep_alive = version != "1.0" and self.parser.should_keep_alive()
        return method.decode("ascii"), decoded, keep_alive

    def on_body(self, body: bytes) -> None:
        if self._hot is None:
            super().on_body(body)
        # A GET's body means nothing to the hot paths: dropped, never buffered.

    def on_message_complete(self) -> None:
        if self._hot is None:
            super().on_message_complete()
            return
        method, path, keep_alive = self._hot
        self._hot = None
        self._answer(method, path, keep_alive)

    def _answer(self, method: str, path: str, keep_alive: bool) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        hot_paths: HotPaths = self.app_state_holder.hot_paths
        try:
            answer = hot_paths.answer(
                method, path, self.headers, self.client[0] if self.client else ""
            )
        except Exception:
            log.exception("the %s answer failed", path[:3])
            transport.write(_SERVER_ERROR)
            transport.close()
            return
        defaults = self.server_state.default_headers
        if defaults is not self._defaults:  # the Date header changed
            self._defaults = defaults
            self._defaults_raw = b"".join(
                name + b": " + value + b"\r\n" for name, value in defaults
            )
        parts = [answer.head, self._defaults_raw]
        if not keep_alive:
            parts.append(_CLOSE)
        parts.append(b"\r\n")
        if method == "GET":
            parts.append(answer.body)
        transport.write(b"".join(parts))
        self.server_state.total_requests += 1
        if not keep_alive:
            transport.close()
            return
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
