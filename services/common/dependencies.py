"""Each service reports the health of its own dependencies over ``grpc.health.v1``.

The gateway used to open PostgreSQL, Redis, Kafka and SMTP clients of its own for
``/healthz``, so the internet-facing process held every credential. Now each service checks
what it uses itself, every ``NUDGE_HEALTH_INTERVAL_S`` (5 s), with the clients it already
has, and publishes the outcome through the standard health servicer's ``set``:

- ``dependency.<name>`` (``dependency.postgres``, ``dependency.redis``, ``dependency.kafka``,
  ``dependency.smtp``): SERVING or NOT_SERVING, one per dependency the service has (a name
  the service does not use answers NOT_FOUND);
- the overall status (``""``) and each of the service's own names: NOT_SERVING while any
  dependency is down, so an orchestrator's readiness probe takes the replica out, and
  SERVING again once all answer.

The gateway's ``/healthz`` asks each service for ``""`` and ``dependency.<name>`` and
aggregates (services/gateway/adapters/health.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from grpc_health.v1 import health_pb2

from services.common import metrics
from services.common.kafka_probe import BrokerProbe, describe

log = logging.getLogger(__name__)

PREFIX = "dependency."
# Every dependency a Nudge service may report, in the order the gateway shows them.
# smtp_sending: delivery's own verdict (down while a session error pauses sending).
KNOWN = ("postgres", "redis", "kafka", "smtp", "smtp_sending")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Check = Callable[[], Awaitable[object]]


class HealthSetter(Protocol):
    """The standard health servicer's API (``grpc_health.v1.health.aio.HealthServicer``)."""

    async def set(self, service: str, status: Any) -> None: ...


def health_name(dependency: str) -> str:
    return f"{PREFIX}{dependency}"


class DependencyMonitor:
    """Runs ``checks`` (name -> coroutine that raises when the dependency is down) each
    ``interval_s``, each within ``timeout_s``, and sets the health statuses (module
    docstring). ``served`` are the service names whose status follows the dependencies."""

    def __init__(
        self,
        checks: dict[str, Check],
        health: HealthSetter,
        served: Iterable[str],
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self._checks = checks
        self._health = health
        self._served = ["", *served]
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._down: dict[str, str] = {}
        self._checked = False
        metrics.watch(self)

    def metric_samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """1 per dependency that answered its last check, 0 per one that did not."""
        if not self._checked:
            return
        for name in self._checks:
            yield "nudge_dependency_up", {"dependency": name}, float(name not in self._down)

    async def check_once(self) -> dict[str, str | None]:
        """One round: every check concurrently; returns, by name, None or why it failed."""
        names = list(self._checks)
        problems = await asyncio.gather(*(self._run(self._checks[name]) for name in names))
        report = dict(zip(names, problems, strict=True))
        for name, problem in report.items():
            await self._health.set(health_name(name), SERVING if problem is None else NOT_SERVING)
            if problem is not None and name not in self._down:
                log.warning("dependency %s is down: %s", name, problem)
            elif problem is None and name in self._down:
                log.info("dependency %s is back", name)
        self._down = {name: problem for name, problem in report.items() if problem is not None}
        self._checked = True
        overall = NOT_SERVING if self._down else SERVING
        for name in self._served:
            await self._health.set(name, overall)
        return report

    async def run(self) -> None:
        """Check forever; a failing check is a report, never the end of the loop."""
        while True:
            await asyncio.sleep(self._interval_s)
            await self.check_once()

    async def _run(self, check: Check) -> str | None:
        try:
            await asyncio.wait_for(check(), self._timeout_s)
        except Exception as err:
            return describe(err)
        return None


class _Pool(Protocol):
    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any: ...


def postgres_check(pool: _Pool, timeout_s: float) -> Check:
    async def check() -> None:
        await pool.fetchval("SELECT 1", timeout=timeout_s)

    return check


def redis_check(redis: Any) -> Check:
    async def check() -> None:
        await cast(Awaitable[bool], redis.ping())  # typed sync-or-async in redis-py

    return check


def kafka_check(probe: BrokerProbe) -> Check:
    async def check() -> None:
        await probe.broker_count()

    return check


def smtp_check(smtp_url: str, timeout_s: float) -> Check:
    """A short session (EHLO, NOOP, QUIT) each time: servers drop idle sessions, so a kept
    one would report a stale answer."""

    async def check() -> None:
        import aiosmtplib

        url = urlsplit(smtp_url)
        tls = url.scheme == "smtps"
        smtp = aiosmtplib.SMTP(
            hostname=url.hostname or "127.0.0.1",
            port=url.port or (465 if tls else 25),
            use_tls=tls,
            start_tls=False,
            timeout=timeout_s,
        )
        await smtp.connect()
        try:
            await smtp.ehlo()
            await smtp.noop()
        finally:
            with contextlib.suppress(Exception):
                await smtp.quit()

    return check
