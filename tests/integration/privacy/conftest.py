"""Fixtures of the privacy tests: a contacts service of their own whose peers (segmentation,
campaigns, triggers, delivery) are a TCP listener that accepts and never answers, so every
peer's part of an export times out; and gRPC helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.support import free_port, unique

ADMIN_TOKEN = "test-admin-token"
EXPORT_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
async def silent_peer() -> AsyncIterator[str]:
    """The address of a server that accepts connections and never says a word (no HTTP/2
    settings, no answer): a peer that is up but does not answer in time."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
async def privacy_contacts(
    infra: dict[str, str], silent_peer: str
) -> AsyncIterator[RunningService]:
    from services.contacts.bootstrap import serve
    from services.contacts.config import Settings

    port = free_port()
    settings = Settings(
        grpc_port=port,
        admin_token=ADMIN_TOKEN,
        segmentation_addr=silent_peer,
        campaigns_addr=silent_peer,
        triggers_addr=silent_peer,
        delivery_addr=silent_peer,
        privacy_export_timeout_s=EXPORT_TIMEOUT_S,
    )
    async with run_in_process(serve, settings, port) as running:
        yield running


async def new_workspace(contacts: RunningService) -> Workspace:
    async with grpc.aio.insecure_channel(contacts.address) as channel:
        answer = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Privacy shop", slug=unique("privacy")),
            metadata=(("authorization", f"Admin {ADMIN_TOKEN}"),),
        )
    return Workspace(id=answer.workspace_id, api_key=answer.api_key)


@pytest.fixture
async def ws(privacy_contacts: RunningService) -> Workspace:
    return await new_workspace(privacy_contacts)
