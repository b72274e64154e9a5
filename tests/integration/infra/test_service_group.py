"""ServiceGroup, which ``make run`` and the end-to-end tests start the services with:
prefixed output, health waiting, kill, restart, restart after a crash, clean stop."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
from collections.abc import Iterator

import pytest

from deploy.local.procs import pick_free_ports
from deploy.local.supervisor import ServiceGroup, service_env, wait_healthy

FAKE = "fake_service"


@pytest.fixture
def port() -> int:
    return pick_free_ports(["fake"])["fake"]


@pytest.fixture
def output() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def group(port: int, output: io.StringIO) -> Iterator[ServiceGroup]:
    services = ServiceGroup(output=output, module_prefix="tests.integration.infra.", stop_timeout=5)
    env = service_env({}, base={**os.environ, "FAKE_HTTP_PORT": str(port)})
    services.start([FAKE], env)
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
    services = ServiceGroup(output=None, module_prefix="tests.integration.infra.")
    services.start([FAKE], service_env({}, base={**os.environ, "FAKE_HTTP_PORT": str(port)}))
    pid = services.wait_healthy(health(port), timeout=30)["pid"]
    services.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not services.running(FAKE)
