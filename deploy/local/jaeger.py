"""Jaeger v2 for the local stack, without Docker: built once with the machine's Go.

There is no Jaeger binary in any registry we may use, but the Go module proxy has its
source. ``go install ...@v1.76.0`` refuses it (its go.mod has replace directives), so a
small module of our own requires it as a tool and builds it (measured by issue 17: 75 s and
1.3 GB of modules, then 320 s and 2.3 GB of memory for a 121 MB binary)::

    go mod init nudge-jaeger
    go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@v1.76.0
    go build -o jaeger github.com/jaegertracing/jaeger/cmd/jaeger

in ``.nudge/cache/jaeger/`` (deploy/local/paths.py), like Kafka's jars: a lock keeps two
builds from racing, the binary is built under a temporary name and renamed, so a binary
that exists is whole; later starts do not touch the network. The build is opt-in
(``make jaeger``, ``make run TRACES=jaeger``): too slow to happen behind anyone's back.

It runs on 127.0.0.1 with in-memory storage and a configuration written at every start:
OTLP on 4317 (gRPC) and 4318 (HTTP), the UI and its API on 16686, as Jaeger's own defaults,
or on free ports when one of those is taken. Nothing else listens (no metrics, sampling or
zipkin ports that could collide with the rest of the stack).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx

from deploy.local.procs import (
    Child,
    ProcessRegistry,
    StartInterrupted,
    check_stop,
    pick_free_ports,
    port_is_free,
    startup_failure,
)

JAEGER_VERSION = "v1.76.0"
JAEGER_PACKAGE = "github.com/jaegertracing/jaeger/cmd/jaeger"
MODULE = "nudge-jaeger"
BUILD_TIMEOUT_S = 3600.0
PROGRESS_EVERY_S = 15.0
DEFAULT_PORTS = {"otlp_grpc": 4317, "otlp_http": 4318, "ui": 16686, "query_grpc": 16685}
# Served as Jaeger's UI (ui_assets): a trace viewer of our own on Jaeger's API.
TRACEVIEW = Path(__file__).resolve().parent / "traceview"

CONFIG = """\
# Written by deploy/local/jaeger.py at every start: in-memory storage, loopback only.
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{ui}
    ui:
      assets_path: {assets}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}

processors:
  batch:

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


class GoMissing(RuntimeError):
    """No ``go`` on the PATH: Jaeger cannot be built here."""


def jaeger_home(cache_dir: Path) -> Path:
    return cache_dir / "jaeger"


def binary_path(cache_dir: Path) -> Path:
    """The cached binary; its name carries the version, so a new pin builds anew."""
    return jaeger_home(cache_dir) / f"jaeger-{JAEGER_VERSION}"


def go_binary() -> str:
    found = shutil.which("go")
    if found is None:
        raise GoMissing(
            "Jaeger is built from source with Go (1.24 or newer), and there is no `go` on "
            "the PATH: install Go (https://go.dev/dl/, or your package manager's golang), "
            "or run without TRACES=jaeger (spans stay in the JSON files, read by `nudge trace`)"
        )
    return found


# -- building -----------------------------------------------------------------------------


class _Progress:
    """Counts what a go command prints (``go: downloading MODULE``, and with ``-v`` one
    package path per package compiled) and says where it is every ``every`` seconds."""

    def __init__(self, out: TextIO, every: float, clock: Callable[[], float]) -> None:
        self.out = out
        self.every = every
        self.clock = clock
        self.began = clock()
        self.said = self.began
        self.downloads = 0
        self.packages = 0
        self.step = "starting"
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            if text.startswith("go: downloading "):
                self.downloads += 1
            elif text and not text.startswith(("go: ", "#")):
                self.packages += 1

    def tick(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.said < self.every:
            return
        self.said = now
        with self.lock:
            counts = f"{self.downloads} modules downloaded, {self.packages} packages compiled"
        self.out.write(f"nudge: building Jaeger: {self.step} ({counts}, {now - self.began:.0f}s)\n")
        self.out.flush()


def _run_go(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log: TextIO,
    progress: _Progress,
    stop: threading.Event | None,
    deadline: float,
) -> None:
    """One go command, its output appended to ``log`` and counted by ``progress``; killed
    (with its compiler children: a session of its own) on ``stop`` or at ``deadline``."""
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None

    def pump() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            log.write(raw)
            progress.line(raw.strip())
        log.flush()

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        reader.join(timeout=5)

    reader = threading.Thread(target=pump, name="nudge-go-output", daemon=True)
    reader.start()
    try:
        while process.poll() is None:
            if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
                break
            progress.tick()
            time.sleep(0.2)
    except BaseException:  # Ctrl-C in make run: the compilers go with it
        kill()
        raise
    if process.poll() is None:
        kill()
        check_stop(stop, "the Jaeger build")
        raise RuntimeError(f"{' '.join(argv)} did not finish within {BUILD_TIMEOUT_S:.0f}s")
    reader.join(timeout=5)
    if process.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({process.returncode}); its output is in {log.name}"
        )


