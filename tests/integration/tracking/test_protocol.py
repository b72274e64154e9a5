"""The open pixel and the click redirect are answered by tracking's HTTP protocol itself
(services/tracking/entrypoints/server.py), over a real socket: keep-alive, pipelining mixed
with the FastAPI routes, ``Connection: close`` and HTTP/1.0, and every GET hit on Kafka."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer

from services.common import links
from tests.integration.tracking.conftest import LINK_SECRET, HttpService
from tests.integration.tracking.test_fast_path import AN_HOUR_AGO, BROWSER, collect, ids

TIMEOUT_S = 20.0  # generous: a loaded machine; a missing answer fails, it does not hang


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@contextlib.asynccontextmanager
async def connection(
    service: HttpService,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    port = int(service.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def request(method: str, path: str, *, version: str = "1.1", extra: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/{version}\r\nHost: tracking.test\r\n"
        f"User-Agent: {BROWSER}\r\n{extra}\r\n"
    ).encode()


async def read_answer(reader: asyncio.StreamReader, *, head: bool = False) -> Answer:
    """One response: status line, headers, and a ``content-length`` body (none for HEAD)."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
    status_line, *lines = raw.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT_S)
    return Answer(int(status_line.split(" ")[1]), headers, body)


def signed(workspace_id: str, message_id: str, contact_id: str) -> tuple[str, str, str]:
    url = "https://shop.example/sale"
    pixel = links.sign_open(
        LINK_SECRET, workspace_id, message_id, contact_id, issued_at=AN_HOUR_AGO
    )
    click = links.sign_click(
        LINK_SECRET, workspace_id, message_id, contact_id, url, link_index=0, issued_at=AN_HOUR_AGO
    )
    return pixel, click, url


async def test_pipelined_hits_behind_an_app_request_are_answered_in_order(
    tracking_service: HttpService, consumer: AIOKafkaConsumer
) -> None:
    """``/healthz`` (the FastAPI app, which awaits a Kafka metadata request) is answered
    later than the hits written after it could be: the answers must still come in the order
    of the requests."""
    workspace_id, message_id, contact_id = ids()
    pixel, click, url = signed(workspace_id, message_id, contact_id)
    forged = links.sign_open("not-the-secret", workspace_id, message_id, contact_id)
    async with connection(tracking_service) as (reader, writer):
        writer.write(
            request("GET", "/healthz")
            + request("GET", pixel)
            + request("GET", click)
            + request("HEAD", pixel)
            + request("GET", forged)
            + request("GET", "/healthz")
            + request("GET", click + "?utm=x")
        )
        await writer.drain()
        health = await read_answer(reader)
        image = await read_answer(reader)
        redirect = await read_answer(reader)
        checked = await read_answer(reader, head=True)
        refused = await read_answer(reader)
        health_again = await read_answer(reader)
        with_query = await read_answer(reader)
    assert health.status == 200 and b'"kafka"' in health.body
    assert (image.status, image.headers["content-type"], image.body[:6]) == (
        200,
        "image/gif",
        b"GIF89a",
    )
    assert (redirect.status, redirect.headers["location"]) == (302, url)
    assert (checked.status, checked.headers["content-type"], checked.body) == (
        200,
        "image/gif",
        b"",
    )
    assert (refused.status, refused.headers["content-type"]) == (404, "application/problem+json")
    assert health_again.status == 200 and b'"kafka"' in health_again.body
    assert (with_query.status, with_query.headers["location"]) == (302, url)
    # The GETs were recorded (the HEAD is a link checker's, the forged one nobody's).
    events = await collect(consumer, message_id, 3)
    assert sorted(e.WhichOneof("payload") for e in events) == [
        "link_clicked",
        "link_clicked",
        "message_opened",
    ]


async def test_keep_alive_serves_many_hits_on_one_connection_and_close_is_honoured(
    tracking_service: HttpService, consumer: AIOKafkaConsumer
) -> None:
    workspace_id, message_id, contact_id = ids()
    pixel, click, url = signed(workspace_id, message_id, contact_id)
    async with connection(tracking_service) as (reader, writer):
        for n in range(40):
            writer.write(request("GET", pixel if n % 2 else click))
            answer = await read_answer(reader)
            assert answer.status == (200 if n % 2 else 302)
            assert "date" in answer.headers  # as uvicorn's own answers carry it
            assert answer.headers["cache-control"] == "no-store, max-age=0"
            assert "connection" not in answer.headers
        # A request after the one that said "close" is not answered: the server closes.
        writer.write(request("GET", pixel, extra="Connection: close\r\n") + request("GET", pixel))
        last = await read_answer(reader)
        assert (last.status, last.headers["connection"]) == (200, "close")
        assert await asyncio.wait_for(reader.read(), TIMEOUT_S) == b""
    async with connection(tracking_service) as (reader, writer):
        # HTTP/1.0 without keep-alive: one answer, then the server closes.
        writer.write(request("GET", click, version="1.0") + request("GET", click, version="1.0"))
        old = await read_answer(reader)
        assert (old.status, old.headers["location"], old.headers["connection"]) == (
            302,
            url,
            "close",
        )
        assert await asyncio.wait_for(reader.read(), TIMEOUT_S) == b""
    events = await collect(consumer, message_id, 42)
    assert len({e.event_id for e in events}) == 42
