"""Tracking's HTTP protocol (services/tracking/entrypoints/server.py) fed bytes directly, with
a transport that records what is written and whether it was closed: what the hot paths
answer, when the connection is closed, and what still goes to the app. (Over a real socket:
tests/integration/tracking/test_protocol.py.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from services.common import links
from services.tracking.domain.machine_opens import MachineRules
from services.tracking.entrypoints.fast import HotPaths
from services.tracking.entrypoints.server import protocol_for
from tests.support import eventually
from tests.unit.tracking.test_http import FakePublisher

SECRET = "unit-secret"
WS, MSG, CONTACT = (str(uuid.uuid4()) for _ in range(3))
PIXEL_PATH = links.sign_open(SECRET, WS, MSG, CONTACT, issued_at=1)
CLICK_PATH = links.sign_click(
    SECRET, WS, MSG, CONTACT, "https://shop.example/x", link_index=0, issued_at=1
)


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("203.0.113.9", 40000), "sockname": ("127.0.0.1", 8081)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class App:
    """Stands for the FastAPI app: counts what reaches it, answers 204."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def connect(
    publisher: FakePublisher, app: App
) -> tuple[asyncio.Protocol, RecordingTransport, ServerState]:
    state = SimpleNamespace(
        hot_paths=HotPaths(SECRET, publisher, MachineRules.build([], 2.0), (), 0.0)
    )
    config = uvicorn.Config(app, log_config=None, access_log=False, http=protocol_for(state))
    config.load()
    server_state = ServerState()
    server_state.default_headers = [(b"date", b"Tue, 01 Dec 2026 23:00:00 GMT")]
    protocol = config.http_protocol_class(config=config, server_state=server_state, app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport, server_state


def get(path: str, version: str = "1.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: t\r\nUser-Agent: ua\r\n{extra}\r\n".encode()


async def test_hits_are_answered_in_the_callback_and_keep_the_connection_open() -> None:
    publisher, app = FakePublisher(), App()
    protocol, transport, server_state = connect(publisher, app)
    protocol.data_received(get(PIXEL_PATH) + get(CLICK_PATH))
    # Answered before any task ran: no ASGI cycle, nothing reached the app.
    text = bytes(transport.written)
    assert text.startswith(b"HTTP/1.1 200 OK\r\ncontent-type: image/gif\r\n")
    assert b"date: Tue, 01 Dec 2026 23:00:00 GMT\r\n" in text
    assert b"\r\n\r\nGIF89a" in text
    assert b"HTTP/1.1 302 Found\r\nlocation: https://shop.example/x\r\n" in text
    assert b"connection: close" not in text
    assert not transport.closed
    assert app.paths == []
    assert [p[2].WhichOneof("payload") for p in publisher.published] == [
        "message_opened",
        "link_clicked",
    ]
    assert server_state.total_requests == 2
    for _, _, envelope in publisher.published:  # stamped now, as every envelope is
        event_id = uuid.UUID(envelope.event_id)  # a random (version 4) UUID, canonical text
        assert (event_id.version, event_id.variant) == (4, uuid.RFC_4122)
        assert str(event_id) == envelope.event_id
        assert abs(envelope.occurred_at.ToMicroseconds() / 1e6 - time.time()) < 60
        assert 0 <= envelope.occurred_at.nanos < 1_000_000_000


async def test_every_hit_has_an_event_id_of_its_own() -> None:
    publisher = FakePublisher()
    protocol, _, _ = connect(publisher, App())
    for _ in range(500):
        protocol.data_received(get(PIXEL_PATH))
    ids = {envelope.event_id for _, _, envelope in publisher.published}
    assert len(ids) == 500
    assert all(uuid.UUID(i).version == 4 for i in ids)


async def test_connection_close_and_http_1_0_close_after_the_answer() -> None:
    for request in (get(PIXEL_PATH, extra="Connection: close\r\n"), get(CLICK_PATH, "1.0")):
        protocol, transport, _ = connect(FakePublisher(), App())
        protocol.data_received(request)
        assert b"\r\nconnection: close\r\n" in bytes(transport.written)
        assert transport.closed


async def test_other_paths_and_posts_go_to_the_app() -> None:
    publisher, app = FakePublisher(), App()
    protocol, transport, _ = connect(publisher, app)
    protocol.data_received(get("/healthz"))
    await eventually(lambda: app.paths == ["/healthz"])
    assert b"HTTP/1.1 204 No Content\r\n" in bytes(transport.written)
    protocol.data_received(
        f"POST {CLICK_PATH} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".encode()
    )
    await eventually(lambda: app.paths == ["/healthz", CLICK_PATH])
    assert publisher.published == []
