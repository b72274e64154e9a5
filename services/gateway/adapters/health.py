"""What ``GET /healthz`` reports: each service behind the gateway, and each service's own
dependencies as that service sees them.

The gateway holds no database, Kafka or SMTP credentials (it faces the internet); its one
dependency of its own is Redis, for the console's sessions and the sign-in throttle, which
it reports as ``gateway`` (``{"dependencies": {"redis": ...}}``): API keys work without it,
signing in does not. Each gRPC service checks its own dependencies and reports them over
``grpc.health.v1`` (services/common/dependencies.py): the gateway asks every service for
its overall status and for ``dependency.<name>`` of each known dependency, concurrently,
each with a short deadline; a name a service does not use answers NOT_FOUND and is left
out. Tracking serves HTTP only, so its own ``/healthz`` is read instead (it reports Kafka,
with the broker software and count). :class:`CachedChecks` keeps a report for
``health_cache_s`` (a second by default), so a flood of ``/healthz`` (which needs no
credentials) cannot hammer the services: one round of checks at a time, and at most one per
period.

Each service answers ``{"ok", "latency_ms", "detail"?, "dependencies"?}``, where
``dependencies`` maps a name to ``{"ok", ...}``. A failed check says why in ``detail``,
without credentials (URLs are never echoed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.dependencies import KNOWN, health_name, redis_check
from services.common.kafka_probe import describe
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
    """Asks each service how it and its dependencies are (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        grpc_health: dict[str, health_pb2_grpc.HealthStub],
        redis: Any = None,
    ):
        self._settings = settings
        self._redis = redis
        self._timeout = settings.health_timeout_s
        self._grpc_health = grpc_health
        self._http = httpx.AsyncClient(timeout=self._timeout)

    async def close(self) -> None:
        await self._http.aclose()

    async def run(self) -> Report:
        checks: dict[str, Check] = {
            **{name: self._grpc(stub) for name, stub in self._grpc_health.items()},
            "tracking": self._tracking,
        }
        if self._redis is not None:
            checks["gateway"] = self._gateway
        results = await asyncio.gather(*(self._timed(check) for check in checks.values()))
        return dict(zip(checks, results, strict=True))

    async def _timed(self, check: Check) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(check(), self._timeout)
        except Exception as err:
            result = {"ok": False, "detail": describe(err)}
        result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return result

    def _grpc(self, stub: health_pb2_grpc.HealthStub) -> Check:
        async def status(service: str) -> int | None:
            """The service's status, or None when it does not know the name."""
            try:
                answer = await stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=self._timeout
                )
            except grpc.aio.AioRpcError as err:
                if service and err.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
            return int(answer.status)

        async def check() -> dict[str, Any]:
            names = ["", *(health_name(d) for d in KNOWN)]
            overall, *statuses = await asyncio.gather(*(status(n) for n in names))
            dependencies = {
                name: {"ok": answer == health_pb2.HealthCheckResponse.SERVING}
                for name, answer in zip(KNOWN, statuses, strict=True)
                if answer is not None
            }
            down = sorted(name for name, dep in dependencies.items() if not dep["ok"])
            result: dict[str, Any] = {"ok": overall == health_pb2.HealthCheckResponse.SERVING}
            if down:
                result["ok"] = False
                result["detail"] = f"down: {', '.join(down)}"
            elif not result["ok"]:
                result["detail"] = health_pb2.HealthCheckResponse.ServingStatus.Name(overall)
            result["dependencies"] = dependencies
            return result

        return check

    async def _gateway(self) -> dict[str, Any]:
        """The gateway's own Redis: sessions and the sign-in throttle live there."""
        try:
            await redis_check(self._redis)()
            redis: dict[str, Any] = {"ok": True}
        except Exception as err:
            redis = {"ok": False, "detail": describe(err)}
        result: dict[str, Any] = {"ok": redis["ok"], "dependencies": {"redis": redis}}
        if not redis["ok"]:
            result["detail"] = "down: redis (console sign-in and sessions fail; API keys work)"
        return result

    async def _tracking(self) -> dict[str, Any]:
        answer = await self._http.get(f"{self._settings.tracking_url.rstrip('/')}/healthz")
        try:
            dependencies = dict(answer.json()["checks"])
        except (ValueError, KeyError, TypeError):
            raise ConnectionError(f"/healthz answered {answer.status_code}") from None
        result: dict[str, Any] = {"ok": answer.status_code == 200, "dependencies": dependencies}
        if answer.status_code != 200:
            down = sorted(name for name, dep in dependencies.items() if not dep.get("ok"))
            result["detail"] = f"down: {', '.join(down)}" if down else f"HTTP {answer.status_code}"
        return result
