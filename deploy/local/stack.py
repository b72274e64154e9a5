"""The whole local infrastructure in one object: PostgreSQL, Redis, Kafka, an SMTP sink.

    stack = LocalStack(ports="free", fast=True, persistent=False)   # tests
    env = stack.start()        # {"DATABASE_URL": ..., "KAFKA_BOOTSTRAP_SERVERS": ..., ...}
    ...
    stack.stop()

A part whose variable is already set (``DATABASE_URL``, ``REDIS_URL``,
``KAFKA_BOOTSTRAP_SERVERS``, ``SMTP_URL``) is not started: the value is passed through, so
the same code runs against docker compose, CI services or a developer's own PostgreSQL.
The parts start concurrently (Kafka's JVM is the slowest); :meth:`LocalStack.start` is a
plain blocking call, usable from scripts, pytest fixtures and the supervisor alike, and
interruptible: Ctrl-C (or SIGTERM) while the parts start stops them at once.

One stack at a time per state directory: :meth:`LocalStack.start` takes an exclusive
``flock`` on ``state_dir/run/lock`` and holds it until :meth:`LocalStack.stop`; the kernel
releases it when the process dies, however it dies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from deploy.local import paths
from deploy.local.kafka import start_kafka
from deploy.local.postgres import read_home, remove_home, start_postgres
from deploy.local.procs import (
    PortInUse,
    ProcessRegistry,
    StartInterrupted,
    exit_on_sigterm,
    pick_free_ports,
    reap_dead_sessions,
    reap_stale,
    session_record,
)
from deploy.local.redis import start_redis
from deploy.local.smtp_sink import start_smtp_sink

T = TypeVar("T")

LOCAL_SINK_DOMAIN_LIMITS = '{"default": {"max_connections": 16, "per_second": 5000}}'
PARTS = ("postgres", "redis", "kafka", "smtp")
# The variable that, when set, means "this part runs elsewhere".
PART_VARIABLE = {
    "postgres": "DATABASE_URL",
    "redis": "REDIS_URL",
    "kafka": "KAFKA_BOOTSTRAP_SERVERS",
    "smtp": "SMTP_URL",
}
FIXED_PORTS: dict[str, int] = {
    "postgres": 54329,
    "redis": 63799,
    "kafka": 19092,
    "kafka_controller": 19093,
    "smtp": 2525,
}
# Where `make run` and `make infra` read another port than the fixed one (a second run
# beside the first, the test of `make run` itself).
PORT_VARIABLES = {
    "postgres": "NUDGE_POSTGRES_PORT",
    "redis": "NUDGE_REDIS_PORT",
    "kafka": "NUDGE_KAFKA_PORT",
    "kafka_controller": "NUDGE_KAFKA_CONTROLLER_PORT",
    "smtp": "NUDGE_SMTP_PORT",
}
# The ports each part listens on (keys of FIXED_PORTS).
PART_PORTS = {
    "postgres": ("postgres",),
    "redis": ("redis",),
    "kafka": ("kafka", "kafka_controller"),
    "smtp": ("smtp",),
}


def run_sync(coro: Coroutine[Any, Any, T], stop: threading.Event | None = None) -> T:
    """Run a coroutine to completion from synchronous code, even when the calling thread
    has an event loop set or running (pytest-asyncio): in a thread of its own.

    Interruptible: when the waiting thread gets an exception (KeyboardInterrupt from
    Ctrl-C or SIGTERM, ``Interrupted`` in ``make run``), ``stop`` is set and the coroutine
    cancelled, and the exception is raised once the coroutine has unwound, which takes
    moments instead of the time its readiness loops would wait."""
    started: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Task[T]]]
    started = concurrent.futures.Future()

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        started.set_result((asyncio.get_running_loop(), task))
        return await coro

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nudge-stack")
    future = pool.submit(asyncio.run, main())
    try:
        return future.result()
    except BaseException:
        if not future.done():
            if stop is not None:
                stop.set()
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop, task = started.result()
                loop.call_soon_threadsafe(task.cancel)
        raise
    finally:
        pool.shutdown(wait=True)


def fixed_ports(environ: Mapping[str, str]) -> dict[str, int]:
    """:data:`FIXED_PORTS`, each overridden by its variable of :data:`PORT_VARIABLES`."""
    ports = dict(FIXED_PORTS)
    for part, variable in PORT_VARIABLES.items():
        value = environ.get(variable, "").strip()
        if value:
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise ValueError(f"{variable}={value!r}: expected a TCP port number")
            ports[part] = int(value)
    return ports


def parts_to_start(environ: Mapping[str, str], parts: tuple[str, ...] = PARTS) -> list[str]:
    return [part for part in parts if not environ.get(PART_VARIABLE[part])]


class LocalStack:
    """Starts the infrastructure parts that are not configured already.

    ``state_dir``: logs, pid records and (``persistent``) data; default ``.nudge``.
    ``ports``: "fixed" (``make run``: PostgreSQL 54329, Redis 63799, Kafka 19092/19093,
    SMTP 2525), "free" (tests), or a mapping overriding some of the fixed ones.
    ``fast``: trade durability for speed (PostgreSQL without fsync); for tests.
    ``persistent``: keep data under ``state_dir/data`` across runs; otherwise it lives in a
    temporary directory removed by :meth:`stop`. Kafka's jars are always cached in
    ``cache_dir`` (default ``.nudge/cache``), so tests do not download them every session.
    ``environ``: where to look for already-configured parts (default ``os.environ``).
    ``record``: where the pids of the parts are kept for the next start to reap, should
    this process be SIGKILLed: ``state_dir/run/stack.json`` for the default state directory
    (``make run``), else a record in the fixed sessions folder (tests, benchmarks: their
    temporary state directory is never seen again).
    """

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        ports: Literal["fixed", "free"] | Mapping[str, int] = "fixed",
        fast: bool = False,
        persistent: bool = True,
        cache_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        parts: tuple[str, ...] = PARTS,
        record: Path | None = None,
    ) -> None:
        self.state_dir = (state_dir or paths.state_dir()).resolve()
        self.cache_dir = cache_dir or paths.cache_dir()
        self.fast = fast
        self.persistent = persistent
        self.environ = dict(os.environ if environ is None else environ)
        self.parts = parts
        # Ports we picked may be picked again when a part finds its own taken meanwhile.
        self.picked_ports = ports == "free"
        if ports == "free":
            self.ports = pick_free_ports(FIXED_PORTS)
        elif ports == "fixed":
            self.ports = dict(FIXED_PORTS)
        else:
            self.ports = {**FIXED_PORTS, **ports}
        self.logs_dir = paths.logs_dir(self.state_dir)
        if record is None:
            if self.state_dir == paths.state_dir():
                record = self.state_dir / "run" / "stack.json"
            else:
                record = session_record("stack")
        self.registry = ProcessRegistry(record=record)
        # Set to interrupt start-up: checked before each spawn and in readiness loops.
        self.stopping = self.registry.stopping
        self.env: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        # What a user must not miss (Kafka fell back to Tansu): for the summary.
        self.warnings: list[str] = []
        self._data_root: Path | None = None
        self._temporary_data = False
        self._lock_fd: int | None = None  # holds the flock on state_dir/run/lock

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> dict[str, str]:
        """Start what is missing; returns the variables the services need. Blocking."""
        exit_on_sigterm()
        self.stopping.clear()
        try:
            return run_sync(self.astart(), self.stopping)
        except BaseException:
            self.stop()
            raise

    async def astart(self) -> dict[str, str]:
        self._claim_state_dir()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        if self.persistent:
            self._data_root = self.state_dir / "data"
        else:
            # Short, so that PostgreSQL's unix socket path fits its 107 bytes.
            self._data_root = Path(tempfile.mkdtemp(prefix="nudge-data-"))
            self._temporary_data = True
            self.registry.add_leftover(self._data_root)
        env = {
            variable: self.environ[variable]
            for variable in (*PART_VARIABLE.values(), "NUDGE_KAFKA_KIND", "MAILPIT_URL")
            if self.environ.get(variable)
        }
        if "KAFKA_BOOTSTRAP_SERVERS" in env:
            env.setdefault("NUDGE_KAFKA_KIND", "external")
        starters: dict[str, Callable[[], Awaitable[dict[str, str]]]] = {
            "postgres": self._start_postgres,
            "redis": self._start_redis,
            "kafka": self._start_kafka,
            "smtp": self._start_smtp,
        }
        todo = parts_to_start(self.environ, self.parts)
        began = time.monotonic()
        results = await asyncio.gather(
            *(self._timed(part, starters[part]) for part in todo), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            self.registry.stop_all()
            # A real failure explains more than the interruptions it caused elsewhere.
            errors.sort(
                key=lambda error: isinstance(error, StartInterrupted | asyncio.CancelledError)
            )
            raise errors[0]
        for result in results:
            assert isinstance(result, dict)
            env.update(result)
        self.env = env
        if todo:
            took = time.monotonic() - began
            print(f"nudge: infrastructure ready in {took:.1f}s", file=sys.stderr)
        return dict(env)

    def stop(self) -> None:
        """Stop every child, in reverse order of start; idempotent. From another thread,
        it also interrupts a :meth:`start` under way."""
        self.stopping.set()
        self.registry.stop_all()
        if self._temporary_data and self._data_root is not None:
            # PostgreSQL's home, outside the data root when it runs as nudge-pg (root).
            home = read_home(self._data("postgres"))
            remove_home(self._data("postgres"))
            if home is not None:
                self.registry.discard_leftover(home)
            shutil.rmtree(self._data_root, ignore_errors=True)
            self.registry.discard_leftover(self._data_root)
            self._temporary_data = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def pids(self) -> list[int]:
        return [child.pid for child in self.registry.children]

    def __enter__(self) -> dict[str, str]:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    # -- parts ----------------------------------------------------------------------------

    def _claim_state_dir(self) -> None:
        """Lock the state directory for the life of this stack (a second stack on it is
        refused while the first runs), then stop what an owner that died without stopping
        its children (SIGKILL) left running: in ``run/stack.json`` and in the records of
        dead test and benchmark sessions."""
        run = self.state_dir / "run"
        run.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            fd = os.open(run / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                by = f" (pid {holder})" if holder.isdigit() else ""
                raise RuntimeError(
                    f"another Nudge stack{by} uses {self.state_dir}: stop it first, or give "
                    "this one its own state_dir / NUDGE_HOME"
                ) from None
            # Who holds it, for the message above; the lock itself is what counts.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._lock_fd = fd
        (run / "owner.json").unlink(missing_ok=True)  # the previous way of claiming
        reap_stale(run / "stack.json")
        reap_dead_sessions()

    async def _timed(
        self, part: str, starter: Callable[[], Awaitable[dict[str, str]]]
    ) -> dict[str, str]:
        began = time.monotonic()
        try:
            result = await starter()
        except PortInUse as err:
            if not self.picked_ports:
                raise
            # Somebody took the port between our pick and the part's bind: once more.
            self.ports.update(pick_free_ports(PART_PORTS[part], avoid=set(self.ports.values())))
            print(f"nudge: {part}: port {err.port} was taken; trying another", file=sys.stderr)
            result = await starter()
        self.timings[part] = time.monotonic() - began
        detail = f" ({result['NUDGE_KAFKA_KIND']})" if "NUDGE_KAFKA_KIND" in result else ""
        print(f"nudge: {part}{detail} ready in {self.timings[part]:.1f}s", file=sys.stderr)
        return result

    def _data(self, part: str) -> Path:
        assert self._data_root is not None
        return self._data_root / part

    async def _start_postgres(self) -> dict[str, str]:
        return await start_postgres(
            self.registry,
            data_dir=self._data("postgres"),
            port=self.ports["postgres"],
            log_dir=self.logs_dir,
            fast=self.fast,
            persistent=self.persistent,
        )

    async def _start_redis(self) -> dict[str, str]:
        return await start_redis(
            self.registry,
            data_dir=self._data("redis"),
            port=self.ports["redis"],
            log_dir=self.logs_dir,
            appendonly=self.persistent,
        )

    async def _start_kafka(self) -> dict[str, str]:
        return await start_kafka(
            self.registry,
            environ=self.environ,
            cache_dir=self.cache_dir,
            data_dir=self._data("kafka"),
            port=self.ports["kafka"],
            controller_port=self.ports["kafka_controller"],
            log_dir=self.logs_dir,
            warnings=self.warnings,
        )

    async def _start_smtp(self) -> dict[str, str]:
        env = await start_smtp_sink(
            self.registry,
            maildir=self._data("mail"),
            port=self.ports["smtp"],
            log_dir=self.logs_dir,
        )
        # The local sink takes every domain's mail at once: the mailbox providers' limits
        # (services/delivery/domain/domain_limits.py) would only slow the tests and benches
        # down. An operator's own DELIVERY_DOMAIN_LIMITS wins.
        if not self.environ.get("DELIVERY_DOMAIN_LIMITS"):
            env["DELIVERY_DOMAIN_LIMITS"] = LOCAL_SINK_DOMAIN_LIMITS
        return env
