"""Every error of the gateway as RFC 9457 problem details (``application/problem+json``),
and the one table that turns the services' gRPC status codes into HTTP statuses.

Field errors name the JSON field the caller sent (``email``, ``data.items[0].quantity``), not
the protobuf field the service checked: each route passes a :data:`FieldMap` that renames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from http import HTTPStatus
from typing import Any

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match

from services.gateway.schemas import EVENT_TYPES, PATTERN_MESSAGES, UUID_PATTERN, uuid_message

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://nudge.dev/problems/"

FieldMap = Callable[[str], str]
"""Renames a field path reported by a service into the path of the caller's JSON."""


class FieldError(BaseModel):
    field: str = Field(description="Path of the field in the request, e.g. `tags[2]`.")
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description="URI naming the kind of problem.")
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = Field(
        None, description="Every invalid field, for 422 (and 400 when the body is not JSON)."
    )


class Problem(Exception):
    """An error answer; raise it anywhere in a route or dependency."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.details = ProblemDetails(
            type=TYPE_BASE + kind, title=title, status=status, detail=detail, errors=errors
        )
        self.headers = headers

    @property
    def status(self) -> int:
        return self.details.status

    def response(self) -> JSONResponse:
        return JSONResponse(
            self.details.model_dump(exclude_none=True),
            status_code=self.status,
            media_type=MEDIA_TYPE,
            headers=self.headers,
        )


def unauthenticated(detail: str) -> Problem:
    return Problem(
        401, "unauthenticated", "Unauthenticated", detail, headers={"WWW-Authenticate": "Bearer"}
    )


def too_large(limit: int) -> Problem:
    return Problem(
        413, "body-too-large", "Content too large", f"the body is larger than {limit} bytes"
    )


# gRPC status -> (HTTP status, problem kind, title). Codes missing here become a 500.
_FROM_GRPC: dict[grpc.StatusCode, tuple[int, str, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (422, "validation", "Invalid request"),
    grpc.StatusCode.OUT_OF_RANGE: (422, "validation", "Invalid request"),
    grpc.StatusCode.NOT_FOUND: (404, "not-found", "Not found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "already-exists", "Already exists"),
    grpc.StatusCode.ABORTED: (409, "conflict", "Conflict"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "failed-precondition", "Not possible now"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthenticated", "Unauthenticated"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "forbidden", "Forbidden"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate-limited", "Too many requests"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not-implemented", "Not implemented"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable", "Service unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, "unavailable", "Service unavailable"),
}


def from_rpc_error(
    err: grpc.aio.AioRpcError, service: str, fields: FieldMap | None = None
) -> Problem:
    """The answer to give for a failed call to ``service``.

    Client errors carry the service's own message (written for callers); server-side
    failures say only which service failed, and the details go to the log.
    """
    code = err.code()
    mapped = _FROM_GRPC.get(code)
    if mapped is None:
        log.error("%s answered %s: %s", service, code.name, err.details())
        return Problem(500, "internal", "Internal error", "an unexpected error occurred")
    status, kind, title = mapped
    if status == 503:
        log.warning("%s is unavailable: %s %s", service, code.name, err.details())
        return Problem(status, kind, title, f"the {service} service is not answering; retry later")
    if status == 501:
        return Problem(status, kind, title, f"the {service} service does not offer this yet")
    detail = err.details() or title
    if status == 401:
        return unauthenticated(detail)
    if kind == "validation":
        return Problem(status, kind, title, detail, _field_violations(err, fields or _same))
    return Problem(status, kind, title, detail)


def _same(field: str) -> str:
    return field


def _field_violations(err: grpc.aio.AioRpcError, fields: FieldMap) -> list[FieldError]:
    try:
        status = rpc_status.from_call(err)
    except ValueError:  # details that contradict the status line: ignore them
        status = None
    out: list[FieldError] = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            out.extend(
                FieldError(field=fields(v.field), message=v.description)
                for v in bad_request.field_violations
            )
    return out


# Discriminated unions put the chosen variant's tag into error locations
# (`body.cart_updated.data.items`): the tag is a value the caller sent, not a field name.
_UNION_TAGS = frozenset(EVENT_TYPES)


def field_path(loc: Sequence[int | str]) -> str:
    """``("body", "data", "items", 0, "quantity")`` -> ``data.items[0].quantity``; the
    location of a query, path or header parameter keeps its prefix (``query.page_size``)."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
        if parts and isinstance(parts[0], str) and parts[0] in _UNION_TAGS:
            parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "body"


