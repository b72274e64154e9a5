"""The common start-up (services/common/runtime.py), in-process, for every service: a start
step that fails closes what the earlier steps opened, so nothing is left behind (no
asyncio task, no PostgreSQL connection, no listening socket).

Each service is started with its real ``serve`` on the real infrastructure, with its port
already taken (its last start step fails) or, for tracking, with Kafka unreachable (its
app's lifespan fails after the socket is bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from tests.support import eventually, free_port


@contextlib.contextmanager
def port_taken() -> Iterator[int]:
    """A port on 127.0.0.1 that something else listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def can_bind(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def pool_connections_since(schema: str, since: datetime) -> int:
    """Connections of a service's pool (application_name nudge-<schema>, db.create_pool)
    opened since ``since``."""
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND backend_start >= $2",
            f"nudge-{schema}",
            since,
        )
        return count
    finally:
        await conn.close()


async def database_now() -> datetime:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        now: datetime = await conn.fetchval("SELECT now()")
        return now
    finally:
        await conn.close()


def grpc_service(name: str) -> Callable[[int], tuple[Any, Any]]:
    def build(port: int) -> tuple[Any, Any]:
        bootstrap = __import__(f"services.{name}.bootstrap", fromlist=["serve"])
        config = __import__(f"services.{name}.config", fromlist=["Settings"])
        return bootstrap.serve, config.Settings(grpc_port=port)

    return build


# Each one's schema is named after it.
GRPC_SERVICES = ["contacts", "segmentation", "campaigns", "delivery", "triggers"]


async def fails_cleanly(
    serve: Callable[[Any, asyncio.Event], Awaitable[None]], settings: Any
) -> BaseException:
    """Run ``serve`` until it fails; returns the error after checking no task outlived it."""
    before = asyncio.all_tasks()
    with pytest.raises(Exception) as failed:
        await asyncio.wait_for(serve(settings, asyncio.Event()), timeout=60)

    def leftovers() -> set[str]:
        return {t.get_name() for t in asyncio.all_tasks() - before if not t.done()}

    await eventually(lambda: not leftovers(), timeout=10)
    return failed.value


@pytest.mark.parametrize("name", GRPC_SERVICES)
async def test_a_failing_start_step_closes_what_the_earlier_ones_opened(
    name: str, infra: dict[str, str]
) -> None:
    """Pool, Kafka clients, relay and consumer tasks are open when the gRPC port turns
    out to be taken; all are closed again."""
    since = await database_now()
    with port_taken() as port:
        serve, settings = grpc_service(name)(port)
        error = await fails_cleanly(serve, settings)
    assert isinstance(error, OSError) and str(port) in str(error), repr(error)

    async def pool_closed() -> bool:
        return await pool_connections_since(name, since) == 0

    await eventually(pool_closed, timeout=10)


async def test_tracking_closes_its_socket_when_its_app_fails_to_start(
    infra: dict[str, str],
) -> None:
    from services.tracking.bootstrap import serve
    from services.tracking.config import Settings

    port = free_port()
    dead_kafka = f"127.0.0.1:{free_port()}"
    settings = Settings(http_port=port, kafka_bootstrap_servers=dead_kafka)
    error = await fails_cleanly(serve, settings)
    assert "failed to start" in str(error), repr(error)
    assert can_bind(port), "the listening socket was left open"


@pytest.mark.parametrize("name", ["tracking", "gateway"])
async def test_an_http_service_on_a_taken_port_fails_at_once_leaving_nothing(
    name: str, infra: dict[str, str]
) -> None:
    bootstrap = __import__(f"services.{name}.bootstrap", fromlist=["serve"])
    config = __import__(f"services.{name}.config", fromlist=["Settings"])
    with port_taken() as port:
        error = await fails_cleanly(bootstrap.serve, config.Settings(http_port=port))
    assert isinstance(error, OSError), repr(error)
