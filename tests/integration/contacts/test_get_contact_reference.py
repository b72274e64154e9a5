"""GetContact with a reference that names nobody is the caller's mistake: INVALID_ARGUMENT
with a field violation naming the field, not NOT_FOUND."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from tests.integration.conftest import RunningService, Workspace


def violations(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status details"
    out = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        out.extend((v.field, v.description) for v in bad_request.field_violations)
    return out


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (contacts_pb2.GetContactRequest(), "contact"),
        (contacts_pb2.GetContactRequest(contact=contacts_pb2.ContactRef()), "contact"),
        (
            contacts_pb2.GetContactRequest(contact=contacts_pb2.ContactRef(email="")),
            "contact.email",
        ),
        (
            contacts_pb2.GetContactRequest(contact=contacts_pb2.ContactRef(contact_id="")),
            "contact.contact_id",
        ),
        (
            contacts_pb2.GetContactRequest(contact=contacts_pb2.ContactRef(external_id="")),
            "contact.external_id",
        ),
    ],
    ids=["no-contact", "empty-ref", "empty-email", "empty-id", "empty-external-id"],
)
async def test_a_reference_that_names_nobody_is_an_invalid_argument(
    contacts_service: RunningService,
    workspace: Workspace,
    request_: contacts_pb2.GetContactRequest,
    field: str,
) -> None:
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await contacts_pb2_grpc.ContactServiceStub(channel).GetContact(
                request_, metadata=workspace.metadata
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations(err.value)] == [field]


async def test_a_reference_to_nobody_in_the_workspace_is_still_not_found(
    contacts_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await contacts_pb2_grpc.ContactServiceStub(channel).GetContact(
                contacts_pb2.GetContactRequest(
                    contact=contacts_pb2.ContactRef(email="nobody@example.com")
                ),
                metadata=workspace.metadata,
            )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
