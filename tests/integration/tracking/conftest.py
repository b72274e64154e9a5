"""The tracking service in-process on a free port, and a reader of tracking.events.v1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.topics import TRACKING_EVENTS
from tests.support import eventually, free_port, unique

LINK_SECRET = "integration-link-secret"


@dataclass
class HttpService:
    base_url: str
    settings: Any


@contextlib.asynccontextmanager
async def run_http(
    serve: Callable[[Any, asyncio.Event], Awaitable[None]], settings: Any
) -> AsyncIterator[HttpService]:
    """Run ``serve(settings, stop)`` (uvicorn) until the block ends; waits until it answers."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    base_url = f"http://127.0.0.1:{settings.http_port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:

            async def answering() -> bool:
                if task.done():
                    raise RuntimeError(f"the server stopped at start-up: {task.exception()!r}")
                try:
                    await client.get("/healthz")
                except httpx.TransportError:
                    return False
                return True

            await eventually(answering, timeout=30)
        yield HttpService(base_url, settings)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    """Every span finished in this process from now on (the services run in-process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="session")
async def tracking_service(
    infra: dict[str, str], spans: InMemorySpanExporter
) -> AsyncIterator[HttpService]:
    from services.tracking.bootstrap import serve
    from services.tracking.config import Settings

    settings = Settings(bind_host="127.0.0.1", http_port=free_port(), link_secret=LINK_SECRET)
    async with run_http(serve, settings) as running:
        yield running


@pytest.fixture
async def http(tracking_service: HttpService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=tracking_service.base_url, timeout=10) as client:
        yield client


@pytest.fixture
async def consumer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaConsumer]:
    """A reader of tracking.events.v1 from its start (a group of its own)."""
    reader = AIOKafkaConsumer(
        TRACKING_EVENTS,
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"],
        group_id=unique("tracking-test"),
        auto_offset_reset="earliest",
    )
    await reader.start()
    yield reader
    await reader.stop()
