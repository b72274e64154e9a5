"""How every service process starts and stops: one pattern for all of them.

    run_service("contacts", settings, start)       # in services/<name>/__main__.py

``start(service)`` is the service's start-up, written as a list of steps. Each step opens
one thing and hands its closing to ``service`` at once (:meth:`Service.push`,
:meth:`Service.enter`), starts background work with :meth:`Service.spawn`, and listens
with :meth:`Service.serve_grpc` or :meth:`Service.serve_http`. Everything lives on one
``AsyncExitStack``, so:

- a start step that fails closes what the earlier steps opened, in reverse order, and the
  process exits 1 with the error in the log (no half-started service, no leaked task or
  connection);
- SIGTERM or SIGINT closes everything in the same reverse order (the listener first, so no
  new request arrives while the pool it needs closes) and the process exits 0;
- a background task (consumer, relay, dependency monitor) that ends on its own is a dead
  service that would still look alive: it stops the process, which exits 1 so that the
  supervisor restarts it.

Before anything opens, :func:`run_service` refuses development secrets outside development
mode (services/common/config.py). Tests run the same start-up in-process with
:func:`serve`, which does all of the above except signals and exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any, TypeVar

import grpc
import uvloop

from services.common import clock, metrics
from services.common.auth import ApiKeyVerifier
from services.common.config import BaseServiceSettings, insecure_secrets
from services.common.dependencies import Check, DependencyMonitor
from services.common.grpc_server import AuthPolicy, start_server_with_health
from services.common.logs import setup_logging
from services.common.tracing import setup_tracing

log = logging.getLogger(__name__)

T = TypeVar("T")
Servicers = list[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]]
GRPC_GRACE_S = 5.0


class BackgroundTaskEnded(RuntimeError):
    """A background task ended while the service was meant to be running."""


class InsecureSettings(RuntimeError):
    """A secret holds a development value (or none) outside development mode."""


def configure(name: str, settings: BaseServiceSettings) -> None:
    setup_logging(name, settings.log_level, settings.log_format)
    setup_tracing(name, settings.otlp_endpoint, settings.traces_dir)
    if settings.clock_offset_s:
        clock.set_clock(clock.SystemClock(timedelta(seconds=settings.clock_offset_s)))


def refuse_insecure_secrets(name: str, settings: BaseServiceSettings) -> None:
    """Raise :class:`InsecureSettings` naming every unfit secret's variable, unless
    ``NUDGE_DEV_MODE`` is set. The development values are public (in the code, the compose
    file, the README), and the internal token lets its holder act as any workspace."""
    if settings.dev_mode:
        return
    problems = insecure_secrets(settings)
    if problems:
        raise InsecureSettings(
            f"{name} refuses to start: {'; '.join(problems)}. Set a random secret (e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or "
            "NUDGE_DEV_MODE=1 on a development machine."
        )


class Service:
    """What a start-up opened, closed in reverse order when the service stops."""

    def __init__(self, name: str, settings: BaseServiceSettings, stack: contextlib.AsyncExitStack):
        self.name = name
        self.settings = settings
        self.tasks: list[asyncio.Task[None]] = []
        self._stack = stack

    def push(self, close: Callable[..., Awaitable[object]], *args: Any) -> None:
        """Call ``close(*args)`` when the service stops (or a later start step fails)."""
        self._stack.push_async_callback(close, *args)

    async def enter(self, resource: AbstractAsyncContextManager[T]) -> T:
        """Enter ``resource`` now, exit it when the service stops."""
        return await self._stack.enter_async_context(resource)

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``work`` in the background, supervised: if it ends while the service runs,
        the service stops. Cancelled (and awaited) when the service stops."""
        task = asyncio.create_task(work, name=name)
        self.tasks.append(task)
        self._stack.push_async_callback(_cancel, task)
        return task

    async def serve_grpc(
        self,
        *,
        port: int,
        servicers: Servicers,
        verifier: ApiKeyVerifier,
        internal_token: str,
        policy: AuthPolicy | None = None,
        dependencies: dict[str, Check] | None = None,
    ) -> grpc.aio.Server:
        """Listen on ``bind_host:port``; report each of ``dependencies`` (name -> check)
        through the health service, once now and then every ``health_interval_s``."""
        server, health = await start_server_with_health(
            port=port,
            servicers=servicers,
            verifier=verifier,
            internal_token=internal_token,
            policy=policy,
            host=self.settings.bind_host,
            service=self.name,
        )
        self.push(server.stop, GRPC_GRACE_S)
        monitor = DependencyMonitor(
            dependencies or {},
            health,
            [name for _, _, name in servicers],
            interval_s=self.settings.health_interval_s,
            timeout_s=self.settings.dependency_timeout_s,
        )
        await monitor.check_once()
        self.spawn(monitor.run(), "dependency-monitor")
        log.info("%s serving gRPC on %s:%d", self.name, self.settings.bind_host, port)
        return server

    async def serve_metrics(self, port: int) -> None:
        """Prometheus' text format on ``bind_host:port`` (services/common/metrics.py)."""
        server = await metrics.serve_metrics(self.settings.bind_host, port)
        self.push(_close_server, server)
        log.info("%s serving metrics on %s:%d", self.name, self.settings.bind_host, port)

    async def serve_http(
        self, app: Any, port: int, *, proxy_headers: bool = True, http: Any = "auto"
    ) -> None:
        """Serve the ASGI ``app`` on ``bind_host:port``. The socket is bound here, so a busy
        port fails this start step; the app's lifespan runs before this returns, and a
        failing lifespan fails it too. ``proxy_headers=False`` leaves X-Forwarded-For to the
        app (tracking trusts it from configured proxies only); ``http`` is uvicorn's protocol
        (tracking's answers its hot paths without an ASGI cycle)."""
        import uvicorn

        from services.common.http_server import QuietSignalsServer

        sock = bind_socket(self.settings.bind_host, port)
        self.push(_close_socket, sock)
        server = QuietSignalsServer(
            uvicorn.Config(
                app,
                log_config=None,
                access_log=False,
                proxy_headers=proxy_headers,
                server_header=False,
                http=http,
                lifespan="on",
            )
        )

        async def serving() -> None:
            try:
                await server.serve(sockets=[sock])
            except SystemExit as exit_:  # uvicorn's answer to a failed lifespan start-up
                raise RuntimeError(f"the HTTP app failed to start (exit {exit_.code})") from None

        task = asyncio.create_task(serving(), name="http-server")

        async def stop_serving() -> None:
            server.should_exit = True
            # An error it ended with was logged when it ended (until_stopped).
            with contextlib.suppress(Exception):
                await task

        self.push(stop_serving)
        while not server.started:
            if task.done():
                task.result()  # raises why it stopped
                raise RuntimeError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        self.tasks.append(task)
        log.info("%s serving HTTP on %s:%d", self.name, self.settings.bind_host, port)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def _close_socket(sock: socket.socket) -> None:
    sock.close()


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 5)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def until_stopped(
    stop: asyncio.Event, tasks: list[asyncio.Task[None]]
) -> asyncio.Task[None] | None:
    """Wait for ``stop``, or for a background task to end on its own (returned): a service
    whose consumer died must exit so the supervisor restarts it, not look healthy."""
    waiting = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    for task in tasks:
        if task in done:
            log.error(
                "background task %s ended; stopping",
                task.get_name(),
                exc_info=None if task.cancelled() else task.exception(),
            )
            return task
    return None


