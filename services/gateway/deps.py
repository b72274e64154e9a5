"""What routes depend on, as ``Annotated`` aliases: the caller and the backends.

The gateway does not judge API keys: it requires one and forwards it as gRPC metadata
(``authorization: Bearer <key>``), and each service verifies it (contacts in its own table,
the others through contacts with a Redis cache).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar, cast

import grpc
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from google.protobuf.message import Message
from opentelemetry import trace

from services.common.tracing import message_ids
from services.gateway import problems
from services.gateway.adapters.grpc import Backends
from services.gateway.adapters.health import HealthChecks
from services.gateway.config import Settings

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


async def get_caller(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    settings: SettingsDep,
) -> Caller:
    if credentials is None:
        raise problems.unauthenticated("send 'Authorization: Bearer <API key>'")
    if not _CREDENTIAL.match(credentials.credentials):
        raise problems.unauthenticated("malformed API key")
    return Caller(
        metadata=(("authorization", f"Bearer {credentials.credentials}"),),
        timeout_s=settings.rpc_timeout_s,
    )


CallerDep = Annotated[Caller, Depends(get_caller)]
