"""``make run``: the infrastructure, then every service, in one terminal; Ctrl-C stops all.

    python -m deploy.local run

Steps: start :class:`LocalStack` (fixed ports, data kept in ``.nudge/data``), create the
Kafka topics, apply every service's migrations, start each service as
``python -m services.<name>`` with its output prefixed by its name, wait for the gateway's
``/healthz``, create (once) a demo workspace with its console owner and its Welcome
workflow, and print how to use it. A service that exits is restarted with a backoff (at
most 5 times a minute), so a crash shows in the output but the system keeps going.

The pieces are reusable: the end-to-end tests start the whole system through
:func:`service_env` and :class:`ServiceGroup`, on free ports.

Like the infrastructure's, the services' pids are recorded (``make run``:
``.nudge/run/services.json``; tests and benchmarks: the sessions folder, see
:mod:`deploy.local.procs`), so that the services of a run killed with SIGKILL (each is in a
session of its own: nothing else stops them) are stopped by the next start, and a service's
port is checked before it starts, so that the next ``make run`` never talks to an old
gateway.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import httpx

from deploy.local import jaeger as jaeger_mod
from deploy.local import paths
from deploy.local.procs import (
    Child,
    ProcessRegistry,
    exit_on_sigterm,
    pick_free_ports,
    port_in_use,
    port_is_free,
    reap_dead_sessions,
    reap_stale,
    session_record,
)
from deploy.local.stack import LocalStack, fixed_ports, run_sync
from deploy.local.topics import ensure_topics

SERVICES = ("contacts", "segmentation", "campaigns", "delivery", "triggers", "tracking", "gateway")
DEFAULT_PORTS: dict[str, int] = {
    "CONTACTS_GRPC_PORT": 50051,
    "SEGMENTATION_GRPC_PORT": 50052,
    "CAMPAIGNS_GRPC_PORT": 50053,
    "TRIGGERS_GRPC_PORT": 50054,
    "DELIVERY_GRPC_PORT": 50055,
    "GATEWAY_HTTP_PORT": 8080,
    "TRACKING_HTTP_PORT": 8081,
    # Prometheus metrics, one port per service (services/common/metrics.py).
    "CONTACTS_METRICS_PORT": 9101,
    "SEGMENTATION_METRICS_PORT": 9102,
    "CAMPAIGNS_METRICS_PORT": 9103,
    "TRIGGERS_METRICS_PORT": 9104,
    "DELIVERY_METRICS_PORT": 9105,
    "TRACKING_METRICS_PORT": 9106,
    "GATEWAY_METRICS_PORT": 9107,
}
# Where the clients of each service find it, from the port it serves on.
GRPC_ADDRESSES = {
    "NUDGE_CONTACTS_ADDR": "CONTACTS_GRPC_PORT",
    "NUDGE_SEGMENTATION_ADDR": "SEGMENTATION_GRPC_PORT",
    "NUDGE_CAMPAIGNS_ADDR": "CAMPAIGNS_GRPC_PORT",
    "NUDGE_TRIGGERS_ADDR": "TRIGGERS_GRPC_PORT",
    "NUDGE_DELIVERY_ADDR": "DELIVERY_GRPC_PORT",
}
HTTP_URLS = {
    "NUDGE_TRACKING_URL": "TRACKING_HTTP_PORT",  # public base of tracking links (delivery)
    "GATEWAY_TRACKING_URL": "TRACKING_HTTP_PORT",  # where the gateway's /healthz asks tracking
    "NUDGE_GATEWAY_URL": "GATEWAY_HTTP_PORT",
}
SECRETS = ("NUDGE_INTERNAL_TOKEN", "NUDGE_LINK_SECRET", "NUDGE_ADMIN_TOKEN", "NUDGE_DATA_KEY")
COLORS = (36, 33, 35, 32, 34, 31, 96, 93, 95, 92)
HEALTH_TIMEOUT = 60.0


# -- environment ------------------------------------------------------------------------


def service_ports(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """The default ports, each overridable by its variable (``GATEWAY_HTTP_PORT=9000``)."""
    environ = os.environ if environ is None else environ
    return {name: int(environ.get(name) or port) for name, port in DEFAULT_PORTS.items()}


def free_service_ports() -> dict[str, int]:
    return pick_free_ports(DEFAULT_PORTS)


def load_secrets(state_dir: Path) -> dict[str, str]:
    """Random secrets made once and kept in ``state_dir/secrets.json``, so that signed
    links and tokens stay valid across ``make run`` restarts."""
    path = state_dir / "secrets.json"
    try:
        kept: dict[str, str] = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    missing = [name for name in SECRETS if not kept.get(name)]
    if missing:
        kept.update({name: secrets.token_urlsafe(32) for name in missing})
        write_private(path, json.dumps(kept, indent=1) + "\n")
    return kept


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, from the first byte on (no
    moment with the umask's permissions), and atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)  # in case tmp existed already with another mode
        out.write(text)
    tmp.replace(path)


def service_env(
    stack_env: Mapping[str, str],
    ports: Mapping[str, int] | None = None,
    *,
    state_dir: Path | None = None,
    secrets_: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every service: ``base`` (default ``os.environ``), the stack's
    URLs, the ports each service serves on and the addresses its clients use, the shared
    secrets (a variable set in ``base`` wins; else ``secrets_``; else random), and the
    directories of this run under ``state_dir`` (default ``.nudge``): Faust's data
    directory of triggers, unless ``TRIGGERS_DATA_DIR`` is set already, so that two runs
    never share one. Development mode (``NUDGE_DEV_MODE=1``) and ``NUDGE_BIND_HOST``
    127.0.0.1 unless ``base`` sets another address."""
    env = dict(os.environ if base is None else base)
    env.update(stack_env)
    if not env.get("TRIGGERS_DATA_DIR"):
        triggers_data = paths.data_dir("triggers", state_dir)
        triggers_data.mkdir(parents=True, exist_ok=True)  # Faust makes the last level only
        env["TRIGGERS_DATA_DIR"] = str(triggers_data)
    ports = {**DEFAULT_PORTS, **(ports or {})}
    env.update({name: str(port) for name, port in ports.items()})
    env.update({name: f"127.0.0.1:{ports[port]}" for name, port in GRPC_ADDRESSES.items()})
    env.update({name: f"http://127.0.0.1:{ports[port]}" for name, port in HTTP_URLS.items()})
    for name in SECRETS:
        if not env.get(name):
            env[name] = (secrets_ or {}).get(name) or secrets.token_urlsafe(32)
    # Development, by definition (make run, the tests): the services accept the development
    # values they refuse elsewhere (docker compose never sets this).
    env["NUDGE_DEV_MODE"] = "1"
    # Every service on the loopback only, unless the developer asks for another address:
    # a laptop's make run must not serve the network (containers set 0.0.0.0 themselves).
    env.setdefault("NUDGE_BIND_HOST", "127.0.0.1")
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the prefixed output as they are written
    return env