def build_jaeger(
    cache_dir: Path,
    log_path: Path,
    *,
    stop: threading.Event | None = None,
    out: TextIO = sys.stderr,
    go: str | None = None,
    every: float = PROGRESS_EVERY_S,
) -> Path:
    """The Jaeger binary, built on first use (minutes: see the module docstring), with a
    line of progress on ``out`` every ``every`` seconds. Raises :class:`GoMissing` without
    Go, :class:`StartInterrupted` when ``stop`` is set, ``RuntimeError`` when go fails."""
    binary = binary_path(cache_dir)
    if binary.exists():
        return binary
    go = go or go_binary()
    home = jaeger_home(cache_dir)
    module = home / "module"
    module.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        if not _try_lock(lock):
            out.write("nudge: another process builds Jaeger; waiting for it\n")
            out.flush()
            while not _try_lock(lock):
                check_stop(stop, "waiting for the Jaeger build")
                time.sleep(1.0)
        if binary.exists():
            return binary
        out.write(
            f"nudge: building Jaeger {JAEGER_VERSION} with {go} into {binary} (once; about "
            f"6 minutes and 2.3 GB of memory on two cores; log: {log_path})\n"
        )
        out.flush()
        # No toolchain download: the machine's Go builds it, or says why it cannot.
        env = {**os.environ, "GOTOOLCHAIN": "local"}
        progress = _Progress(out, every, time.monotonic)
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        tmp = home / f".jaeger.{os.getpid()}.tmp"
        with log_path.open("a") as log:

            def go_step(step: str, *args: str) -> None:
                progress.step = step
                _run_go(
                    [go, *args],
                    cwd=module,
                    env=env,
                    log=log,
                    progress=progress,
                    stop=stop,
                    deadline=deadline,
                )

            try:
                if not (module / "go.mod").exists():
                    go_step("creating the module", "mod", "init", MODULE)
                go_step("downloading modules", "get", "-tool", f"{JAEGER_PACKAGE}@{JAEGER_VERSION}")
                go_step("compiling", "build", "-v", "-o", str(tmp), JAEGER_PACKAGE)
                tmp.replace(binary)
            finally:
                tmp.unlink(missing_ok=True)
        progress.step = "done"
        progress.tick(force=True)
    return binary


def _try_lock(lock: TextIO) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# -- running ------------------------------------------------------------------------------


@dataclass
class Jaeger:
    child: Child
    ports: dict[str, int]

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['ui']}"

    @property
    def otlp_endpoint(self) -> str:
        """For ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the services export over gRPC)."""
        return f"http://127.0.0.1:{self.ports['otlp_grpc']}"


def choose_ports() -> dict[str, int]:
    """Jaeger's default ports where free; a free port instead of each one taken."""
    taken = [name for name, port in DEFAULT_PORTS.items() if not port_is_free(port)]
    ports = dict(DEFAULT_PORTS)
    ports.update(pick_free_ports(taken, avoid=DEFAULT_PORTS.values()))
    return ports


def ui_assets(environ: Mapping[str, str] = os.environ) -> Path:
    """What Jaeger serves as its UI: ``NUDGE_JAEGER_UI_ASSETS`` (a build of jaeger-ui, the
    project's own React UI: ``index.html`` and ``static/``), else our viewer.

    The Go module has no UI assets: they are built from jaeger-ui's repository, which no
    registry this project may use serves, so a binary built here shows only Jaeger's "not
    the UI you are looking for" page. deploy/local/traceview reads the same API instead."""
    chosen = environ.get("NUDGE_JAEGER_UI_ASSETS", "").strip()
    return Path(chosen).expanduser().resolve() if chosen else TRACEVIEW


def config_text(ports: dict[str, int], assets: Path = TRACEVIEW) -> str:
    # A JSON string is a YAML double-quoted scalar: any path, spaces and all.
    return CONFIG.format(**ports, assets=json.dumps(str(assets)))


def wait_jaeger_ready(url: str, child: Child, timeout: float, stop: threading.Event | None) -> None:
    """Ready means its API answers (``/api/services``), not an open port."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            check_stop(stop)
            if not child.alive():
                raise startup_failure(child, "Jaeger")
            try:
                answer = client.get(f"{url}/api/services")
                if answer.status_code == 200:
                    return
                last = f"{answer.status_code} {answer.text[:200]}"
            except httpx.HTTPError as err:
                last = repr(err)
            time.sleep(0.2)
    raise RuntimeError(f"Jaeger at {url} not ready after {timeout}s ({last})")


def start_jaeger(
    registry: ProcessRegistry,
    *,
    binary: Path,
    data_dir: Path,
    log_dir: Path,
    timeout: float = 60.0,
) -> Jaeger:
    """Start the built binary with a configuration of our own (``data_dir/config.yaml``)."""
    ports = choose_ports()
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "config.yaml"
    assets = ui_assets()
    if not (assets / "index.html").is_file():
        raise RuntimeError(
            f"NUDGE_JAEGER_UI_ASSETS={assets}: no index.html there (a jaeger-ui build)"
        )
    config.write_text(config_text(ports, assets))
    child = registry.spawn(
        "jaeger",
        [binary, "--config", config],
        output=log_dir / "jaeger.log",
        cwd=data_dir,
        stop_signal=signal.SIGTERM,
        stop_timeout=10.0,
    )
    jaeger = Jaeger(child, ports)
    try:
        wait_jaeger_ready(jaeger.ui_url, child, timeout, registry.stopping)
    except BaseException:
        registry.stop(child, timeout=5)
        raise
    return jaeger


def build_or_explain(
    cache_dir: Path, log_dir: Path, stop: threading.Event | None, out: TextIO = sys.stderr
) -> Path | None:
    """:func:`build_jaeger`, or None after saying why not (no Go, a failed build): the
    stack runs on without Jaeger, its spans in the JSON files."""
    try:
        return build_jaeger(cache_dir, log_dir / "jaeger-build.log", stop=stop, out=out)
    except StartInterrupted:
        raise
    except (GoMissing, RuntimeError, OSError) as err:
        out.write(f"nudge: no Jaeger: {err}\n")
        out.flush()
        return None
