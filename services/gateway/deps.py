"""What routes depend on, as ``Annotated`` aliases: the caller and the backends.

The gateway does not judge API keys: it requires one and forwards it as gRPC metadata
(``authorization: Bearer <key>``), and each service verifies it (contacts in its own table,
the others through contacts with a Redis cache).

Without a key, a console session's cookie will do (sessions.py): the gateway checks the
session, its CSRF token and the manager's role, and calls the services with the internal
token on behalf of the session's workspace.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar, cast

import grpc
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from google.protobuf.message import Message
from opentelemetry import trace
from redis.exceptions import RedisError

from services.common.auth import internal_metadata, manager_actor
from services.common.tracing import message_ids
from services.gateway import problems, sessions
from services.gateway.adapters.grpc import Backends
from services.gateway.adapters.health import HealthChecks
from services.gateway.config import Settings

log = logging.getLogger(__name__)
R = TypeVar("R")

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="A workspace API key: `Authorization: Bearer nk_...`.",
)
# Printable ASCII only: anything else cannot travel as gRPC metadata.
_CREDENTIAL = re.compile(r"^[\x21-\x7e]{1,512}$")


@dataclass(frozen=True)
class Caller:
    """The caller's API key, forwarded on every call, and how long a call may take."""

    metadata: tuple[tuple[str, str], ...]
    timeout_s: float

    async def call(
        self,
        method: Callable[..., Awaitable[R]],
        request: Message,
        *,
        service: str,
        fields: problems.FieldMap | None = None,
    ) -> R:
        """``method(request)`` on behalf of the caller; a failure becomes a :class:`Problem`
        whose field errors are renamed by ``fields`` into the caller's JSON paths."""
        try:
            answer = await method(request, metadata=self.metadata, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as err:
            raise problems.from_rpc_error(err, service, fields) from err
        name_ids(request, answer)
        return answer


def name_ids(*messages: object) -> None:
    """Name the contact and message a call's request or answer names on the HTTP request's
    span (current in a route), so that its trace is found by those ids."""
    span = trace.get_current_span()
    if span.is_recording():
        for message in messages:
            if isinstance(message, Message):
                span.set_attributes(message_ids(message))


async def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


async def get_backends(request: Request) -> Backends:
    return cast(Backends, request.app.state.backends)


async def get_checks(request: Request) -> HealthChecks:
    return cast(HealthChecks, request.app.state.checks)


# Dependencies are coroutines although they do no I/O: FastAPI runs a plain function in a
# worker thread, and the thread hops cost more than the rest of an event's request.
SettingsDep = Annotated[Settings, Depends(get_settings)]
BackendsDep = Annotated[Backends, Depends(get_backends)]
ChecksDep = Annotated[HealthChecks, Depends(get_checks)]


async def get_sessions(request: Request) -> sessions.SessionStore:
    return cast(sessions.SessionStore, request.app.state.sessions)


SessionsDep = Annotated[sessions.SessionStore, Depends(get_sessions)]


async def get_session(request: Request, store: SessionsDep) -> sessions.Session | None:
    """The console session of the request's cookie, if it has a live one."""
    session_id = sessions.cookie_of(request)
    if session_id is None:
        return None
    try:
        return await store.get(session_id)
    except RedisError as err:
        log.warning("console sessions unavailable: Redis does not answer", exc_info=True)
        raise sessions_unavailable() from err


def sessions_unavailable() -> problems.Problem:
    return problems.Problem(
        503, "unavailable", "Service unavailable", "console sessions are unavailable; retry shortly"
    )


SessionDep = Annotated[sessions.Session | None, Depends(get_session)]


def forbidden(detail: str) -> problems.Problem:
    return problems.Problem(403, "forbidden", "Forbidden", detail)


def check_session(request: Request, session: sessions.Session) -> None:
    """CSRF and role checks of a request authenticated by a session's cookie."""
    if not sessions.csrf_ok(request, session):
        raise forbidden(f"a console request that changes something needs '{sessions.CSRF_HEADER}'")
    refusal = sessions.role_refusal(request.method, request.url.path, session.role)
    if refusal is not None:
        raise forbidden(refusal)


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    settings: SettingsDep,
    store: SessionsDep,
) -> Caller:
    if credentials is None:
        session = await get_session(request, store)
        if session is None:
            raise problems.unauthenticated(
                "send 'Authorization: Bearer <API key>', or sign in to the console"
            )
        check_session(request, session)
        return Caller(
            metadata=internal_metadata(
                settings.internal_token, session.workspace_id, manager_actor(session.manager_id)
            ),
            timeout_s=settings.rpc_timeout_s,
        )
    if not _CREDENTIAL.match(credentials.credentials):
        raise problems.unauthenticated("malformed API key")
    return Caller(
        metadata=(("authorization", f"Bearer {credentials.credentials}"),),
        timeout_s=settings.rpc_timeout_s,
    )


CallerDep = Annotated[Caller, Depends(get_caller)]