def validation_problem(errors: Sequence[Any]) -> Problem:
    """422 with every invalid field, or 400 when the body is not JSON at all."""
    for error in errors:
        if error.get("type") == "json_invalid":
            ctx = error.get("ctx") or {}
            loc: Sequence[Any] = error.get("loc") or ()
            position = f" at position {loc[-1]}" if len(loc) > 1 else ""
            return Problem(
                400,
                "malformed-json",
                "Malformed JSON",
                f"the body is not valid JSON: {ctx.get('error', 'cannot parse')}{position}",
            )
    field_errors = []
    for error in errors:
        loc = list(error.get("loc") or ())
        if error.get("type") in ("union_tag_not_found", "union_tag_invalid"):
            loc.append(str((error.get("ctx") or {}).get("discriminator", "type")).strip("'\""))
        message = str(error.get("msg")).removeprefix("Value error, ")
        if error.get("type") == "string_pattern_mismatch":
            pattern = str((error.get("ctx") or {}).get("pattern"))
            if pattern == UUID_PATTERN:
                message = uuid_message(loc)
            else:
                message = PATTERN_MESSAGES.get(pattern, message)
        field_errors.append(FieldError(field=field_path(loc), message=message))
    count = len(field_errors)
    return Problem(
        422,
        "validation",
        "Invalid request",
        f"{count} invalid field{'s' if count != 1 else ''}",
        field_errors,
    )


async def handle_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return exc.response()


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(exc.errors()).response()


async def handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in the same shape."""
    assert isinstance(exc, HTTPException)
    status = HTTPStatus(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) else status.description
    headers = dict(exc.headers or {})
    if status == HTTPStatus.METHOD_NOT_ALLOWED:
        headers["Allow"] = allowed_methods(request)
    problem = Problem(
        status.value,
        status.phrase.lower().replace(" ", "-"),
        status.phrase,
        detail,
        headers=headers,
    )
    return problem.response()


def allowed_methods(request: Request) -> str:
    """Every method some route offers at this path. Starlette names only the first route
    that matches the path (``OPTIONS /v1/campaigns`` said ``POST`` though GET is there too).
    A path that a route without parameters names (``/v1/contacts/tags:bulk``) is that
    resource alone, not also ``/v1/contacts/{contact_id}`` with an odd id."""
    static: set[str] = set()
    templated: set[str] = set()
    _methods_at(request.app.router.routes, request.scope, static, templated)
    return ", ".join(sorted(static or templated))


def _methods_at(
    routes: Iterable[Any], scope: MutableMapping[str, Any], static: set[str], templated: set[str]
) -> None:
    for route in routes:
        # FastAPI wraps an included router (``original_router``); older versions copied its
        # routes into the app, where ``routes`` is all there is.
        inner = getattr(route, "original_router", None)
        if inner is not None:
            _methods_at(inner.routes, scope, static, templated)
        elif getattr(route, "methods", None):
            match, _ = route.matches(scope)
            if match != Match.NONE:
                (templated if getattr(route, "param_convertors", None) else static).update(
                    route.methods
                )


async def handle_rpc_error(request: Request, exc: Exception) -> JSONResponse:
    """A gRPC error that a route did not map itself (no field renames)."""
    assert isinstance(exc, grpc.aio.AioRpcError)
    return from_rpc_error(exc, "backend").response()


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Problem(500, "internal", "Internal error", "an unexpected error occurred").response()


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems a route can answer (see bootstrap's media-type fix)."""
    return {
        status: {"model": ProblemDetails, "description": HTTPStatus(status).phrase}
        for status in statuses
    }
