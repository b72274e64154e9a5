"""The gateway's /healthz reports each service's own dependencies, as the service sees
them over grpc.health.v1: with campaigns' PostgreSQL cut off, /healthz is 503 and names
campaigns' postgres; once it is back, 200 again. Campaigns runs as its own process
(``python -m services.campaigns``), its database reached through a TCP proxy that the test
cuts; the gateway holds no database settings at all."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.integration.common.tcp_proxy import Proxy
from tests.integration.conftest import wait_grpc_serving
from tests.integration.tracking.conftest import HttpService, run_http
from tests.support import eventually, free_port


@pytest.fixture
async def database_proxy(infra: dict[str, str]) -> AsyncIterator[tuple[Proxy, str]]:
    """The proxy, and a DATABASE_URL through it."""
    proxy = Proxy.for_url(os.environ["DATABASE_URL"])
    await proxy.start()
    yield proxy, proxy.url_through(os.environ["DATABASE_URL"])
    await proxy.cut()


@pytest.fixture
async def campaigns(
    database_proxy: tuple[Proxy, str], tmp_path: Path
) -> AsyncIterator[tuple[Proxy, str]]:
    """``python -m services.campaigns`` on the proxied database, checking every 0.2 s."""
    proxy, database_url = database_proxy
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CAMPAIGNS_GRPC_PORT": str(port),
        "NUDGE_HEALTH_INTERVAL_S": "0.2",
        "NUDGE_DEPENDENCY_TIMEOUT_S": "1",
    }
    log = tmp_path / "campaigns.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.campaigns", env=env, stdout=out, stderr=out
        )
    try:
        await wait_grpc_serving(f"127.0.0.1:{port}", timeout=60)
        yield proxy, f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.fixture
async def serving_stand_ins() -> AsyncIterator[dict[str, str]]:
    """grpc.health.v1 servers answering SERVING, for the services this test does not run."""
    servers, addresses = [], {}
    for name in ("contacts", "segmentation", "triggers", "delivery"):
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        addresses[f"{name}_addr"] = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        await server.start()
        servers.append(server)
    yield addresses
    for server in servers:
        await server.stop(grace=None)


async def test_a_services_database_down_shows_in_the_gateways_healthz(
    campaigns: tuple[Proxy, str],
    serving_stand_ins: dict[str, str],
    tracking_service: HttpService,
) -> None:
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings

    proxy, campaigns_addr = campaigns
    settings = Settings(
        http_port=free_port(),
        campaigns_addr=campaigns_addr,
        tracking_url=tracking_service.base_url,
        health_cache_s=0,
        **serving_stand_ins,
    )
    async with (
        run_http(serve, settings) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as client,
    ):

        async def report(status: int) -> dict[str, Any] | None:
            answer = await client.get("/healthz")
            return answer.json() if answer.status_code == status else None

        healthy = await eventually(lambda: report(200), timeout=30)
        assert healthy["checks"]["campaigns"]["dependencies"] == {
            "postgres": {"ok": True},
            "redis": {"ok": True},
        }

        await proxy.cut()
        degraded = await eventually(lambda: report(503), timeout=30)
        assert degraded["status"] == "degraded"
        assert [n for n, c in degraded["checks"].items() if not c["ok"]] == ["campaigns"]
        assert degraded["checks"]["campaigns"]["detail"] == "down: postgres"
        assert degraded["checks"]["campaigns"]["dependencies"] == {
            "postgres": {"ok": False},
            "redis": {"ok": True},
        }

        await proxy.start()  # the database is back, on the same address
        await eventually(lambda: report(200), timeout=30)
