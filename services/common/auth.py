"""API keys and the workspace every call is scoped to.

A key looks like ``nk_<key id>_<secret>``; only the SHA-256 of the whole key is stored (the
secret is 256 random bits, so a slow hash adds nothing). Services other than contacts verify
keys by asking contacts (``WorkspaceService.AuthenticateApiKey``) and cache the answer in
Redis for a minute, so a revoked key stops working within that minute.

Service-to-service calls carry ``authorization: Internal <token>`` and name the workspace in
``x-nudge-workspace-id``; the token is ``NUDGE_INTERNAL_TOKEN``, never given to a tenant.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Protocol

import grpc
import redis.asyncio as aioredis
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from redis.exceptions import RedisError

from services.common.context import workspace_id_var
from services.common.errors import Unauthenticated, Unavailable

log = logging.getLogger(__name__)

KEY_PATTERN = re.compile(r"^nk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
WORKSPACE_HEADER = "x-nudge-workspace-id"


@dataclass(frozen=True)
class Principal:
    workspace_id: str
    key_id: str  # "internal" for service-to-service calls


def generate_api_key() -> tuple[str, str]:
    """A new key as (key id, full key)."""
    key_id = secrets.token_hex(8)
    return key_id, f"nk_{key_id}_{secrets.token_urlsafe(32)}"


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def parse_key_id(api_key: str) -> str:
    match = KEY_PATTERN.match(api_key)
    if match is None:
        raise Unauthenticated("malformed API key")
    return match.group(1)


def hashes_match(stored_hash: str, api_key: str) -> bool:
    return hmac.compare_digest(stored_hash, hash_api_key(api_key))


def current_workspace() -> str:
    """The workspace of the call or event being handled; every query is scoped by it."""
    workspace_id = workspace_id_var.get()
    if not workspace_id:
        raise Unauthenticated("no workspace in context")
    return workspace_id


def internal_metadata(token: str, workspace_id: str | None = None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata of a service-to-service call on behalf of ``workspace_id``."""
    md: tuple[tuple[str, str], ...] = (("authorization", f"Internal {token}"),)
    if workspace_id:
        md += ((WORKSPACE_HEADER, workspace_id),)
    return md


class ApiKeyVerifier(Protocol):
    async def verify(self, api_key: str) -> Principal: ...


class RemoteApiKeyVerifier:
    """Verifies keys with the contacts service, caching answers in Redis."""

    TTL_S = 60

    def __init__(
        self, channel: grpc.aio.Channel, redis: aioredis.Redis, internal_token: str
    ) -> None:
        self._stub = contacts_pb2_grpc.WorkspaceServiceStub(channel)
        self._redis = redis
        self._token = internal_token

    async def verify(self, api_key: str) -> Principal:
        key_id = parse_key_id(api_key)
        cache_key = f"nudge:apikey:{hash_api_key(api_key)}"
        try:
            cached = await self._redis.get(cache_key)
        except RedisError:
            # The cache is an optimisation: without Redis, ask contacts every time.
            log.warning("API-key cache unavailable; asking contacts directly", exc_info=True)
            cached = None
        if cached is not None:
            return Principal(workspace_id=cached.decode(), key_id=key_id)
        try:
            answer = await self._stub.AuthenticateApiKey(
                contacts_pb2.AuthenticateApiKeyRequest(api_key=api_key),
                metadata=internal_metadata(self._token),
                timeout=5,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
                raise Unauthenticated("unknown API key") from err
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable("cannot check the API key now; retry shortly") from err
            raise
        with contextlib.suppress(RedisError):
            await self._redis.set(cache_key, answer.workspace_id, ex=self.TTL_S)
        return Principal(workspace_id=answer.workspace_id, key_id=answer.key_id)
