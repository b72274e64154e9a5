"""Refuses request bodies above a size limit (413) before anything parses them.

A declared ``Content-Length`` above the limit is refused without reading a byte; otherwise
the body is read and counted as it streams (chunked uploads declare no length) and, once
complete and within the limit, handed to the app in one piece. A route may have a limit of
its own (``path_limits``: the event batch route takes up to 1,000 events), or stream its
body itself (``streamed_paths``: the bulk import counts its own bytes and is never
buffered).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.problems import Problem, too_large


class BodyLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        path_limits: Mapping[str, int] | None = None,
        streamed_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})
        self.streamed_paths = streamed_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.streamed_paths:
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope["path"], self.max_bytes)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                bad = Problem(400, "bad-request", "Bad request", "Content-Length is not a number")
                await bad.response()(scope, receive, send)
                return
            if int(declared) > max_bytes:
                await too_large(max_bytes).response()(scope, receive, send)
                return
        body = bytearray()
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; nobody to answer
            body += message.get("body", b"")
            more_body = message.get("more_body", False)
            if len(body) > max_bytes:
                await too_large(max_bytes).response()(scope, receive, send)
                return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
