"""The gRPC guard interceptor on a real in-process server, with a servicer that misbehaves."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.common.auth import ACTOR_HEADER, Principal, current_actor, internal_metadata
from services.common.context import workspace_id_var
from services.common.errors import NotFound, Unauthenticated
from services.common.grpc_server import start_server
from tests.support import free_port

TOKEN = "internal-token"
KEY = "nk_0123456789abcdef_" + "k" * 43


class Verifier:
    async def verify(self, api_key: str) -> Principal:
        if api_key != KEY:
            raise Unauthenticated("unknown API key")
        return Principal(workspace_id="11111111-1111-1111-1111-111111111111", key_id="k")


class Servicer(contacts_pb2_grpc.ContactServiceServicer):
    async def GetContact(
        self, request: contacts_pb2.GetContactRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.GetContactResponse:
        if request.contact.email == "crash@example.com":
            raise RuntimeError("secret internals: password=hunter2")
        if request.contact.email == "missing@example.com":
            raise NotFound("contact not found")
        return contacts_pb2.GetContactResponse(
            contact=contacts_pb2.Contact(
                workspace_id=workspace_id_var.get(), external_id=current_actor()
            )
        )


@pytest.fixture
async def stub() -> AsyncIterator[contacts_pb2_grpc.ContactServiceStub]:
    port = free_port()
    server = await start_server(
        port=port,
        servicers=[
            (
                contacts_pb2_grpc.add_ContactServiceServicer_to_server,
                Servicer(),
                "nudge.contacts.v1.ContactService",
            )
        ],
        verifier=Verifier(),
        internal_token=TOKEN,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield contacts_pb2_grpc.ContactServiceStub(channel)
    await server.stop(grace=None)


def by_email(email: str) -> contacts_pb2.GetContactRequest:
    return contacts_pb2.GetContactRequest(contact=contacts_pb2.ContactRef(email=email))


async def test_the_key_sets_the_workspace_of_the_call(
    stub: contacts_pb2_grpc.ContactServiceStub,
) -> None:
    answer = await stub.GetContact(
        by_email("a@example.com"), metadata=(("authorization", f"Bearer {KEY}"),)
    )
    assert answer.contact.workspace_id == "11111111-1111-1111-1111-111111111111"


async def test_a_bug_is_internal_and_tells_nothing(
    stub: contacts_pb2_grpc.ContactServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetContact(by_email("crash@example.com"), metadata=internal_metadata(TOKEN))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal error"


async def test_domain_errors_keep_their_code(stub: contacts_pb2_grpc.ContactServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetContact(by_email("missing@example.com"), metadata=internal_metadata(TOKEN))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_internal_call_must_name_a_real_workspace_id(
    stub: contacts_pb2_grpc.ContactServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetContact(
            by_email("a@example.com"), metadata=internal_metadata(TOKEN, "'; drop table x")
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


WORKSPACE = "11111111-1111-1111-1111-111111111111"
MANAGER = "manager:0b6c3f5e-1d2a-4c1e-9f00-000000000001"


async def test_a_change_is_recorded_as_the_manager_the_gateway_acts_for(
    stub: contacts_pb2_grpc.ContactServiceStub,
) -> None:
    """The console's session calls carry the internal token and the manager: what they change
    is the manager's (campaign transitions, published workflows), not "internal"."""
    asked = by_email("a@example.com")
    acting = await stub.GetContact(asked, metadata=internal_metadata(TOKEN, WORKSPACE, MANAGER))
    assert acting.contact.external_id == MANAGER
    assert acting.contact.workspace_id == WORKSPACE
    service = await stub.GetContact(asked, metadata=internal_metadata(TOKEN, WORKSPACE))
    assert service.contact.external_id == "internal"
    # Beside an API key the header means nothing: the key is the caller.
    keyed = await stub.GetContact(
        asked, metadata=(("authorization", f"Bearer {KEY}"), (ACTOR_HEADER, MANAGER))
    )
    assert keyed.contact.external_id == "api_key:k"


@pytest.mark.parametrize("actor", ["manager:", "manager:not-an-id", "internal", "api_key:k"])
async def test_an_internal_call_must_name_a_manager_as_its_actor(
    stub: contacts_pb2_grpc.ContactServiceStub, actor: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetContact(
            by_email("a@example.com"), metadata=internal_metadata(TOKEN, WORKSPACE, actor)
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ACTOR_HEADER in (err.value.details() or "")
