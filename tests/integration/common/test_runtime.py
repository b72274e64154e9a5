"""The common start-up (services/common/runtime.py), in-process, for every service: a start
step that fails closes what the earlier steps opened, so nothing is left behind (no
asyncio task, no PostgreSQL connection, no listening socket).

Each service is started with its real ``serve`` on the real infrastructure, with its port
already taken (its last start step fails) or, for tracking, with Kafka unreachable (its
app's lifespan fails after the socket is bound). Its database is reached through a proxy
that counts the connections, and its tasks are told from other tests' (session services
run in this process too) by a context variable set only in the context it starts in,
which the tasks it creates inherit.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests.integration.common.tcp_proxy import Proxy
from tests.support import eventually, free_port

STARTED_HERE: contextvars.ContextVar[bool] = contextvars.ContextVar("started_here", default=False)

# Each one's schema is named after it.
GRPC_SERVICES = ["contacts", "segmentation", "campaigns", "delivery", "triggers"]


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


async def fails_cleanly(
    serve: Callable[[Any, asyncio.Event], Awaitable[None]], settings: Any, *, starts_tasks: bool
) -> BaseException:
    """Run ``serve`` until it fails; returns the error once no task it started is left.
    ``starts_tasks``: the step that fails comes after some task was started."""
    loop = asyncio.get_running_loop()
    previous = loop.get_task_factory()
    started: set[asyncio.Future[Any]] = set()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> Any:
        task = (
            previous(loop, coro, **options)
            if previous
            else asyncio.Task(coro, loop=loop, **options)
        )
        if STARTED_HERE.get():  # called in the context of the code creating the task
            started.add(task)
        return task

    loop.set_task_factory(factory)
    try:
        context = contextvars.copy_context()
        context.run(STARTED_HERE.set, True)
        running = loop.create_task(serve(settings, asyncio.Event()), context=context)
        with pytest.raises(Exception) as failed:
            await asyncio.wait_for(running, timeout=60)
    finally:
        loop.set_task_factory(previous)
    assert bool(started) == starts_tasks, [t for t in started]

    def leftovers() -> set[str]:
        return {
            t.get_name() if isinstance(t, asyncio.Task) else repr(t)
            for t in started
            if not t.done()
        }

    await eventually(lambda: not leftovers(), timeout=10)
    return failed.value


@pytest.fixture
async def database() -> Any:
    proxy = Proxy.for_url(os.environ["DATABASE_URL"])
    await proxy.start()
    yield proxy
    await proxy.cut()


@pytest.mark.parametrize("name", GRPC_SERVICES)
async def test_a_failing_start_step_closes_what_the_earlier_ones_opened(
    name: str, infra: dict[str, str], database: Proxy
) -> None:
    """Pool, Kafka clients, relay and consumer tasks are open when the gRPC port turns
    out to be taken; all are closed again."""
    bootstrap = __import__(f"services.{name}.bootstrap", fromlist=["serve"])
    config = __import__(f"services.{name}.config", fromlist=["Settings"])
    database_url = database.url_through(os.environ["DATABASE_URL"])
    with port_taken() as port:
        settings = config.Settings(grpc_port=port, database_url=database_url)
        error = await fails_cleanly(bootstrap.serve, settings, starts_tasks=True)
    assert isinstance(error, OSError) and str(port) in str(error), repr(error)
    await eventually(lambda: database.open_connections == 0, timeout=10)


async def test_tracking_closes_its_socket_when_its_app_fails_to_start(
    infra: dict[str, str],
) -> None:
    from services.tracking.bootstrap import serve
    from services.tracking.config import Settings

    port = free_port()
    # Not a dead Kafka: tracking starts without Kafka since issue 14 (a broker outage must
    # not stop the pixel and the redirects). A Redis URL it cannot use fails its lifespan.
    settings = Settings(http_port=port, redis_url="nope://127.0.0.1:1/0")
    error = await fails_cleanly(serve, settings, starts_tasks=True)
    assert "failed to start" in str(error), repr(error)
    assert can_bind(port), "the listening socket was left open"


@pytest.mark.parametrize("name", ["tracking", "gateway"])
async def test_an_http_service_on_a_taken_port_fails_at_once_leaving_nothing(
    name: str, infra: dict[str, str]
) -> None:
    bootstrap = __import__(f"services.{name}.bootstrap", fromlist=["serve"])
    config = __import__(f"services.{name}.config", fromlist=["Settings"])
    with port_taken() as port:
        settings = config.Settings(http_port=port)
        error = await fails_cleanly(bootstrap.serve, settings, starts_tasks=False)
    assert isinstance(error, OSError), repr(error)
