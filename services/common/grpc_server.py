"""gRPC server bootstrap: tracing, authentication and error mapping, health and reflection.

Every service builds its server with :func:`build_server`. The interceptor chain:
0. :class:`ShieldInterceptor`, outermost, turns any exception no layer below handled into
   ``INTERNAL "internal error"`` (gRPC's own answer would carry the Python exception text);
1. OpenTelemetry's server interceptor continues the caller's trace from the metadata (not
   for health and reflection: probes are not traffic, and its stream wrapper cannot run
   handlers that write with ``context.write``, such as the health service's ``Watch``);
2. :class:`GuardInterceptor` authenticates (API key, or the internal token plus a workspace
   header), puts the workspace in context, turns undecodable requests into
   ``INVALID_ARGUMENT`` and maps domain errors to status codes with details
   (``google.rpc.BadRequest`` field violations for invalid arguments).
"""

from __future__ import annotations

import hmac
import inspect
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from services.common import errors, reflection_v1
from services.common.auth import (
    ACTOR_HEADER,
    MANAGER_ACTOR,
    WORKSPACE_HEADER,
    ApiKeyVerifier,
    Principal,
)
from services.common.context import key_id_var, workspace_id_var
from services.common.ids import is_uuid
from services.common.metrics import GrpcMetricsInterceptor
from services.common.tracing import WORKSPACE, message_ids

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1024 * 1024

