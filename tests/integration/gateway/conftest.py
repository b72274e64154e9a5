"""The gateway in-process on a free port, in front of the real contacts service.

Segmentation, campaigns, triggers and delivery are pointed at ports where nothing listens
(their routes answer 503 and /healthz names them), unless a test starts stand-ins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.conftest import RunningService, Workspace
from tests.integration.tracking.conftest import HttpService, run_http, spans, tracking_service
from tests.support import free_port, unique

__all__ = ["spans", "tracking_service"]  # fixtures shared with the tracking tests

MAX_BODY_BYTES = 4096


def nowhere() -> str:
    """An address where no server listens."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
async def gateway(
    contacts_service: RunningService, spans: InMemorySpanExporter
) -> AsyncIterator[HttpService]:
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings

    settings = Settings(
        bind_host="127.0.0.1",
        http_port=free_port(),
        max_body_bytes=MAX_BODY_BYTES,
        contacts_addr=contacts_service.address,
        segmentation_addr=nowhere(),
        campaigns_addr=nowhere(),
        triggers_addr=nowhere(),
        delivery_addr=nowhere(),
        tracking_url=f"http://{nowhere()}",
        health_timeout_s=1.0,
    )
    async with run_http(serve, settings) as running:
        yield running


async def new_workspace(contacts: RunningService) -> Workspace:
    async with grpc.aio.insecure_channel(contacts.address) as channel:
        answer = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Other shop", slug=unique("ws")),
            metadata=(("authorization", "Admin test-admin-token"),),
        )
    return Workspace(id=answer.workspace_id, api_key=answer.api_key)
