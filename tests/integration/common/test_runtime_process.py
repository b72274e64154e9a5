"""Every service as the process operators run (``python -m services.<name>``), outside
development mode: with random secrets it starts, listens on 127.0.0.1 only (the default
``NUDGE_BIND_HOST``), and stops on SIGTERM with exit 0; with a development secret it
refuses to start, naming the variable."""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from services.common.healthcheck import check_grpc
from tests.support import free_port, unique, wait_until

GRPC = {
    "contacts": "CONTACTS_GRPC_PORT",
    "segmentation": "SEGMENTATION_GRPC_PORT",
    "campaigns": "CAMPAIGNS_GRPC_PORT",
    "triggers": "TRIGGERS_GRPC_PORT",
    "delivery": "DELIVERY_GRPC_PORT",
}
HTTP = {"tracking": "TRACKING_HTTP_PORT", "gateway": "GATEWAY_HTTP_PORT"}
SECRETS = ("NUDGE_INTERNAL_TOKEN", "NUDGE_LINK_SECRET", "NUDGE_ADMIN_TOKEN", "NUDGE_DATA_KEY")


def production_env(**overrides: str) -> dict[str, str]:
    """The infrastructure's variables, random secrets, no development mode, no bind host."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUDGE_BIND_HOST", "NUDGE_DEV_MODE")}
    env.update({name: secrets.token_urlsafe(32) for name in SECRETS})
    env.update(NUDGE_DEV_MODE="0", NUDGE_LOG_FORMAT="text", PYTHONUNBUFFERED="1")
    env.update(overrides)
    return env


@dataclass
class Child:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def answers(self) -> bool:
        assert self.process.poll() is None, f"{self.name} exited early:\n{self.output()}"
        if self.name in GRPC:
            return check_grpc(f"127.0.0.1:{self.port}", "", timeout=1) is None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                return True
        except urllib.error.HTTPError:  # 503: degraded, but serving
            return True
        except OSError:
            return False


@pytest.fixture
def services(infra: dict[str, str], tmp_path: Path) -> Iterator[list[Child]]:
    ports = {name: free_port() for name in [*GRPC, *HTTP]}
    env = production_env(
        **{variable: str(ports[name]) for name, variable in {**GRPC, **HTTP}.items()},
        **{f"NUDGE_{name.upper()}_ADDR": f"127.0.0.1:{ports[name]}" for name in GRPC},
        GATEWAY_TRACKING_URL=f"http://127.0.0.1:{ports['tracking']}",
        # A consumer group of its own, so this worker takes no partition from another test's.
        TRIGGERS_APP_ID=unique("nudge-triggers-runtime"),
        TRIGGERS_DATA_DIR=str(tmp_path / "triggers"),
    )
    (tmp_path / "triggers").mkdir()
    children = []
    try:
        for name, port in ports.items():
            log = tmp_path / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", f"services.{name}"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            children.append(Child(name, port, process, log))
        yield children
    finally:
        for child in children:
            if child.process.poll() is None:
                child.process.kill()
                child.process.wait(timeout=10)


def listening_addresses(pid: int) -> set[str]:
    """The addresses ``pid`` listens on; gRPC's IPv4-mapped ``::ffff:127.0.0.1`` (a dual
    stack socket bound to the IPv4 address only) counts as 127.0.0.1."""
    found = set()
    for connection in psutil.Process(pid).net_connections(kind="inet"):
        if connection.status == psutil.CONN_LISTEN:
            address = ipaddress.ip_address(connection.laddr.ip)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            found.add(str(address))
    return found


def test_every_service_starts_with_random_secrets_on_loopback_and_stops_on_sigterm(
    services: list[Child],
) -> None:
    for child in services:
        wait_until(child.answers, timeout=90)
    for child in services:
        addresses = listening_addresses(child.process.pid)
        assert addresses == {"127.0.0.1"}, (child.name, addresses)
    for child in services:
        child.process.send_signal(signal.SIGTERM)
    for child in services:
        try:
            code = child.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{child.name} did not stop within 60 s of SIGTERM:\n{child.output()}")
        assert code == 0, f"{child.name} exited {code}:\n{child.output()[-3000:]}"
        assert f"{child.name} stopped" in child.output(), child.name


@pytest.mark.parametrize(
    ("name", "variable", "value", "reason"),
    [
        ("contacts", "NUDGE_INTERNAL_TOKEN", "dev-internal-token", "known development value"),
        ("contacts", "NUDGE_ADMIN_TOKEN", "dev-admin-token", "known development value"),
        ("segmentation", "NUDGE_INTERNAL_TOKEN", "", "is empty"),
        ("campaigns", "NUDGE_INTERNAL_TOKEN", "short-token", "shorter than 16"),
        ("triggers", "NUDGE_INTERNAL_TOKEN", "dev-internal-token", "known development value"),
        ("delivery", "NUDGE_LINK_SECRET", "dev-link-secret", "known development value"),
        ("tracking", "NUDGE_LINK_SECRET", "dev-link-secret", "known development value"),
        ("delivery", "NUDGE_DATA_KEY", "dev-data-key", "known development value"),
    ],
)
def test_a_development_secret_outside_development_mode_stops_the_start(
    infra: dict[str, str], name: str, variable: str, value: str, reason: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"services.{name}"],
        env=production_env(**{variable: value}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0, result.stderr
    assert f"{variable} is" in result.stderr and reason in result.stderr, result.stderr
    assert "NUDGE_DEV_MODE=1" in result.stderr
    assert value == "" or value not in result.stderr, "a secret's value is never echoed"