# -- health -----------------------------------------------------------------------------


def _healthy(answer: httpx.Response) -> dict[str, Any] | None:
    if answer.status_code != 200:
        return None
    with contextlib.suppress(ValueError):
        body = answer.json()
        if isinstance(body, dict) and body.get("status") == "ok":
            return body
    return None


def wait_healthy(url: str, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
    """Poll ``url`` until it answers 200 with ``{"status": "ok"}``; returns that body."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=5) as client:
        while True:
            try:
                answer = client.get(url)
                body = _healthy(answer)
                if body is not None:
                    return body
                last = f"{answer.status_code} {answer.text[:500]}"
            except httpx.HTTPError as err:
                last = repr(err)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not healthy after {timeout}s: {last}")
            time.sleep(0.5)


# -- the services -------------------------------------------------------------------------


def restart_delay(recent: Sequence[float], now: float, per_minute: int = 5) -> float:
    """Seconds to wait before restarting a service that restarted at ``recent`` times:
    doubling from 0.5 s up to 10 s, and never more than ``per_minute`` in any minute."""
    window = [t for t in recent if now - t < 60.0]
    delay = min(0.5 * 2.0 ** len(window), 10.0)
    if len(window) >= per_minute:
        delay = max(delay, window[-per_minute] + 60.0 - now)
    return delay


@dataclass
class _Service:
    name: str
    env: dict[str, str]
    child: Child | None = None
    wanted: bool = True  # False after kill() or stop(): no automatic restart
    restarts: list[float] = field(default_factory=list)
    restart_at: float | None = None
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=1000))


class ServiceGroup:
    """Nudge's services as child processes, ``python -m services.<name>``.

    ``output``: where prefixed lines go (None: nowhere); ``log_dir``: also one file per
    service; :meth:`lines` keeps the last 1,000 lines of each for test diagnostics.
    ``autorestart``: restart a service that exits on its own (not one :meth:`kill` ed).
    ``record``: where the services' pids are kept for the next start to reap should this
    process be SIGKILLed (``make run``: ``.nudge/run/services.json``); default, a record in
    the sessions folder (:func:`deploy.local.procs.session_record`).
    ``color``: colour the names (default: when ``output`` is a terminal and ``NO_COLOR``
    is not set).
    """

    def __init__(
        self,
        *,
        output: TextIO | None = sys.stdout,
        log_dir: Path | None = None,
        autorestart: bool = True,
        color: bool | None = None,
        stop_timeout: float = 10.0,
        module_prefix: str = "services.",
        record: Path | None = None,
    ) -> None:
        self.output = output
        self.log_dir = log_dir
        self.autorestart = autorestart
        if color is None:
            tty = output is not None and output.isatty()
            color = tty and not os.environ.get("NO_COLOR")
        self.color = color
        self.stop_timeout = stop_timeout
        self.module_prefix = module_prefix
        self.registry = ProcessRegistry(record=record or session_record("services"))
        self._reaped = False
        self._services: dict[str, _Service] = {}
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._closing = threading.Event()
        self._monitor: threading.Thread | None = None
        self._width = max(len(name) for name in SERVICES)

    # -- public ---------------------------------------------------------------------------

    def start(self, names: Iterable[str], env: Mapping[str, str]) -> None:
        """Start each service (without waiting for it to be ready). First, the services an
        earlier owner of the record (or of any dead session) left running are stopped; then
        every service's port must be free, or nothing starts."""
        names = list(names)
        exit_on_sigterm()
        if not self._reaped:
            self._reaped = True
            if self.registry.record is not None:
                reap_stale(self.registry.record)
            reap_dead_sessions()
        busy = [
            str(port_in_use(port, name, _port_remedy(name)))
            for name in names
            if (port := service_port(name, env)) is not None and not port_is_free(port)
        ]
        if busy:
            raise RuntimeError("\n".join(busy))
        with self._lock:
            for name in names:
                service = _Service(name, dict(env))
                self._services[name] = service
                self._width = max(self._width, len(name))
                self._spawn(service)
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name="nudge-services", daemon=True)
            self._monitor.start()

    def stop(self) -> None:
        """SIGTERM every service at once, SIGKILL those still running after the timeout."""
        self._closing.set()
        with self._lock:
            children = []
            for service in self._services.values():
                service.wanted = False
                if service.child is not None:
                    children.append(service.child)
        self._stop_children(children, self.stop_timeout)

    def kill(self, name: str) -> None:
        """SIGKILL one service, as a crash would; it stays down until :meth:`restart`."""
        with self._lock:
            service = self._services[name]
            service.wanted = False
            child = service.child
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.process.wait()
            self.registry.stop(child, timeout=0)
            self._say(name, f"killed (pid {child.pid})")

    def restart(self, name: str) -> None:
        """Stop the service if it runs (SIGTERM), then start it again."""
        with self._lock:
            service = self._services[name]
            service.wanted = False
            child = service.child
        if child is not None and child.alive():
            self._stop_children([child], self.stop_timeout)
        port = service_port(name, service.env)
        if port is not None and not port_is_free(port):
            raise port_in_use(port, name, _port_remedy(name))
        with self._lock:
            service.wanted = True
            service.restart_at = None
            self._spawn(service)

    def wait_healthy(self, url: str, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
        """:func:`wait_healthy`, with the recent output of exited services on failure."""
        try:
            return wait_healthy(url, timeout)
        except TimeoutError as err:
            dead = [n for n, s in self._services.items() if s.child and not s.child.alive()]
            detail = "".join(
                f"\n--- {name} (exited) ---\n" + "\n".join(list(self._services[name].lines)[-20:])
                for name in dead
            )
            raise TimeoutError(f"{err}{detail}") from None

    def pid(self, name: str) -> int | None:
        child = self._services[name].child
        return child.pid if child is not None and child.alive() else None

    def running(self, name: str) -> bool:
        return self.pid(name) is not None

    def lines(self, name: str) -> list[str]:
        return list(self._services[name].lines)

    def __enter__(self) -> ServiceGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inside ---------------------------------------------------------------------------

    def _spawn(self, service: _Service) -> None:
        module = f"{self.module_prefix}{service.name}"
        child = self.registry.spawn(
            service.name,
            [sys.executable, "-m", module],
            output=subprocess.PIPE,
            env=service.env,
            cwd=paths.REPO_ROOT,
            stop_timeout=self.stop_timeout,
        )
        service.child = child
        threading.Thread(
            target=self._pump, args=(service, child), name=f"nudge-{service.name}", daemon=True
        ).start()

    def _pump(self, service: _Service, child: Child) -> None:
        """Copy a child's output, line by line, with its name in front."""
        assert child.process.stdout is not None
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = (self.log_dir / f"{service.name}.log").open("a", encoding="utf-8")
        try:
            for raw in child.process.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                service.lines.append(line)
                if log is not None:
                    log.write(line + "\n")
                    log.flush()
                self._say(service.name, line)
        finally:
            if log is not None:
                log.close()

    def _say(self, name: str, line: str) -> None:
        if self.output is None:
            return
        label = f"{name:<{self._width}} |"
        if self.color:
            color = COLORS[SERVICES.index(name) if name in SERVICES else hash(name) % len(COLORS)]
            label = f"\033[{color}m{label}\033[0m"
        with self._write_lock:
            self.output.write(f"{label} {line}\n")
            self.output.flush()

    def _watch(self) -> None:
        """Notice exits, schedule restarts with backoff, carry them out."""
        while not self._closing.wait(0.2):
            now = time.monotonic()
            with self._lock:
                for service in self._services.values():
                    child = service.child
                    if child is None or child.alive() or not service.wanted:
                        continue
                    if not self.autorestart:
                        service.wanted = False
                        self._say(service.name, f"exited with code {child.process.returncode}")
                        continue
                    if service.restart_at is None:
                        delay = restart_delay(service.restarts, now)
                        service.restart_at = now + delay
                        self._say(
                            service.name,
                            f"exited with code {child.process.returncode}; "
                            f"restarting in {delay:.1f}s",
                        )
                    elif now >= service.restart_at and not self._closing.is_set():
                        service.restarts = [t for t in service.restarts if now - t < 60.0]
                        service.restarts.append(now)
                        service.restart_at = None
                        self.registry.stop(child, timeout=0)
                        self._spawn(service)

    def _stop_children(self, children: list[Child], timeout: float) -> None:
        for child in children:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._say(child.name, f"did not stop within {timeout:.0f}s: SIGKILL")
            self.registry.stop(child, timeout=0)


def _port_variables(name: str) -> list[str]:
    return [f"{name.upper().replace('-', '_')}_{kind}_PORT" for kind in ("GRPC", "HTTP")]


def service_port(name: str, env: Mapping[str, str]) -> int | None:
    """The port ``name`` serves on, from ``<NAME>_GRPC_PORT`` or ``<NAME>_HTTP_PORT``."""
    for variable in _port_variables(name):
        if env.get(variable):
            return int(env[variable])
    return None


def _port_remedy(name: str) -> str:
    variable = next((v for v in _port_variables(name) if v in DEFAULT_PORTS), None)
    return f"serve {name} on another port ({variable}=...)" if variable else "use another port"


# -- make run -----------------------------------------------------------------------------


def _run_step(
    name: str, argv: list[str], env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """A one-off command (migrations, the demo workspace): its stderr is shown prefixed,
    its stdout returned."""
    done = subprocess.run(
        argv, env=dict(env), cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    for line in done.stderr.splitlines():
        print(f"{name} | {line}", file=sys.stderr)
    return done


def migrate(env: Mapping[str, str]) -> None:
    began = time.monotonic()
    done = _run_step("migrate", [sys.executable, "-m", "services.migrate"], env)
    if done.returncode != 0:
        raise RuntimeError(f"python -m services.migrate failed ({done.returncode})")
    print(f"nudge: migrations applied in {time.monotonic() - began:.1f}s", file=sys.stderr)


def demo_workspace(state_dir: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """The demo workspace (slug ``demo``), created on first run. Its API key is shown only
    at creation, so it is kept in ``state_dir/demo.json``."""
    path = state_dir / "demo.json"
    kept: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        kept = json.loads(path.read_text())
    command = [sys.executable, "-m", "services.contacts", "create-workspace"]
    command += ["--name", "Demo shop", "--slug", "demo", "--if-missing"]
    done = _run_step("contacts", command, env)
    answer: dict[str, Any] = {}
    for line in reversed(done.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            answer = json.loads(line)
            break
    if done.returncode != 0 or not answer:
        print(f"nudge: could not create the demo workspace: {done.stdout}", file=sys.stderr)
        return kept
    if answer.get("api_key"):
        write_private(path, json.dumps(answer, indent=1) + "\n")
        return answer
    return {**kept, **answer, "api_key": kept.get("api_key")}


def traces_choice(environ: Mapping[str, str]) -> str:
    """``make run TRACES=jaeger`` (``NUDGE_TRACES``): "jaeger", else "" (the JSON files)."""
    value = environ.get("NUDGE_TRACES", "").strip().lower()
    if value not in ("", "jaeger"):
        raise ValueError(f"TRACES={value!r}: expected 'jaeger', or nothing for the JSON files")
    return value


def start_traces(
    state_dir: Path, registry: ProcessRegistry
) -> tuple[jaeger_mod.Jaeger | None, list[str]]:
    """``make run TRACES=jaeger``: build Jaeger if needed (minutes, once, with progress),
    then start it. Without Go, or when the build fails, say so and go on without it: the
    spans stay in the JSON files. Returns Jaeger (or None) and the banner's warnings."""
    registry_record = registry.record
    if registry_record is not None:
        reap_stale(registry_record)
    binary = jaeger_mod.build_or_explain(
        paths.cache_dir(state_dir), paths.logs_dir(state_dir), registry.stopping
    )
    if binary is None:
        return None, ["no Jaeger (see above): spans are only in the JSON files (nudge trace)"]
    jaeger = jaeger_mod.start_jaeger(
        registry,
        binary=binary,
        data_dir=paths.data_dir("jaeger", state_dir),
        log_dir=paths.logs_dir(state_dir),
    )
    return jaeger, []


def fresh_traces_dir(state_dir: Path) -> Path:
    """The JSON-lines folder of this run, emptied of the last run's files (the files grow
    with every span; like Jaeger's memory, they keep one run)."""
    folder = paths.traces_dir(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jsonl"):
        old.unlink(missing_ok=True)
    return folder


DEMO_OWNER = "owner@example.com"


def demo_owner(state_dir: Path, env: Mapping[str, str], demo: Mapping[str, Any]) -> dict[str, Any]:
    """The demo workspace's first console owner (issue 18), created once by ``nudge managers
    create``. The generated password is kept beside the API key in ``state_dir/demo.json``
    (only its hash is in the database), so every banner can show it."""
    if not demo.get("workspace_id"):
        return {}
    password = demo.get("console_password") or secrets.token_urlsafe(12)
    command = [sys.executable, "-m", "services.cli", "managers", "create", "--if-missing"]
    command += ["--workspace", str(demo["workspace_id"]), "--email", DEMO_OWNER, "--role", "owner"]
    done = _run_step("console", command, {**env, "NUDGE_MANAGER_PASSWORD": password})
    answer: dict[str, Any] = {}
    for line in reversed(done.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            answer = json.loads(line)
            break
    if done.returncode != 0 or not answer:
        print(f"nudge: could not create the console's owner: {done.stdout}", file=sys.stderr)
        return {}
    if answer.get("exists"):
        return {"console_email": DEMO_OWNER, "console_password": demo.get("console_password")}
    owner = {"console_email": DEMO_OWNER, "console_password": password}
    write_private(state_dir / "demo.json", json.dumps({**demo, **owner}, indent=1) + "\n")
    return owner


DEMO_WORKFLOW = "welcome"
DEMO_HTTP_TIMEOUT = 15.0


def demo_welcome(
    state_dir: Path, env: Mapping[str, str], demo: Mapping[str, Any]
) -> dict[str, Any]:
    """The demo workspace's Welcome workflow, published once so that README's first path (a
    signup becomes a welcome mail) works: since workflows are data (issue 16) a workspace
    has none until one is published. Published through the gateway with the demo key, as a
    user would; its id is kept in ``state_dir/demo.json``, and a later run that finds it
    does nothing, so a user who paused or deleted it is not overridden. A failure is one
    line on stderr: ``make run`` comes up without it."""
    if demo.get("welcome_workflow_id"):
        return {"welcome_workflow_id": demo["welcome_workflow_id"]}
    if not demo.get("api_key"):
        return {}
    auth = {"Authorization": f"Bearer {demo['api_key']}"}
    gateway = env["NUDGE_GATEWAY_URL"]
    try:
        with httpx.Client(base_url=gateway, headers=auth, timeout=DEMO_HTTP_TIMEOUT) as client:
            # A demo from before this step may welcome signups already (published by
            # hand): a second workflow would send two welcome mails.
            workflow_id = signup_workflow(client) or publish_template(client, DEMO_WORKFLOW)
    except RuntimeError as err:
        print(f"nudge: WARNING: no Welcome workflow in the demo workspace: {err}", file=sys.stderr)
        return {}
    published = {"welcome_workflow_id": workflow_id}
    write_private(state_dir / "demo.json", json.dumps({**demo, **published}, indent=1) + "\n")
    return published


def signup_workflow(client: httpx.Client) -> str | None:
    """The id of a workflow of the workspace that starts on a signup, in any state, if any
    (``GET /v1/workflows``, its first page: a demo workspace has few)."""
    listed = _call(client, "GET", "/v1/workflows").get("workflows", [])
    return next((str(w["id"]) for w in listed if w.get("trigger") == "signed_up"), None)


def publish_template(client: httpx.Client, template_id: str) -> str:
    """A workflow made from a template and published (``POST /v1/workflows``, then
    ``/publish``); returns its id. Raises RuntimeError naming the call that failed."""
    workflow_id = str(_call(client, "POST", "/v1/workflows", {"template_id": template_id})["id"])
    _call(client, "POST", f"/v1/workflows/{workflow_id}/publish")
    return workflow_id


def _call(
    client: httpx.Client, method: str, path: str, body: Mapping[str, Any] | None = None
) -> Any:
    """The JSON answer of a successful call, else RuntimeError with its method, path and why
    (the status and the start of the problem+json, or the transport's error), on one line."""
    try:
        answer = client.request(method, path, json=body)
        if answer.is_success:
            return answer.json()
        failure = f"{answer.status_code} {answer.text[:300]}"
    except (httpx.HTTPError, ValueError) as err:
        failure = repr(err)
    raise RuntimeError(f"{method} {path}: {' '.join(failure.split())}")


def banner(
    env: Mapping[str, str],
    demo: Mapping[str, Any],
    state_dir: Path,
    warnings: Sequence[str] = (),
    jaeger_url: str = "",
) -> str:
    gateway = env["NUDGE_GATEWAY_URL"]
    files = env.get("NUDGE_TRACES_DIR", "")
    viewer = f"Jaeger {jaeger_url}" if jaeger_url else f"JSON lines in {files}"
    traces = f"    traces      {viewer}   (nudge trace TRACE_ID)\n" if jaeger_url or files else ""
    key = demo.get("api_key") or f"(unknown: delete {state_dir / 'demo.json'} and the data)"
    console = f"{demo.get('console_email', '?')} / " + (
        demo.get("console_password") or "(unknown: nudge managers create ...)"
    )
    welcome = demo.get("welcome_workflow_id")
    workflow = (
        f"    workflow    Welcome {welcome}   (published once: a signup with the automations"
        " consent gets a welcome mail)\n"
        if welcome
        else ""
    )
    warned = "".join(f"  WARNING: {warning}\n" for warning in warnings)
    return f"""
  Nudge is running.
    gateway     {gateway}        API docs: {gateway}/docs
    console     {gateway}/console   sign in: {console}
    Kafka       {env["KAFKA_BOOTSTRAP_SERVERS"]} ({env.get("NUDGE_KAFKA_KIND", "?")})
    API key     {key}   (workspace "demo")
    admin token {env.get("NUDGE_ADMIN_TOKEN", "")}
    try         curl -X POST {gateway}/v1/contacts -H "Authorization: Bearer {key}" \\
                     -H "Content-Type: application/json" -d '{{"email": "ada@example.com"}}'
{workflow}    mail        make mail            (every message the local SMTP sink received)
{traces}    logs        {paths.logs_dir(state_dir)}
    stop        Ctrl-C
{warned}"""


class Interrupted(BaseException):
    """Raised in the main thread by SIGINT, SIGTERM or SIGHUP: unwind and stop everything.
    A BaseException, so that no ``except Exception`` on the way swallows it."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def stop_on_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


def ignore_signals() -> None:
    """While shutting down: a second Ctrl-C must not cut the shutdown short."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def wait_forever() -> None:
    while True:
        time.sleep(3600)


def run(names: Sequence[str] = SERVICES) -> int:
    """``make run``. Returns the exit status."""
    state_dir = paths.state_dir()
    stop_on_signals()
    stack = LocalStack(
        state_dir=state_dir, ports=fixed_ports(os.environ), fast=False, persistent=True
    )
    group = ServiceGroup(
        output=sys.stdout, log_dir=None, record=state_dir / "run" / "services.json"
    )
    tracing = ProcessRegistry(record=state_dir / "run" / "jaeger.json")
    jaeger: jaeger_mod.Jaeger | None = None
    warnings: list[str] = []
    began = time.monotonic()
    try:
        # Jaeger first: its one-off build takes minutes, better before than amid the rest.
        if traces_choice(os.environ) == "jaeger":
            jaeger, warnings = start_traces(state_dir, tracing)
        stack_env = stack.start()
        run_sync(ensure_topics(stack_env["KAFKA_BOOTSTRAP_SERVERS"]))
        traces_dir = os.environ.get("NUDGE_TRACES_DIR") or str(fresh_traces_dir(state_dir))
        base = {"NUDGE_LOG_FORMAT": "text", **os.environ, "NUDGE_TRACES_DIR": traces_dir}
        if jaeger is not None:
            base["OTEL_EXPORTER_OTLP_ENDPOINT"] = jaeger.otlp_endpoint
            # The gateway's message stories link to the trace in this Jaeger, on whatever
            # port it got.
            base["NUDGE_JAEGER_URL"] = jaeger.ui_url
        env = service_env(
            stack_env,
            service_ports(),
            state_dir=state_dir,
            secrets_=load_secrets(state_dir),
            base=base,
        )
        migrate(env)
        group.start(names, env)
        health = f"{env['NUDGE_GATEWAY_URL']}/healthz"
        if "gateway" in names:
            try:
                group.wait_healthy(health, HEALTH_TIMEOUT)
                print(f"nudge: healthy in {time.monotonic() - began:.1f}s", file=sys.stderr)
            except TimeoutError as err:
                # Keep running: the output above shows which service fails, and why.
                print(f"nudge: NOT HEALTHY: {err}", file=sys.stderr)
        demo = demo_workspace(state_dir, env) if "contacts" in names else {}
        demo = {**demo, **demo_owner(state_dir, env, demo)}
        if {"gateway", "triggers"} <= set(names):
            demo = {**demo, **demo_welcome(state_dir, env, demo)}
        jaeger_url = jaeger.ui_url if jaeger is not None else ""
        print(banner(env, demo, state_dir, [*stack.warnings, *warnings], jaeger_url), flush=True)
        wait_forever()
    except Interrupted:
        pass
    except Exception as err:  # shown plainly: a start-up failure explains itself
        print(f"\nnudge: {err}", file=sys.stderr)
        return 1
    finally:
        ignore_signals()
        print("\nnudge: stopping the services, then the infrastructure", file=sys.stderr)
        group.stop()
        tracing.stop_all()  # after the services, whose last spans it still takes
        stack.stop()
        print("nudge: stopped", file=sys.stderr)
    return 0
