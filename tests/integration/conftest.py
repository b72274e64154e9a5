"""Fixtures for integration tests: services started in-process on real infrastructure.

``infra`` (tests/conftest.py) starts PostgreSQL, Redis, Kafka and the SMTP sink and exports
their URLs into ``os.environ``; the fixtures here start a service's own ``serve`` coroutine
on a free port, as ``python -m services.<name>`` would, and stop it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import eventually, free_port, unique


@dataclass
class RunningService:
    address: str
    task: asyncio.Task[None]
    stop: asyncio.Event


@dataclass
class Workspace:
    id: str
    api_key: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),)


async def wait_grpc_serving(address: str, timeout: float = 20.0) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return answer.status == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving, timeout=timeout)


@contextlib.asynccontextmanager
async def run_in_process(
    serve: Callable[[Any, asyncio.Event], Awaitable[None]], settings: Any, port: int
) -> AsyncIterator[RunningService]:
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    address = f"127.0.0.1:{port}"
    try:
        await wait_grpc_serving(address)
        yield RunningService(address=address, task=task, stop=stop)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


@pytest.fixture(scope="session")
async def contacts_service(infra: dict[str, str]) -> AsyncIterator[RunningService]:
    from services.contacts.bootstrap import serve
    from services.contacts.config import Settings

    port = free_port()
    os.environ["NUDGE_CONTACTS_ADDR"] = f"127.0.0.1:{port}"
    os.environ["NUDGE_ADMIN_TOKEN"] = "test-admin-token"
    settings = Settings(grpc_port=port)
    async with run_in_process(serve, settings, port) as running:
        yield running


@pytest.fixture
async def workspace(contacts_service: RunningService) -> Workspace:
    """A new workspace (unique slug) and its API key, made through the public RPC."""
    from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        answer = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Test shop", slug=unique("ws")),
            metadata=(("authorization", "Admin test-admin-token"),),
        )
    return Workspace(id=answer.workspace_id, api_key=answer.api_key)
