"""ManagerService (issue 18): the console's accounts in contacts, on the real service with
PostgreSQL and Redis. Who may call what, what is stored, and each refusal."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis
from argon2 import PasswordHasher
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.common.auth import internal_metadata, manager_removed_key, sessions_ended_key
from tests.integration.conftest import RunningService, Workspace
from tests.integration.gateway.conftest import new_workspace
from tests.support import fetchval, unique

OWNER = contacts_pb2.ManagerRole.MANAGER_ROLE_OWNER
MANAGER = contacts_pb2.ManagerRole.MANAGER_ROLE_MANAGER
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


async def test_a_hash_of_weaker_parameters_is_replaced_at_sign_in_for_that_manager_only(
    stub: contacts_pb2_grpc.ManagerServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    """argon2's parameters rise over the years: a hash made with older (weaker) ones is
    rehashed with today's at the next successful sign-in, in the manager's own row."""
    weak = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
    email, other_email = new_email(), new_email()
    other_workspace = await new_workspace(contacts_service)
    manager = await create(stub, workspace, email)
    other = await create(stub, other_workspace, other_email)
    dsn = os.environ["DATABASE_URL"]
    for row in (manager, other):
        await fetchval(
            dsn,
            "UPDATE contacts.managers SET password_hash = $2 WHERE id = $1::uuid RETURNING 1",
            row.id,
            weak,
        )
    assert PasswordHasher().check_needs_rehash(weak)  # today's parameters are stronger

    answer = await stub.AuthenticateManager(
        contacts_pb2.AuthenticateManagerRequest(email=email, password=PASSWORD),
        metadata=INTERNAL,
    )
    assert answer.manager.id == manager.id
    stored = await fetchval(
        dsn, "SELECT password_hash FROM contacts.managers WHERE id = $1::uuid", manager.id
    )
    assert isinstance(stored, str) and stored != weak
    assert not PasswordHasher().check_needs_rehash(stored)
    assert PasswordHasher().verify(stored, PASSWORD)
    # The other workspace's manager, same weak hash, did not sign in: untouched.
    kept = await fetchval(
        dsn, "SELECT password_hash FROM contacts.managers WHERE id = $1::uuid", other.id
    )
    assert kept == weak
    # And the new hash signs in as well.
    again = await stub.AuthenticateManager(
        contacts_pb2.AuthenticateManagerRequest(email=email, password=PASSWORD),
        metadata=INTERNAL,
    )
    assert again.manager.id == manager.id


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


async def update(
    stub: contacts_pb2_grpc.ManagerServiceStub, workspace: Workspace, manager_id: str, role: int
) -> contacts_pb2.Manager:
    answer = await stub.UpdateManager(
        contacts_pb2.UpdateManagerRequest(manager_id=manager_id, role=role),  # type: ignore[arg-type]
        metadata=workspace.metadata,
    )
    return answer.manager


async def test_a_role_change_is_stored_and_marks_the_managers_sessions_ended(
    stub: contacts_pb2_grpc.ManagerServiceStub, workspace: Workspace
) -> None:
    await create(stub, workspace, new_email())
    email = new_email()
    manager = await create(stub, workspace, email, MANAGER)
    redis = aioredis.from_url(os.environ["REDIS_URL"])
    try:
        seconds, micros = await redis.time()
        changed = await update(stub, workspace, manager.id, VIEWER)
        marked = await redis.get(sessions_ended_key(manager.id))
        assert await redis.ttl(sessions_ended_key(manager.id)) > 0
    finally:
        await redis.aclose()
    assert changed.role == VIEWER and changed.id == manager.id
    assert marked is not None and int(marked) >= seconds * 1_000_000 + micros
    answer = await stub.AuthenticateManager(
        contacts_pb2.AuthenticateManagerRequest(email=email, password=PASSWORD),
        metadata=INTERNAL,
    )
    assert answer.manager.role == VIEWER


async def test_the_last_owner_cannot_be_demoted_but_one_of_two_can(
    stub: contacts_pb2_grpc.ManagerServiceStub, workspace: Workspace
) -> None:
    owner = await create(stub, workspace, new_email())
    err = await refused(update(stub, workspace, owner.id, MANAGER))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "last owner" in err.details()
    assert (await update(stub, workspace, owner.id, OWNER)).role == OWNER  # no change: fine
    second = await create(stub, workspace, new_email(), VIEWER)
    assert (await update(stub, workspace, second.id, OWNER)).role == OWNER
    assert (await update(stub, workspace, owner.id, VIEWER)).role == VIEWER
    err = await refused(update(stub, workspace, second.id, VIEWER))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = await stub.ListManagers(
        contacts_pb2.ListManagersRequest(), metadata=workspace.metadata
    )
    assert {m.id: m.role for m in listed.managers} == {owner.id: VIEWER, second.id: OWNER}


async def test_owners_demoting_each_other_at_once_leave_one_owner(
    stub: contacts_pb2_grpc.ManagerServiceStub, workspace: Workspace
) -> None:
    owners = [await create(stub, workspace, new_email()) for _ in range(8)]
    outcomes = await asyncio.gather(
        *(update(stub, workspace, owner.id, VIEWER) for owner in owners),
        return_exceptions=True,
    )
    refusals = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert [r.code() for r in refusals] == [grpc.StatusCode.FAILED_PRECONDITION]
    listed = await stub.ListManagers(
        contacts_pb2.ListManagersRequest(), metadata=workspace.metadata
    )
    assert [m.role for m in listed.managers].count(OWNER) == 1


async def test_a_bad_role_change_is_refused_field_by_field(
    stub: contacts_pb2_grpc.ManagerServiceStub, workspace: Workspace
) -> None:
    err = await refused(update(stub, workspace, "not-a-uuid", 7))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err)) == {"manager_id", "role"}


async def test_another_workspaces_manager_is_not_found_and_keeps_its_role(
    stub: contacts_pb2_grpc.ManagerServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    theirs = await create(stub, workspace, new_email(), MANAGER)
    other = await new_workspace(contacts_service)
    err = await refused(update(stub, other, theirs.id, VIEWER))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await refused(update(stub, workspace, str(uuid.uuid4()), VIEWER))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListManagers(
        contacts_pb2.ListManagersRequest(), metadata=workspace.metadata
    )
    assert [m.role for m in listed.managers if m.id == theirs.id] == [MANAGER]


async def test_the_cli_changes_a_role_and_says_why_it_cannot(
    contacts_service: RunningService, workspace: Workspace
) -> None:
    async def nudge(*arguments: str) -> tuple[int, str, str]:
        """``nudge managers ...`` as a process (asyncio's, since contacts runs on this loop)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "managers",
            *arguments,
            "--addr",
            contacts_service.address,
            "--api-key",
            workspace.api_key,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NUDGE_MANAGER_PASSWORD": PASSWORD},
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    made = [
        await nudge("create", "--email", new_email(), "--role", r) for r in ("owner", "manager")
    ]
    assert [code for code, _, _ in made] == [0, 0], made[0][2]
    owner, manager = (json.loads(out) for _, out, _ in made)
    code, out, err = await nudge("role", manager["id"], "viewer")
    assert code == 0, err
    assert json.loads(out)["role"] == "viewer"
    code, _, err = await nudge("role", owner["id"], "manager")
    assert code == 1
    assert "FAILED_PRECONDITION" in err and "last owner" in err
    _, out, _ = await nudge("list")
    listed = [json.loads(line) for line in out.splitlines()]
    assert {m["id"]: m["role"] for m in listed} == {owner["id"]: "owner", manager["id"]: "viewer"}
