"""Start the whole system for a benchmark, as the tests do: the local stack on free ports
(or the URLs in the environment), then every service as a process. Stops it all after.
:func:`postgres_url` starts PostgreSQL alone, for the benchmarks that need nothing else, and
:func:`local_infra` any parts of the local stack alone."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.local import paths  # noqa: E402
from deploy.local.stack import LocalStack, run_sync  # noqa: E402
from deploy.local.supervisor import (  # noqa: E402
    SERVICES,
    ServiceGroup,
    free_service_ports,
    service_env,
)
from deploy.local.topics import ensure_topics  # noqa: E402


@contextlib.contextmanager
def local_infra(parts: tuple[str, ...]) -> Iterator[tuple[dict[str, str], Path]]:
    """The local stack's ``parts`` alone (``"postgres"``, ``"redis"``, ``"kafka"``...) on
    free ports in a temporary folder, stopped after: their environment (the URLs), and the
    folder, for a benchmark's own files (logs)."""
    with tempfile.TemporaryDirectory(prefix="nudge-bench-") as tmp:
        stack = LocalStack(
            state_dir=Path(tmp) / "state",
            ports="free",
            persistent=False,
            cache_dir=paths.cache_dir(),
            environ=os.environ,
            parts=parts,
        )
        try:
            yield stack.start(), Path(tmp)
        finally:
            stack.stop()


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    """``DATABASE_URL`` when set; else PostgreSQL alone from the local stack on a free port,
    stopped after."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    with local_infra(("postgres",)) as (env, _):
        yield env["DATABASE_URL"]


@dataclass
class RunningSystem:
    env: dict[str, str]
    group: ServiceGroup
    infra_s: float
    healthy_s: float


@contextlib.contextmanager
def running_system(
    services: tuple[str, ...] = SERVICES,
    ready: Callable[[dict[str, str]], None] | None = None,
) -> Iterator[RunningSystem]:
    """``ready(env)`` waits until the started services answer (default: the gateway's
    /healthz reports every dependency ok, which needs every service)."""
    with tempfile.TemporaryDirectory(prefix="nudge-bench-") as tmp:
        started = time.monotonic()
        state_dir = Path(tmp) / "state"
        stack = LocalStack(
            state_dir=state_dir,
            ports="free",
            fast=False,  # durable PostgreSQL settings, as make run uses
            persistent=False,
            cache_dir=paths.cache_dir(),
            environ=os.environ,
        )
        try:
            infra = stack.start()
            run_sync(ensure_topics(infra["KAFKA_BOOTSTRAP_SERVERS"]))
            infra_s = time.monotonic() - started
            env = service_env(
                infra,
                free_service_ports(),
                state_dir=state_dir,
                base={**os.environ, "NUDGE_LOG_LEVEL": "WARNING"},
            )
            group = ServiceGroup(output=None, log_dir=Path(tmp) / "logs", autorestart=False)
            try:
                group.start(services, env)
                if ready is None:
                    group.wait_healthy(f"{env['NUDGE_GATEWAY_URL']}/healthz", timeout=120)
                else:
                    ready(env)
                yield RunningSystem(
                    env=env, group=group, infra_s=infra_s, healthy_s=time.monotonic() - started
                )
            finally:
                group.stop()
        finally:
            stack.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
