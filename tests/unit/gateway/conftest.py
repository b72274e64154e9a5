from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from services.gateway.adapters.grpc import Backends
from services.gateway.bootstrap import create_app
from services.gateway.config import Settings
from tests.unit.gateway.fakes import FakeChecks, FakeStub, fake_backends

KEY = "nk_0123456789abcdef_" + "k" * 43
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Gateway:
    http: httpx.AsyncClient
    backends: Backends
    checks: FakeChecks

    @property
    def contacts(self) -> FakeStub:
        return self.backends.contacts  # type: ignore[return-value]

    @property
    def segments(self) -> FakeStub:
        return self.backends.segments  # type: ignore[return-value]

    @property
    def campaigns(self) -> FakeStub:
        return self.backends.campaigns  # type: ignore[return-value]

    @property
    def delivery(self) -> FakeStub:
        return self.backends.delivery  # type: ignore[return-value]


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    backends = fake_backends()
    checks = FakeChecks({"postgres": {"ok": True, "latency_ms": 1.0}})
    # No health report cache: each test sees the report it sets (test_health covers it).
    settings = Settings(max_body_bytes=1024, health_cache_s=0)
    app = create_app(settings, backends=backends, checks=checks)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://gateway") as http,
    ):
        yield Gateway(http, backends, checks)