_CODES: dict[type[errors.NudgeError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

# Methods that authenticate themselves (admin token) or need only the internal token.
AuthPolicy = dict[str, str]  # full method name -> "none" | "internal"


class _Malformed:
    """Stands for a request body that is not the message the method takes."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _tolerant(
    deserializer: Callable[[bytes], Any] | None, type_name: str
) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data) if deserializer else data
        except DecodeError:
            return _Malformed(type_name)

    return deserialize


async def _well_formed(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Malformed):
            raise errors.InvalidArgument(
                errors.FieldViolation("body", f"not a valid {request.type_name} message")
            )
        yield request


async def abort_with_error(context: grpc.aio.ServicerContext, error: errors.NudgeError) -> None:
    code = next((c for t, c in _CODES.items() if isinstance(error, t)), grpc.StatusCode.UNKNOWN)
    status = status_pb2.Status(code=code.value[0], message=str(error))
    if isinstance(error, errors.InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        status.details.add().Pack(bad_request)
    await context.abort(
        code,
        str(error),
        trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
    )


async def abort_unexpected(context: grpc.aio.ServicerContext, method: str) -> None:
    """A bug or an outage, not the caller's fault: log it whole, tell the caller nothing
    internal. (gRPC's own answer would be UNKNOWN with the exception's text.)"""
    if isinstance(sys.exc_info()[1], grpc.aio.AbortError):
        raise
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class ShieldInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The last line: whatever a handler or an inner interceptor raises that is not a
    deliberate abort is logged and answered ``INTERNAL "internal error"``, for every method
    (health and reflection included) and every kind of call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _shield_unary(handler.unary_unary, method), **options
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _shield_unary(handler.stream_unary, method), **options
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _shield_stream(handler.unary_stream, method), **options
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _shield_stream(handler.stream_stream, method), **options
            )
        return handler


def _shield_unary(inner: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def shielded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await inner(request, context)
        except Exception:
            await abort_unexpected(context, method)

    return shielded


def _shield_stream(inner: Callable[..., Any], method: str) -> Callable[..., Any]:
    """Streaming handlers come in two shapes: async generators (``yield``) and coroutines
    that ``await context.write(...)`` (health's Watch). The wrapper takes the shape of the
    handler it wraps; iterating a coroutine is what broke Watch under OpenTelemetry's."""
    if inspect.isasyncgenfunction(inner):

        async def shielded_generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in inner(request, context):
                    yield item
            except Exception:
                await abort_unexpected(context, method)

        return shielded_generator

    async def shielded_writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            result = inner(request, context)
            if hasattr(result, "__aiter__"):  # a callable object that returns a generator
                async for item in result:
                    await context.write(item)
            else:
                await result
        except Exception:
            await abort_unexpected(context, method)

    return shielded_writer


# Health probes and reflection are not traffic worth a trace (see the module docstring).
_TRACED = filters.negate(
    filters.any_of(
        filters.service_prefix("grpc.health."), filters.service_prefix("grpc.reflection.")
    )
)


def _name_ids(principal: Principal | None, *messages: Any) -> None:
    """Name the workspace, and the contact and message a request or its answer names, on
    the call's span (OpenTelemetry's, current here), so the trace is found by those ids."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    if principal is not None and principal.workspace_id:
        span.set_attribute(WORKSPACE, principal.workspace_id)
    for message in messages:
        if isinstance(message, Message):
            span.set_attributes(message_ids(message))


class GuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self, verifier: ApiKeyVerifier, internal_token: str, policy: AuthPolicy | None = None
    ) -> None:
        self._verifier = verifier
        self._internal_token = internal_token
        self._policy = policy or {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler
        policy = self._policy.get(method, "api_key")
        type_name = method.rsplit("/", 1)[-1] + "Request"

        async def guard(request: Any, context: grpc.aio.ServicerContext) -> Principal | None:
            if isinstance(request, _Malformed):
                raise errors.InvalidArgument(
                    errors.FieldViolation("body", f"not a valid {request.type_name} message")
                )
            if policy == "none":
                return None
            return await self._authenticate(dict(context.invocation_metadata()), policy)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    principal = await guard(request, context)
                    token = workspace_id_var.set(principal.workspace_id if principal else "")
                    key_token = key_id_var.set(principal.key_id if principal else "")
                    try:
                        response = await inner(request, context)
                        _name_ids(principal, request, response)
                        return response
                    finally:
                        key_id_var.reset(key_token)
                        workspace_id_var.reset(token)
                except errors.NudgeError as err:
                    await abort_with_error(context, err)
                except Exception:
                    await abort_unexpected(context, method)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=_tolerant(handler.request_deserializer, type_name),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    principal = await guard(request, context)
                    token = workspace_id_var.set(principal.workspace_id if principal else "")
                    _name_ids(principal, request)
                    try:
                        result = inner_stream(request, context)
                        if hasattr(result, "__aiter__"):
                            async for item in result:
                                yield item
                        else:  # a handler that answers with `await context.write(...)`
                            await result
                    finally:
                        workspace_id_var.reset(token)
                except errors.NudgeError as err:
                    await abort_with_error(context, err)
                except Exception:
                    await abort_unexpected(context, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=_tolerant(handler.request_deserializer, type_name),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            # Client streaming (the bulk import): authenticated from the metadata before the
            # first message is read; a malformed message in the stream is INVALID_ARGUMENT.
            inner_client_stream = handler.stream_unary

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    principal = await guard(None, context)
                    token = workspace_id_var.set(principal.workspace_id if principal else "")
                    _name_ids(principal)
                    try:
                        return await inner_client_stream(_well_formed(requests), context)
                    finally:
                        workspace_id_var.reset(token)
                except errors.NudgeError as err:
                    await abort_with_error(context, err)
                except Exception:
                    await abort_unexpected(context, method)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary,
                request_deserializer=_tolerant(handler.request_deserializer, type_name),
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _authenticate(self, metadata: dict[str, Any], policy: str) -> Principal:
        authorization = str(metadata.get("authorization", ""))
        scheme, _, credential = authorization.partition(" ")
        if scheme == "Internal":
            if not hmac.compare_digest(credential.encode(), self._internal_token.encode()):
                raise errors.Unauthenticated("bad internal token")
            workspace_id = str(metadata.get(WORKSPACE_HEADER, ""))
            if workspace_id and not is_uuid(workspace_id):
                raise errors.Unauthenticated(f"{WORKSPACE_HEADER} is not a workspace id")
            actor = str(metadata.get(ACTOR_HEADER, ""))
            if actor and not MANAGER_ACTOR.match(actor):
                raise errors.Unauthenticated(f"{ACTOR_HEADER} is not a manager:<id>")
            # The manager the gateway acts for stands in the key id's place: what the call
            # changes is recorded as theirs (auth.current_actor).
            return Principal(workspace_id=workspace_id, key_id=actor or "internal")
        if policy == "internal":
            raise errors.Unauthenticated("this method is for Nudge's own services")
        if scheme != "Bearer" or not credential:
            raise errors.Unauthenticated("missing 'authorization: Bearer <API key>' metadata")
        return await self._verifier.verify(credential)


def build_server(
    *,
    servicers: Iterable[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]],
    verifier: ApiKeyVerifier,
    internal_token: str,
    policy: AuthPolicy | None = None,
    service: str = "",
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A server with every servicer registered, health (Check and Watch) and reflection
    (``grpc.reflection.v1`` and ``v1alpha``) on. Health knows no service (Check answers
    NOT_FOUND, Watch SERVICE_UNKNOWN) until :func:`mark_serving`.

    ``servicers`` are ``(add_XServicer_to_server, servicer, full service name)``.
    """
    server = grpc.aio.server(
        interceptors=[
            # Outermost: it counts the status the client gets (services/common/metrics.py).
            GrpcMetricsInterceptor(service or "unnamed"),
            ShieldInterceptor(),
            aio_server_interceptor(filter_=_TRACED),  # type: ignore[no-untyped-call]
            GuardInterceptor(verifier, internal_token, policy),
        ],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [health.SERVICE_NAME]
    for add, servicer, name in servicers:
        add(servicer, server)
        names.append(name)
    reflection_v1.enable(names, server)
    return server, health_servicer


async def mark_serving(health_servicer: health.aio.HealthServicer, names: Iterable[str]) -> None:
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def listen_address(host: str, port: int) -> str:
    """``host:port`` as gRPC wants it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_server(
    *,
    port: int,
    servicers: list[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]],
    verifier: ApiKeyVerifier,
    internal_token: str,
    policy: AuthPolicy | None = None,
    host: str = "127.0.0.1",
) -> grpc.aio.Server:
    """:func:`start_server_with_health`, for callers that set no health status of their own."""
    server, _ = await start_server_with_health(
        port=port,
        servicers=servicers,
        verifier=verifier,
        internal_token=internal_token,
        policy=policy,
        host=host,
    )
    return server


async def start_server_with_health(
    *,
    port: int,
    servicers: list[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]],
    verifier: ApiKeyVerifier,
    internal_token: str,
    policy: AuthPolicy | None = None,
    host: str = "127.0.0.1",
    service: str = "",
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """:func:`build_server`, listening on ``host:port`` (loopback unless the settings'
    ``bind_host`` opens it) and reporting SERVING for every service; the health servicer is
    returned so the service can report its dependencies (services/common/dependencies.py).
    Raises OSError when the address cannot be bound, rather than serving nowhere."""
    server, health_servicer = build_server(
        servicers=servicers,
        verifier=verifier,
        internal_token=internal_token,
        policy=policy,
        service=service,
    )
    address = listen_address(host, port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as err:  # grpcio raises this when the port is taken
        raise OSError(f"cannot listen on {address}: {err}") from err
    if bound == 0:  # older grpcio: 0 instead of an exception
        raise OSError(f"cannot listen on {address}")
    await server.start()
    await mark_serving(health_servicer, [name for _, _, name in servicers])
    return server, health_servicer
