"""The dependency checks of ``GET /healthz``: every part the system needs, concurrently,
each with a short deadline.

The PostgreSQL pool, the Redis and HTTP clients and the gRPC channels are opened once at
start-up; the Kafka metadata client on the first check, and again after one fails. SMTP is
the exception: each check opens a short session (EHLO, NOOP, QUIT), since servers drop idle
sessions and a kept one would report a stale answer. :class:`CachedChecks` keeps a report
for ``health_cache_s`` (a second by default), so a flood of ``/healthz`` (which needs no
credentials) cannot hammer the dependencies: one round of checks at a time, and at most one
per period.

Each check answers ``{"ok", "latency_ms", "detail"?}`` plus what it learnt (Kafka: which
broker software and how many brokers). A failed check says why in ``detail``, without
credentials (URLs are never echoed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import aiosmtplib
import asyncpg
import httpx
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.kafka_probe import BrokerProbe, describe
from services.gateway.config import Settings

Check = Callable[[], Awaitable[dict[str, Any]]]
Report = dict[str, dict[str, Any]]


class HealthChecks(Protocol):
    async def run(self) -> Report: ...


class CachedChecks:
    """``checks``, run at most once per ``ttl_s`` (0: every time). Callers that arrive while
    a round is running wait for it and share its report. ``clock`` is for tests."""

    def __init__(
        self,
        checks: HealthChecks,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = checks
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._report: Report | None = None
        self._taken_at = 0.0

    async def run(self) -> Report:
        if self._ttl_s <= 0:
            return await self._checks.run()
        async with self._lock:
            if self._report is None or self._clock() - self._taken_at >= self._ttl_s:
                self._report = await self._checks.run()
                self._taken_at = self._clock()
            return self._report


class DependencyChecks:
    def __init__(self, settings: Settings, grpc_health: dict[str, health_pb2_grpc.HealthStub]):
        self._settings = settings
        self._timeout = settings.health_timeout_s
        self._grpc_health = grpc_health
        self._pool: asyncpg.Pool | None = None
        self._redis = aioredis.from_url(
            settings.redis_url,
            socket_connect_timeout=self._timeout,
            socket_timeout=self._timeout,
        )
        self._http = httpx.AsyncClient(timeout=self._timeout)
        self._kafka = BrokerProbe(
            settings.kafka_bootstrap_servers, "nudge-gateway-health", self._timeout
        )

    async def start(self) -> None:
        # min_size=0: the gateway starts (and reports) even while PostgreSQL is down.
        self._pool = await asyncpg.create_pool(
            self._settings.database_url,
            min_size=0,
            max_size=2,
            timeout=self._timeout,
            server_settings={"application_name": "nudge-gateway-health"},
        )

    async def close(self) -> None:
        await self._kafka.close()
        await self._http.aclose()
        await self._redis.aclose()
        if self._pool is not None:
            await self._pool.close()

    async def run(self) -> Report:
        checks: dict[str, Check] = {
            "postgres": self._postgres,
            "redis": self._redis_ping,
            "kafka": self._kafka_metadata,
            "smtp": self._smtp,
            **{name: self._grpc(stub) for name, stub in self._grpc_health.items()},
            "tracking": self._tracking,
        }
        results = await asyncio.gather(*(self._timed(check) for check in checks.values()))
        report = dict(zip(checks, results, strict=True))
        report["kafka"]["kind"] = self._settings.kafka_kind
        return report

    async def _timed(self, check: Check) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            extra = await asyncio.wait_for(check(), self._timeout)
            result: dict[str, Any] = {"ok": True, **extra}
        except Exception as err:
            result = {"ok": False, "detail": describe(err)}
        result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return result

    async def _postgres(self) -> dict[str, Any]:
        assert self._pool is not None, "start() first"
        await self._pool.fetchval("SELECT 1", timeout=self._timeout)
        return {}

    async def _redis_ping(self) -> dict[str, Any]:
        await cast(Awaitable[bool], self._redis.ping())  # typed sync-or-async in redis-py
        return {}

    async def _kafka_metadata(self) -> dict[str, Any]:
        return {"brokers": await self._kafka.broker_count()}

    async def _smtp(self) -> dict[str, Any]:
        url = urlsplit(self._settings.smtp_url)
        tls = url.scheme == "smtps"
        smtp = aiosmtplib.SMTP(
            hostname=url.hostname or "127.0.0.1",
            port=url.port or (465 if tls else 25),
            use_tls=tls,
            start_tls=False,
            timeout=self._timeout,
        )
        await smtp.connect()
        try:
            await smtp.ehlo()
            await smtp.noop()
        finally:
            with contextlib.suppress(Exception):
                await smtp.quit()
        return {}

    def _grpc(self, stub: health_pb2_grpc.HealthStub) -> Check:
        async def check() -> dict[str, Any]:
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=self._timeout)
            if answer.status != health_pb2.HealthCheckResponse.SERVING:
                raise ConnectionError(
                    health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                )
            return {}

        return check

    async def _tracking(self) -> dict[str, Any]:
        answer = await self._http.get(f"{self._settings.tracking_url.rstrip('/')}/healthz")
        if answer.status_code != 200:
            raise ConnectionError(f"/healthz answered {answer.status_code}")
        return {}
