"""Helpers every test may use: waiting for a condition with a deadline, free ports, ids."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], T | Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Poll ``probe`` until it returns something truthy (or stops raising AssertionError);
    returns that value. Fails with the last error when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            last = None
        except AssertionError as err:
            last = err
        if time.monotonic() >= deadline:
            if last is not None:
                raise last
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(probe: Callable[[], object], *, timeout: float = 10.0) -> None:
    """``eventually`` for synchronous code (threads, child processes): poll ``probe`` until it
    returns something truthy; AssertionError when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


async def fetchval(database_url: str, query: str, *args: object) -> object:
    """One value from PostgreSQL, on a connection of its own (for probes in ``eventually``)."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def triggers_consumed(database_url: str, event_id: str) -> bool:
    """The trigger engine has handled the shop event ``event_id`` (its idempotency record)."""
    return bool(
        await fetchval(
            database_url,
            "SELECT 1 FROM triggers.processed_events WHERE consumer = 'triggers' AND event_id = $1",
            event_id,
        )
    )


async def outbox_drained(database_url: str, schema: str, key: str) -> bool:
    """No row for ``key`` waits in ``schema``'s outbox: what it held is acked by Kafka."""
    return not await fetchval(
        database_url, f"SELECT 1 FROM {schema}.outbox WHERE key = $1 LIMIT 1", key.encode()
    )


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on a free loopback port, answering with ``handler`` in a thread of
    its own; yields its base URL (for tests of clients: a service's API acted out)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
