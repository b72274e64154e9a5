"""``/v1/session``: the web console's sign-in, who is signed in, and sign-out; and
``/v1/managers``: the workspace's console accounts (the owner's, like the API keys).

How sessions, cookies, CSRF tokens, roles and the sign-in throttle work, and why: see
services/gateway/sessions.py. The passwords are checked by contacts (ManagerService,
services/contacts/managers.py), which the gateway asks with the internal token.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Literal, cast

import grpc
from fastapi import APIRouter, Path, Request, Response
from nudge.contacts.v1 import contacts_pb2
from pydantic import Field, StringConstraints
from redis.exceptions import RedisError

from services.common.auth import internal_metadata
from services.gateway import problems, sessions
from services.gateway.deps import (
    BackendsDep,
    CallerDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    forbidden,
    sessions_unavailable,
)
from services.gateway.schemas import UUID_PATTERN, Email, ResponseModel, StrictModel

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/session", tags=["session"])
managers_router = APIRouter(prefix="/v1/managers", tags=["session"])

RoleName = Literal["owner", "manager", "viewer"]
_ROLE_TO_PROTO = {
    sessions.OWNER: contacts_pb2.ManagerRole.MANAGER_ROLE_OWNER,
    sessions.MANAGER: contacts_pb2.ManagerRole.MANAGER_ROLE_MANAGER,
    sessions.VIEWER: contacts_pb2.ManagerRole.MANAGER_ROLE_VIEWER,
}
_ROLE_FROM_PROTO = {number: name for name, number in _ROLE_TO_PROTO.items()}


class SignIn(StrictModel):
    email: Annotated[str, StringConstraints(min_length=1, max_length=320)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class ManagerOut(ResponseModel):
    id: str
    email: str
    role: RoleName
    created_at: datetime | None = None


class WorkspaceOut(ResponseModel):
    id: str
    name: str


class SessionOut(ResponseModel):
    manager: ManagerOut
    workspace: WorkspaceOut
    csrf_token: str = Field(
        description="Send it as `X-CSRF-Token` with every POST, PUT, PATCH and DELETE made"
        " with this session's cookie."
    )
    expires_at: datetime = Field(description="The session ends then at the latest.")


def _session_json(session: sessions.Session) -> SessionOut:
    return SessionOut(
        manager=ManagerOut(
            id=session.manager_id, email=session.email, role=cast(RoleName, session.role)
        ),
        workspace=WorkspaceOut(id=session.workspace_id, name=session.workspace_name),
        csrf_token=session.csrf_token,
        expires_at=datetime.fromtimestamp(session.expires_at, UTC),
    )


def _client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _too_many(retry_after: int) -> problems.Problem:
    return problems.Problem(
        429,
        "rate-limited",
        "Too many requests",
        f"too many failed sign-ins; try again in {retry_after} seconds",
        headers={"Retry-After": str(retry_after)},
    )


@router.post(
    "",
    response_model=SessionOut,
    summary="Sign in to the console",
    responses=problems.responses(400, 401, 413, 422, 429, 503),
)
async def sign_in(
    body: SignIn,
    request: Request,
    response: Response,
    backends: BackendsDep,
    settings: SettingsDep,
    store: SessionsDep,
) -> SessionOut:
    """Checks the manager's e-mail and password, and sets the session cookie
    (`nudge_session`; `__Host-nudge_session` over https). The same 401 answers an unknown
    e-mail and a wrong password; after 5 failures in 15 minutes for one e-mail or from one
    address, 429 with `Retry-After`."""
    throttle: sessions.LoginThrottle = request.app.state.login_throttle
    address = _client_address(request)
    assert backends.managers is not None
    try:
        wait = await throttle.retry_after(body.email, address)
        if wait:
            raise _too_many(wait)
        # Before the password check: see sessions.py on role changes.
        signed_in_us = await store.now_us()
        try:
            answer: contacts_pb2.AuthenticateManagerResponse = (
                await backends.managers.AuthenticateManager(
                    contacts_pb2.AuthenticateManagerRequest(
                        email=body.email, password=body.password
                    ),
                    metadata=internal_metadata(settings.internal_token),
                    timeout=settings.rpc_timeout_s,
                )
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                await throttle.failed(body.email, address)
                raise problems.unauthenticated("wrong e-mail or password") from err
            raise problems.from_rpc_error(err, "contacts") from err
        await throttle.succeeded(body.email)
        manager = answer.manager
        session_id, session = await store.create(
            manager_id=manager.id,
            email=manager.email,
            role=_ROLE_FROM_PROTO.get(manager.role, "viewer"),
            workspace_id=manager.workspace_id,
            workspace_name=answer.workspace_name,
            signed_in_us=signed_in_us,
        )
    except RedisError as err:
        log.warning("console sessions unavailable: Redis does not answer", exc_info=True)
        raise sessions_unavailable() from err
    sessions.set_cookie(request, response, session_id)
    return _session_json(session)


def _required(session: sessions.Session | None) -> sessions.Session:
    if session is None:
        raise problems.unauthenticated("not signed in to the console")
    return session


@router.get(
    "",
    response_model=SessionOut,
    summary="Who is signed in",
    responses=problems.responses(401, 503),
)
async def who_am_i(session: SessionDep, backends: BackendsDep, settings: SettingsDep) -> SessionOut:
    """The session of the cookie: the manager, the workspace and the CSRF token. The
    workspace's name is read again (another manager may have renamed it since this one signed
    in); when contacts does not answer, the name kept at sign-in stands."""
    current = _required(session)
    answer = _session_json(current)
    try:
        workspace: contacts_pb2.WorkspaceSettings = await backends.workspaces.GetWorkspaceSettings(
            contacts_pb2.GetWorkspaceSettingsRequest(),
            metadata=internal_metadata(settings.internal_token, current.workspace_id),
            timeout=settings.rpc_timeout_s,
        )
    except grpc.aio.AioRpcError as err:
        log.warning("the workspace's name kept at sign-in stands: %s", err.code().name)
        return answer
    return answer.model_copy(
        update={"workspace": WorkspaceOut(id=current.workspace_id, name=workspace.name)}
    )


@router.delete(
    "",
    status_code=204,
    summary="Sign out",
    responses=problems.responses(401, 403, 503),
)
async def sign_out(
    request: Request, session: SessionDep, store: SessionsDep, response: Response
) -> Response:
    """Ends the session at once (its cookie no longer works anywhere) and clears the cookie.
    Needs `X-CSRF-Token`."""
    current = _required(session)
    if not sessions.csrf_ok(request, current):
        raise forbidden(f"signing out needs '{sessions.CSRF_HEADER}'")
    session_id = sessions.cookie_of(request)
    assert session_id is not None
    try:
        await store.delete(session_id)
    except RedisError as err:
        raise sessions_unavailable() from err
    answer = Response(status_code=204)
    sessions.clear_cookie(request, answer)
    return answer


# ------------------------------------------------------------------ the team


class ManagerIn(StrictModel):
    email: Email = Field(description="Signs in with it; one account per e-mail in Nudge.")
    password: Annotated[str, StringConstraints(min_length=12, max_length=1024)] = Field(
        description="At least 12 characters."
    )
    role: RoleName


class ManagerList(ResponseModel):
    managers: list[ManagerOut]


def manager_json(manager: contacts_pb2.Manager) -> ManagerOut:
    return ManagerOut(
        id=manager.id,
        email=manager.email,
        role=cast(RoleName, _ROLE_FROM_PROTO.get(manager.role, "viewer")),
        created_at=manager.created_at.ToDatetime(UTC) if manager.HasField("created_at") else None,
    )


ManagerId = Annotated[str, Path(pattern=UUID_PATTERN, description="The manager's id (a UUID).")]


@managers_router.get(
    "",
    response_model=ManagerList,
    summary="List the workspace's console accounts",
    responses=problems.responses(401, 403, 503),
)
async def list_managers(caller: CallerDep, backends: BackendsDep) -> ManagerList:
    """Every manager of the workspace, by e-mail. A session needs the owner's role."""
    assert backends.managers is not None
    answer: contacts_pb2.ListManagersResponse = await caller.call(
        backends.managers.ListManagers, contacts_pb2.ListManagersRequest(), service="contacts"
    )
    return ManagerList(managers=[manager_json(m) for m in answer.managers])