async def serve(
    name: str,
    settings: BaseServiceSettings,
    stop: asyncio.Event,
    start: Callable[[Service], Awaitable[None]],
    started: Callable[[], None] | None = None,
) -> None:
    """Run ``start``, call ``started`` (if any), serve until ``stop`` is set or a background
    task ends, then close everything in reverse order. Raises what a start step raised, or
    :class:`BackgroundTaskEnded`."""
    ended: asyncio.Task[None] | None = None
    async with contextlib.AsyncExitStack() as stack:
        service = Service(name, settings, stack)
        if settings.metrics_port:
            await service.serve_metrics(settings.metrics_port)
        token = metrics.current_service.set(name)
        try:
            await start(service)
        finally:
            metrics.current_service.reset(token)
        log.info("%s started", name)
        if started is not None:
            started()
        ended = await until_stopped(stop, service.tasks)
        log.info("%s stopping", name)
    log.info("%s stopped", name)
    if ended is not None:
        raise BackgroundTaskEnded(f"{name}: background task {ended.get_name()} ended")


# Young objects collected every GC_YOUNG_THRESHOLD allocations net of frees instead of
# Python's 700 (bench/RESULTS.md, issue 16).
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """After start-up: what exists now (modules, classes, the service's clients and caches)
    lives as long as the process, so it is moved out of the collector's sight
    (``gc.freeze``), and young objects are collected less often.

    A service's work makes and drops many small objects (records, rows, protobuf messages),
    and with Python's defaults every few hundred of them start a collection, some of which
    traverse the whole heap again: 8 % of the trigger engine's handler in a native profile.
    The cost is a little memory: garbage that start-up left in cycles is collected first,
    but an object made during start-up that later becomes part of a garbage cycle (a first
    connection replaced after an outage) stays; objects made later are collected as
    before."""
    if os.environ.get("NUDGE_GC_DEFAULTS"):  # for measuring against Python's defaults
        return
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def run_service(
    name: str,
    settings: BaseServiceSettings,
    start: Callable[[Service], Awaitable[None]],
) -> None:
    """The process: logs and traces, the secrets check, signals, :func:`serve`, exit code
    (0 after SIGTERM or SIGINT, 1 after a failed start or a dead background task)."""
    configure(name, settings)
    try:
        refuse_insecure_secrets(name, settings)
    except InsecureSettings as err:
        log.critical("%s", err)
        sys.stderr.write(f"{err}\n")
        sys.exit(2)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("starting %s", name)
        await serve(name, settings, stop, start, started=settle_heap)

    try:
        uvloop.run(runner())
    except BackgroundTaskEnded:
        sys.exit(1)
    except Exception:
        log.exception("%s failed", name)
        sys.exit(1)
