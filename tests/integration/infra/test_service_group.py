"""ServiceGroup, which ``make run`` and the end-to-end tests start the services with:
prefixed output, health waiting, kill, restart, restart after a crash, clean stop; the
services of an owner killed with SIGKILL stopped by the next owner; busy ports refused."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.paths import REPO_ROOT
from deploy.local.procs import pick_free_ports, pid_alive
from deploy.local.supervisor import ServiceGroup, service_env, wait_healthy

FAKE = "fake_service"
PREFIX = "tests.integration.infra."


@pytest.fixture
def port() -> int:
    return pick_free_ports(["fake"])["fake"]


@pytest.fixture
def output() -> io.StringIO:
    return io.StringIO()


def fake_env(port: int) -> dict[str, str]:
    return service_env({}, base={**os.environ, "FAKE_SERVICE_HTTP_PORT": str(port)})


@pytest.fixture
def group(port: int, output: io.StringIO) -> Iterator[ServiceGroup]:
    services = ServiceGroup(output=output, module_prefix=PREFIX, stop_timeout=5)
    services.start([FAKE], fake_env(port))
    yield services
    services.stop()


def health(port: int) -> str:
    return f"http://127.0.0.1:{port}/healthz"


def test_output_is_prefixed_with_the_service_name(
    group: ServiceGroup, port: int, output: io.StringIO
) -> None:
    group.wait_healthy(health(port), timeout=30)
    assert any(line.startswith("fake service up") for line in group.lines(FAKE))
    assert f"{FAKE:<12} | fake service up" in output.getvalue()


def test_a_killed_service_stays_down_until_restarted(group: ServiceGroup, port: int) -> None:
    first = group.wait_healthy(health(port), timeout=30)["pid"]
    group.kill(FAKE)
    assert not group.running(FAKE)
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)
    group.restart(FAKE)
    assert wait_healthy(health(port), timeout=30)["pid"] != first


def test_a_service_that_dies_on_its_own_is_restarted(
    group: ServiceGroup, port: int, output: io.StringIO
) -> None:
    first = group.wait_healthy(health(port), timeout=30)["pid"]
    os.kill(first, signal.SIGKILL)  # a crash, not a kill() through the group

    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(TimeoutError):
            if wait_healthy(health(port), timeout=1)["pid"] != first:
                break
        assert time.monotonic() < deadline, "not restarted within 30 s"
    assert "restarting in" in output.getvalue()


def test_stop_leaves_no_service_running(port: int) -> None:
    services = ServiceGroup(output=None, module_prefix=PREFIX)
    services.start([FAKE], fake_env(port))
    pid = services.wait_healthy(health(port), timeout=30)["pid"]
    record = services.registry.record
    assert record is not None and record.exists()
    services.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not services.running(FAKE)
    assert not record.exists(), "a group that stopped everything leaves no record behind"


def test_a_busy_port_is_refused_naming_the_port_and_its_holder(port: int) -> None:
    services = ServiceGroup(output=None, module_prefix=PREFIX)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(RuntimeError) as refused:
            services.start([FAKE], fake_env(port))
    services.stop()
    assert f"port {port} for {FAKE} is already in use by pid {os.getpid()}" in str(refused.value)
    assert services.registry.children == [], "nothing starts when a port is busy"


# -- an owner killed with SIGKILL ----------------------------------------------------------

OWNER = """
import os, signal, sys
from pathlib import Path
from deploy.local.supervisor import ServiceGroup, service_env

record = Path(sys.argv[2]) if len(sys.argv) > 2 else None
group = ServiceGroup(output=None, module_prefix=__PREFIX__, record=record)
group.start([__FAKE__], service_env({}, base={**os.environ, "FAKE_SERVICE_HTTP_PORT": sys.argv[1]}))
group.wait_healthy(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=30)
print(group.pid(__FAKE__), group.registry.record, flush=True)
signal.alarm(600)  # bounded, should the test fail to kill us
signal.pause()  # alive until the test kills this owner
""".replace("__PREFIX__", repr(PREFIX)).replace("__FAKE__", repr(FAKE))


def sigkilled_owner(port: int, env: dict[str, str], *record: Path) -> tuple[int, Path]:
    """Start a process that starts the fake service, then SIGKILL it: nothing stops the
    service, which is in a session of its own. Returns the service's pid and the record."""
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(port), *map(str, record)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    try:
        assert owner.stdout is not None
        pid_text, record_text = owner.stdout.readline().split()
    finally:
        owner.kill()  # SIGKILL: no atexit, no finally
        owner.wait()
    service = int(pid_text)
    assert pid_alive(service), "the service outlives its SIGKILLed owner"
    assert wait_healthy(health(port), timeout=10)["pid"] == service
    return service, Path(record_text)


def test_a_sigkilled_owners_services_are_reaped_by_the_next_group(
    port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests and benchmarks: the record is in the sessions folder of NUDGE_HOME."""
    home = tmp_path / "home"
    monkeypatch.setenv("NUDGE_HOME", str(home))
    stale, record = sigkilled_owner(port, dict(os.environ))
    assert record.parent == home / "run" / "sessions"
    assert json.loads(record.read_text())["children"][0]["pid"] == stale

    services = ServiceGroup(output=None, module_prefix=PREFIX)
    try:
        services.start([FAKE], fake_env(port))  # the port is free again, or this fails
        assert not pid_alive(stale)
        assert not record.exists()
        assert services.wait_healthy(health(port), timeout=30)["pid"] != stale
    finally:
        services.stop()


def test_make_runs_services_record_is_reaped_at_the_next_start(port: int, tmp_path: Path) -> None:
    """``make run``: one fixed record, state_dir/run/services.json."""
    record = tmp_path / "run" / "services.json"
    stale, _ = sigkilled_owner(port, dict(os.environ), record)
    assert record.exists()

    services = ServiceGroup(output=None, module_prefix=PREFIX, record=record)
    try:
        services.start([FAKE], fake_env(port))
        assert not pid_alive(stale)
        assert services.wait_healthy(health(port), timeout=30)["pid"] != stale
        assert json.loads(record.read_text())["owner"]["pid"] == os.getpid()
    finally:
        services.stop()


def test_a_live_owners_services_are_left_alone(port: int, tmp_path: Path) -> None:
    record = tmp_path / "services.json"
    first = ServiceGroup(output=None, module_prefix=PREFIX, record=record)
    first.start([FAKE], fake_env(port))
    try:
        pid = first.wait_healthy(health(port), timeout=30)["pid"]
        second = ServiceGroup(output=None, module_prefix=PREFIX, record=record)
        with pytest.raises(RuntimeError, match=f"port {port} for {FAKE} is already in use"):
            second.start([FAKE], fake_env(port))
        assert pid_alive(pid)
    finally:
        first.stop()