@managers_router.post(
    "",
    status_code=201,
    response_model=ManagerOut,
    summary="Create a console account",
    responses=problems.responses(400, 401, 403, 409, 413, 422, 503),
)
async def create_manager(body: ManagerIn, caller: CallerDep, backends: BackendsDep) -> ManagerOut:
    """A new manager of the workspace, who signs in with this e-mail and password. An e-mail
    has one account across all workspaces (409 when it has one)."""
    assert backends.managers is not None
    answer: contacts_pb2.CreateManagerResponse = await caller.call(
        backends.managers.CreateManager,
        contacts_pb2.CreateManagerRequest(
            email=body.email, password=body.password, role=_ROLE_TO_PROTO[body.role]
        ),
        service="contacts",
    )
    return manager_json(answer.manager)


class ManagerPatchIn(StrictModel):
    role: RoleName = Field(description="The new role.")


@managers_router.patch(
    "/{manager_id}",
    response_model=ManagerOut,
    summary="Change a console account's role",
    responses=problems.responses(400, 401, 403, 404, 409, 413, 422, 503),
)
async def update_manager(
    manager_id: ManagerId, body: ManagerPatchIn, caller: CallerDep, backends: BackendsDep
) -> ManagerOut:
    """Gives the manager another role and ends their sessions at once: they sign in again
    and get the new role (the same role changes nothing). The last owner cannot be demoted
    (409)."""
    assert backends.managers is not None
    answer: contacts_pb2.UpdateManagerResponse = await caller.call(
        backends.managers.UpdateManager,
        contacts_pb2.UpdateManagerRequest(manager_id=manager_id, role=_ROLE_TO_PROTO[body.role]),
        service="contacts",
    )
    return manager_json(answer.manager)


@managers_router.delete(
    "/{manager_id}",
    response_model=ManagerOut,
    summary="Remove a console account",
    responses=problems.responses(401, 403, 404, 409, 422, 503),
)
async def remove_manager(
    manager_id: ManagerId, caller: CallerDep, backends: BackendsDep
) -> ManagerOut:
    """Removes the manager and ends their sessions at once; never the last owner (409)."""
    assert backends.managers is not None
    answer: contacts_pb2.RemoveManagerResponse = await caller.call(
        backends.managers.RemoveManager,
        contacts_pb2.RemoveManagerRequest(manager_id=manager_id),
        service="contacts",
    )
    return manager_json(answer.manager)
