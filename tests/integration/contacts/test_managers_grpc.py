"""ManagerService (issue 18): the console's accounts in contacts, on the real service with
PostgreSQL and Redis. Who may call what, what is stored, and each refusal."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.common.auth import internal_metadata, manager_removed_key
from tests.integration.conftest import RunningService, Workspace
from tests.integration.gateway.conftest import new_workspace
from tests.support import fetchval, unique

OWNER = contacts_pb2.ManagerRole.MANAGER_ROLE_OWNER
VIEWER = contacts_pb2.ManagerRole.MANAGER_ROLE_VIEWER
PASSWORD = "correct horse battery staple"
INTERNAL = internal_metadata("dev-internal-token")


@pytest.fixture
async def stub(
    contacts_service: RunningService,
) -> AsyncIterator[contacts_pb2_grpc.ManagerServiceStub]:
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        yield contacts_pb2_grpc.ManagerServiceStub(channel)


def new_email() -> str:
    return f"{unique('manager')}@example.com"


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, err
    found: dict[str, str] = {}
    for detail in status.details:
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request):
            found.update({v.field: v.description for v in request.field_violations})
    return found


async def create(
    stub: contacts_pb2_grpc.ManagerServiceStub,
    workspace: Workspace,
    email: str,
    role: int = OWNER,
) -> contacts_pb2.Manager:
    answer = await stub.CreateManager(
        contacts_pb2.CreateManagerRequest(email=email, password=PASSWORD, role=role),  # type: ignore[arg-type]
        metadata=workspace.metadata,
    )
    return answer.manager


async def test_a_manager_signs_in_with_the_password_kept_only_as_an_argon2id_hash(
    stub: contacts_pb2_grpc.ManagerServiceStub, workspace: Workspace
) -> None:
    email = new_email()
    created = await create(stub, workspace, email.upper().replace("@EXAMPLE.COM", "@example.com"))
    answer = await stub.AuthenticateManager(
        contacts_pb2.AuthenticateManagerRequest(email=email, password=PASSWORD),
        metadata=INTERNAL,
    )
    assert answer.manager.id == created.id
    assert answer.manager.workspace_id == workspace.id
    assert answer.manager.role == OWNER
    assert answer.workspace_name == "Test shop"
    stored = await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT password_hash FROM contacts.managers WHERE id = $1::uuid",
        created.id,
    )
    assert isinstance(stored, str) and stored.startswith("$argon2id$")
    assert PASSWORD not in stored


async def test_an_unknown_email_and_a_wrong_password_get_the_same_answer(
    stub: contacts_pb2_grpc.ManagerServiceStub, workspace: Workspace
) -> None:
    email = new_email()
    await create(stub, workspace, email)
    wrong_password = await refused(
        stub.AuthenticateManager(
            contacts_pb2.AuthenticateManagerRequest(email=email, password=PASSWORD + "!"),
            metadata=INTERNAL,
        )
    )
    unknown = await refused(
        stub.AuthenticateManager(
            contacts_pb2.AuthenticateManagerRequest(email=new_email(), password=PASSWORD),
            metadata=INTERNAL,
        )
    )
    assert wrong_password.code() == unknown.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong_password.details() == unknown.details() == "wrong e-mail or password"


async def test_only_nudge_services_may_check_a_password(
    stub: contacts_pb2_grpc.ManagerServiceStub, workspace: Workspace
) -> None:
    email = new_email()
    await create(stub, workspace, email)
    err = await refused(
        stub.AuthenticateManager(
            contacts_pb2.AuthenticateManagerRequest(email=email, password=PASSWORD),
            metadata=workspace.metadata,
        )
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_bad_new_manager_is_refused_field_by_field_and_nothing_is_written(
    stub: contacts_pb2_grpc.ManagerServiceStub, workspace: Workspace
) -> None:
    err = await refused(
        stub.CreateManager(
            contacts_pb2.CreateManagerRequest(email="not-an-address", password="short"),
            metadata=workspace.metadata,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err)) == {"email", "password", "role"}
    listed = await stub.ListManagers(
        contacts_pb2.ListManagersRequest(), metadata=workspace.metadata
    )
    assert list(listed.managers) == []


async def test_an_email_has_one_account_across_workspaces(
    stub: contacts_pb2_grpc.ManagerServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    email = new_email()
    await create(stub, workspace, email)
    other = await new_workspace(contacts_service)
    err = await refused(create(stub, other, email.upper()))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = await stub.ListManagers(contacts_pb2.ListManagersRequest(), metadata=other.metadata)
    assert list(listed.managers) == []


async def test_another_workspaces_managers_are_neither_listed_nor_removable(
    stub: contacts_pb2_grpc.ManagerServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    theirs = await create(stub, workspace, new_email(), VIEWER)
    other = await new_workspace(contacts_service)
    listed = await stub.ListManagers(contacts_pb2.ListManagersRequest(), metadata=other.metadata)
    assert theirs.id not in [m.id for m in listed.managers]
    err = await refused(
        stub.RemoveManager(
            contacts_pb2.RemoveManagerRequest(manager_id=theirs.id), metadata=other.metadata
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # The operator's way (internal token with the workspace header) is scoped the same way.
    err = await refused(
        stub.RemoveManager(
            contacts_pb2.RemoveManagerRequest(manager_id=theirs.id),
            metadata=internal_metadata("dev-internal-token", other.id),
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListManagers(
        contacts_pb2.ListManagersRequest(), metadata=workspace.metadata
    )
    assert theirs.id in [m.id for m in listed.managers]


async def test_the_last_owner_stays_and_a_removed_manager_is_marked_for_the_sessions(
    stub: contacts_pb2_grpc.ManagerServiceStub, workspace: Workspace
) -> None:
    owner = await create(stub, workspace, new_email())
    err = await refused(
        stub.RemoveManager(
            contacts_pb2.RemoveManagerRequest(manager_id=owner.id), metadata=workspace.metadata
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    viewer = await create(stub, workspace, new_email(), VIEWER)
    await stub.RemoveManager(
        contacts_pb2.RemoveManagerRequest(manager_id=viewer.id), metadata=workspace.metadata
    )
    listed = await stub.ListManagers(
        contacts_pb2.ListManagersRequest(), metadata=workspace.metadata
    )
    assert [m.id for m in listed.managers] == [owner.id]
    redis = aioredis.from_url(os.environ["REDIS_URL"])
    try:
        assert await redis.exists(manager_removed_key(viewer.id))
        assert not await redis.exists(manager_removed_key(owner.id))
    finally:
        await redis.aclose()
