"""The /healthz report cache, how failed checks are described, and how a service's own
dependencies are read from its grpc.health.v1."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.kafka_probe import describe
from services.gateway.adapters.health import CachedChecks, DependencyChecks
from services.gateway.bootstrap import create_app
from services.gateway.config import Settings
from tests.unit.gateway.fakes import FakeChecks, fake_backends, rpc_error

UP = {"postgres": {"ok": True, "latency_ms": 1.0}}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DOWN = {"postgres": {"ok": False, "latency_ms": 1.0, "detail": "timed out"}}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_report_is_reused_within_the_ttl_and_renewed_after() -> None:
    checks, clock = FakeChecks(UP), Clock()
    cached = CachedChecks(checks, ttl_s=1.0, clock=clock)
    assert await cached.run() == UP
    checks.report = DOWN
    clock.now += 0.999
    assert await cached.run() == UP
    assert checks.runs == 1
    clock.now += 0.001
    assert await cached.run() == DOWN
    assert checks.runs == 2


async def test_a_ttl_of_zero_runs_every_time() -> None:
    checks = FakeChecks(UP)
    cached = CachedChecks(checks, ttl_s=0)
    for _ in range(3):
        await cached.run()
    assert checks.runs == 3


async def test_callers_during_a_round_wait_for_it_instead_of_starting_their_own() -> None:
    release = asyncio.Event()

    class SlowChecks:
        runs = 0

        async def run(self) -> dict[str, dict[str, Any]]:
            self.runs += 1
            await release.wait()
            return UP

    slow = SlowChecks()
    cached = CachedChecks(slow, ttl_s=1.0, clock=Clock())
    flood = [asyncio.create_task(cached.run()) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*flood) == [UP] * 50
    assert slow.runs == 1


async def test_the_app_caches_healthz_for_the_configured_time() -> None:
    checks = FakeChecks(UP)
    app = create_app(Settings(health_cache_s=60), backends=fake_backends(), checks=checks)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway") as http,
    ):
        first = await http.get("/healthz")
        checks.report = DOWN
        second = await http.get("/healthz")
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.headers["cache-control"] == "no-store"
    assert checks.runs == 1


def test_failures_are_described_briefly() -> None:
    assert describe(TimeoutError()) == "timed out"
    assert describe(ConnectionError("no broker")) == "ConnectionError: no broker"
    assert describe(OSError()) == "OSError: OSError"
    unavailable = rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
    assert describe(unavailable) == "UNAVAILABLE: connection refused"
    assert len(describe(RuntimeError("x" * 1000))) == 200


async def test_a_services_dependencies_are_read_from_its_grpc_health() -> None:
    """The gateway asks ``""`` and ``dependency.<name>``; names a service does not report
    are left out; a dependency down makes the service not ok, naming it."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    settings = Settings(health_timeout_s=2)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            checks = DependencyChecks(settings, {"campaigns": health_pb2_grpc.HealthStub(channel)})
            try:
                await servicer.set("dependency.postgres", SERVING)
                await servicer.set("dependency.redis", SERVING)
                up = (await checks.run())["campaigns"]
                await servicer.set("dependency.postgres", NOT_SERVING)
                await servicer.set("", NOT_SERVING)
                down = (await checks.run())["campaigns"]
            finally:
                await checks.close()
    finally:
        await server.stop(None)
    assert up["ok"] and up["dependencies"] == {"postgres": {"ok": True}, "redis": {"ok": True}}
    assert not down["ok"] and down["detail"] == "down: postgres"
    assert down["dependencies"] == {"postgres": {"ok": False}, "redis": {"ok": True}}


class Redis:
    """The gateway's Redis as health sees it: a PING that answers or fails."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.pings = 0

    async def ping(self) -> bool:
        self.pings += 1
        if self.error is not None:
            raise self.error
        return True


async def gateway_report(redis: Redis | None) -> dict[str, Any] | None:
    """The gateway's own entry of a round of checks (none answer but the Redis)."""
    checks = DependencyChecks(
        Settings(health_timeout_s=1, tracking_url="http://127.0.0.1:9"), {}, redis
    )
    try:
        return (await checks.run()).get("gateway")
    finally:
        await checks.close()


async def test_the_gateways_own_redis_is_reported_and_its_loss_degrades_the_report() -> None:
    """Sessions and the sign-in throttle live in the gateway's Redis: without it nobody can
    sign in to the console, so /healthz says so (API keys still work)."""
    up, down = Redis(), Redis(ConnectionError("Connection refused"))
    fine, lost = await gateway_report(up), await gateway_report(down)
    assert fine is not None and fine["ok"] and fine["dependencies"] == {"redis": {"ok": True}}
    assert lost is not None and not lost["ok"] and lost["detail"].startswith("down: redis")
    assert lost["dependencies"]["redis"]["ok"] is False
    assert up.pings == 1 and down.pings == 1
    # Without a Redis of its own (apps in unit tests), no gateway entry at all.
    assert await gateway_report(None) is None
