"""``/v1/api-keys``: the workspace's API keys (WorkspaceService): create, list, revoke,
rotate. A key's secret is shown once, in the answer that makes it; nothing answers it (or
its hash) again. Revoking a key stops it at once on every service.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.contacts.v1 import contacts_pb2
from pydantic import BeforeValidator, Field, StringConstraints

from services.gateway import problems
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.schemas import (
    PATTERN_MESSAGES,
    WHITE_SPACE,
    ResponseModel,
    StrictModel,
)

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])

KeyId = Annotated[
    str,
    Path(
        pattern="^[0-9a-f]{16}$",
        description="The key's id: the 16 hexadecimal digits after `nk_` in the key.",
    ),
]
# Contacts' rule for a key's name, stated in the document: not blank, no control characters.
_CONTROL = r"\x00-\x1f\x7f"
NAME_PATTERN = f"^[^{_CONTROL}]*[^{_CONTROL}{WHITE_SPACE}][^{_CONTROL}]*$"
PATTERN_MESSAGES[NAME_PATTERN] = "must not be blank or contain control characters"
MAX_OVERLAP_S = 30 * 24 * 3600


class ApiKeyIn(StrictModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NAME_PATTERN)] = (
        Field(description="What the key is for (a label; names need not be unique).")
    )


def _whole_number(value: object) -> object:
    """JSON has one number type: 3600.0 is the integer 3600 to JSON Schema, so it is here.
    Anything else (strings, booleans, 1.5) is left to the strict check, which refuses it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class RotateIn(StrictModel):
    overlap_seconds: Annotated[int | None, BeforeValidator(_whole_number)] = Field(
        None,
        ge=0,
        le=MAX_OVERLAP_S,
        description="How long the old key keeps working: default 86400 (24 h), at most"
        " 30 days; 0 stops it at once.",
    )


class ApiKeyOut(ResponseModel):
    key_id: str
    name: str
    created_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None = Field(
        description="Set on a key replaced by rotation: it works until then."
    )
    last_used_at: datetime | None = Field(
        description="When the key was last used, to the minute (or so)."
    )


class ApiKeyCreated(ResponseModel):
    key: ApiKeyOut
    api_key: str = Field(description="The key itself, `nk_...`: shown only this once.")


class ApiKeyList(ResponseModel):
    keys: list[ApiKeyOut]


class ApiKeyRotated(ResponseModel):
    new_key: ApiKeyOut
    api_key: str = Field(description="The new key itself: shown only this once.")
    old_key: ApiKeyOut


def _time(value: Timestamp, present: bool) -> datetime | None:
    return value.ToDatetime(UTC) if present else None


def key_json(key: contacts_pb2.ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        key_id=key.key_id,
        name=key.name,
        created_at=_time(key.created_at, key.HasField("created_at")),
        revoked_at=_time(key.revoked_at, key.HasField("revoked_at")),
        expires_at=_time(key.expires_at, key.HasField("expires_at")),
        last_used_at=_time(key.last_used_at, key.HasField("last_used_at")),
    )


def _rotate_field(field: str) -> str:
    return "overlap_seconds" if field == "overlap" else field


@router.get(
    "",
    response_model=ApiKeyList,
    summary="List API keys",
    responses=problems.responses(401, 422, 503),
)
async def list_api_keys(
    caller: CallerDep,
    backends: BackendsDep,
    include_revoked: Annotated[
        bool, Query(description="Also the revoked and expired keys (at most 1,000).")
    ] = False,
) -> ApiKeyList:
    """The workspace's working keys, newest first. Never a secret, nor its hash."""
    answer: contacts_pb2.ListApiKeysResponse = await caller.call(
        backends.workspaces.ListApiKeys,
        contacts_pb2.ListApiKeysRequest(include_revoked=include_revoked),
        service="contacts",
    )
    return ApiKeyList(keys=[key_json(k) for k in answer.keys])


@router.post(
    "",
    status_code=201,
    response_model=ApiKeyCreated,
    summary="Create an API key",
    responses=problems.responses(400, 401, 409, 413, 422, 503),
)
async def create_api_key(body: ApiKeyIn, caller: CallerDep, backends: BackendsDep) -> ApiKeyCreated:
    """A new key of the workspace. Its secret (`api_key`) is in this answer only: keep it.
    A workspace holds at most 100 working keys (409 beyond)."""
    answer: contacts_pb2.CreateApiKeyResponse = await caller.call(
        backends.workspaces.CreateApiKey,
        contacts_pb2.CreateApiKeyRequest(name=body.name),
        service="contacts",
    )
    return ApiKeyCreated(key=key_json(answer.key), api_key=answer.api_key)


@router.post(
    "/{key_id}:revoke",
    response_model=ApiKeyOut,
    summary="Revoke an API key",
    responses=problems.responses(401, 404, 409, 422, 503),
)
async def revoke_api_key(key_id: KeyId, caller: CallerDep, backends: BackendsDep) -> ApiKeyOut:
    """Stops the key at once, on every service. Revoking it again answers the same key.
    The workspace's last working key cannot be revoked (409): rotate it with
    `overlap_seconds: 0` instead."""
    answer: contacts_pb2.RevokeApiKeyResponse = await caller.call(
        backends.workspaces.RevokeApiKey,
        contacts_pb2.RevokeApiKeyRequest(key_id=key_id),
        service="contacts",
    )
    return key_json(answer.key)


@router.post(
    "/{key_id}:rotate",
    response_model=ApiKeyRotated,
    summary="Rotate an API key",
    responses=problems.responses(400, 401, 404, 409, 413, 422, 503),
)
async def rotate_api_key(
    key_id: KeyId, caller: CallerDep, backends: BackendsDep, body: RotateIn | None = None
) -> ApiKeyRotated:
    """A new key with the old one's name; the old one keeps working for `overlap_seconds`
    (its `expires_at`), then stops everywhere. A key is rotated once (409 again)."""
    request = contacts_pb2.RotateApiKeyRequest(key_id=key_id)
    if body is not None and body.overlap_seconds is not None:
        request.overlap.CopyFrom(Duration(seconds=body.overlap_seconds))
    answer: contacts_pb2.RotateApiKeyResponse = await caller.call(
        backends.workspaces.RotateApiKey, request, service="contacts", fields=_rotate_field
    )
    return ApiKeyRotated(
        new_key=key_json(answer.new_key),
        api_key=answer.api_key,
        old_key=key_json(answer.old_key),
    )
