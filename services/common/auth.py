"""API keys and the workspace every call is scoped to.

A key looks like ``nk_<key id>_<secret>``; only the SHA-256 of the whole key is stored (the
secret is 256 random bits, so a slow hash adds nothing). Services other than contacts verify
keys by asking contacts (``WorkspaceService.AuthenticateApiKey``) and cache the answer in
Redis (:class:`KeyCache`); contacts checks its own table (services/contacts/keys.py).

How a revocation reaches every cache at once. The Redis cache is keyed by the key *id*
(``nudge:apikey:<key id>``), which is all contacts knows when a key is revoked, and the
value binds the hash of the whole key, so a wrong secret for a cached id is not accepted:

- a verifier fills an entry only if none exists (``SET NX``);
- contacts, in the transaction that revokes a key and before it commits, overwrites the
  entry with a tombstone that outlives every cache (:data:`TOMBSTONE_TTL_S`). An answer
  read from PostgreSQL before the commit can then no longer be cached (the ``NX`` fails),
  and the next check anywhere finds the tombstone;
- rotation overwrites the old key's entry with its new end (``expires_at``); every
  verifier refuses a key past its end by itself.

Failed checks are remembered for :data:`NEGATIVE_TTL_S` by the hash of the key presented
(``nudge:apikey-refused:<sha256>``), and concurrent checks of one key in a process share a
single call (:class:`SingleFlight`): a flood of one bad key costs contacts one query per
few seconds, not one per request. Without Redis every check asks contacts, as before.

Service-to-service calls carry ``authorization: Internal <token>`` and name the workspace in
``x-nudge-workspace-id``; the token is ``NUDGE_INTERNAL_TOKEN``, never given to a tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

import grpc
import redis.asyncio as aioredis
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from redis.exceptions import RedisError

from services.common import clock
from services.common.context import key_id_var, workspace_id_var
from services.common.errors import Unauthenticated, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

KEY_PATTERN = re.compile(r"^nk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
WORKSPACE_HEADER = "x-nudge-workspace-id"
# A service-to-service call made for a signed-in console manager (the gateway's sessions)
# names them, so that a change they make is recorded as theirs, not as "internal". Read only
# beside the internal token: an API key's caller is its key.
ACTOR_HEADER = "x-nudge-actor"
MANAGER_ACTOR = re.compile(
    r"^manager:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
)


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


def current_actor() -> str:
    """Who makes the call being handled, as recorded beside a change: ``api_key:<key id>``
    for a key, ``manager:<manager id>`` for a console manager (through the gateway's
    session), ``internal`` for another service."""
    key_id = key_id_var.get()
    if not key_id or key_id == "internal":
        return "internal"
    if MANAGER_ACTOR.match(key_id):
        return key_id
    return f"api_key:{key_id}"


def manager_actor(manager_id: str) -> str:
    return f"manager:{manager_id.lower()}"


def internal_metadata(
    token: str, workspace_id: str | None = None, actor: str | None = None
) -> tuple[tuple[str, str], ...]:
    """gRPC metadata of a service-to-service call on behalf of ``workspace_id`` (and of the
    manager ``actor`` names, :func:`manager_actor`)."""
    md: tuple[tuple[str, str], ...] = (("authorization", f"Internal {token}"),)
    if workspace_id:
        md += ((WORKSPACE_HEADER, workspace_id),)
    if actor:
        md += ((ACTOR_HEADER, actor),)
    return md


class ApiKeyVerifier(Protocol):
    async def verify(self, api_key: str) -> Principal: ...


# Redis key layout shared by contacts (which writes tombstones and new ends) and the
# verifiers of the other services (which fill and read the cache).
CACHE_PREFIX = "nudge:apikey:"
REFUSED_PREFIX = "nudge:apikey-refused:"
REVOKED = b"revoked"
# Longer than any cache of a key's answer (this Redis cache's minute, contacts' in-process
# 30 s) plus a slow call's deadline: no answer read before a revocation outlives its tombstone.
TOMBSTONE_TTL_S = 300
CACHE_TTL_S = 60
NEGATIVE_TTL_S = 5


# A removed console manager (services/contacts/managers.py writes it, the gateway's
# sessions read it): their sessions end at once. Kept longer than a session may live.
MANAGER_REMOVED_PREFIX = "nudge:manager-removed:"
MANAGER_REMOVED_TTL_S = 13 * 3600


def manager_removed_key(manager_id: str) -> str:
    return f"{MANAGER_REMOVED_PREFIX}{manager_id}"


# A console manager whose role changed (services/contacts/managers.py writes it, the
# gateway's sessions read it): every session of theirs signed in at or before this instant
# ends, so they sign in again and get the new role. The instant is Redis's own clock in
# microseconds, read by the script below when the change has committed; the gateway reads
# the same clock before it checks a password (services/gateway/sessions.py), so a sign-in
# that could have read the old role is always at or before the mark, and one after it
# read the new role. Kept as long as MANAGER_REMOVED_TTL_S, longer than a session may live.
SESSIONS_ENDED_PREFIX = "nudge:manager-sessions-ended:"
# Redis's TIME as one integer of microseconds, built as a string: Lua's numbers would print
# it in exponent notation and lose digits.
MARK_SESSIONS_ENDED_SCRIPT = """
local t = redis.call('TIME')
local now = t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
redis.call('SET', KEYS[1], now, 'EX', ARGV[1])
return now
"""


def sessions_ended_key(manager_id: str) -> str:
    return f"{SESSIONS_ENDED_PREFIX}{manager_id}"


def cache_key(key_id: str) -> str:
    return f"{CACHE_PREFIX}{key_id}"


def refused_key(digest: str) -> str:
    return f"{REFUSED_PREFIX}{digest}"


@dataclass(frozen=True)
class CachedKey:
    """A valid key as a cache holds it: the hash of the whole key, its workspace, its end."""

    key_hash: str
    workspace_id: str
    expires_at: datetime | None

    def encode(self) -> str:
        end = "-" if self.expires_at is None else f"{self.expires_at.timestamp():.6f}"
        return f"{self.key_hash} {self.workspace_id} {end}"

    @classmethod
    def decode(cls, raw: bytes) -> CachedKey | None:
        """None for a tombstone or anything unreadable: the caller then asks contacts."""
        parts = raw.decode(errors="replace").split(" ")
        if len(parts) != 3:
            return None
        key_hash, workspace_id, end = parts
        try:
            expires_at = None if end == "-" else datetime.fromtimestamp(float(end), UTC)
        except (ValueError, OverflowError):
            return None
        return cls(key_hash, workspace_id, expires_at)

    def accepts(self, digest: str, now: datetime) -> bool:
        return hmac.compare_digest(self.key_hash, digest) and (
            self.expires_at is None or now < self.expires_at
        )


class KeyCache:
    """The Redis side of API-key checks (see the module docstring for the protocol)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def read(self, key_id: str, digest: str) -> tuple[bytes | None, bool]:
        """(the entry of ``key_id``: a :class:`CachedKey`, a tombstone or None; whether the
        key presented, by its ``digest``, failed a check a moment ago). Raises RedisError."""
        entry, refused = await self.redis.mget(cache_key(key_id), refused_key(digest))
        return entry, refused is not None

    async def fill(self, key_id: str, cached: CachedKey) -> None:
        """Remember a valid key, unless a revocation or rotation wrote its entry first."""
        await self.redis.set(cache_key(key_id), cached.encode(), ex=CACHE_TTL_S, nx=True)

    async def refuse(self, digest: str) -> None:
        await self.redis.set(refused_key(digest), b"1", ex=NEGATIVE_TTL_S)

    async def mark_revoked(self, key_id: str) -> None:
        await self.redis.set(cache_key(key_id), REVOKED, ex=TOMBSTONE_TTL_S)

    async def set_end(self, key_id: str, cached: CachedKey) -> None:
        """Overwrite what any verifier cached about ``key_id`` with its new end (rotation).
        Kept as long as a tombstone: a verifier's older answer, without the end, must not
        come back while a cache may still hold it."""
        await self.redis.set(cache_key(key_id), cached.encode(), ex=TOMBSTONE_TTL_S)

    async def unmark(self, key_id: str) -> None:
        """Undo :meth:`mark_revoked` or :meth:`set_end` when their transaction rolled back."""
        await self.redis.delete(cache_key(key_id))


class SingleFlight(Generic[T]):
    """Concurrent calls for one key share one computation (and its answer or error): a
    burst of requests with one key, good or bad, makes one check, not one each."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[T]] = {}

    async def run(self, key: str, compute: Callable[[], Awaitable[T]]) -> T:
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(compute())
            self._running[key] = running
            running.add_done_callback(lambda done: self._finished(key, done))
        # shield: one caller giving up (its deadline) does not cancel the others' answer.
        return await asyncio.shield(running)

    def _finished(self, key: str, done: asyncio.Future[T]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved, so a failure nobody awaited any more is not logged


class RemoteApiKeyVerifier:
    """Verifies keys with the contacts service, caching answers in Redis (:class:`KeyCache`)."""

    def __init__(
        self, channel: grpc.aio.Channel, redis: aioredis.Redis, internal_token: str
    ) -> None:
        self._stub = contacts_pb2_grpc.WorkspaceServiceStub(channel)
        self._cache = KeyCache(redis)
        self._token = internal_token
        self._flights: SingleFlight[Principal] = SingleFlight()

    async def verify(self, api_key: str) -> Principal:
        key_id = parse_key_id(api_key)
        digest = hash_api_key(api_key)
        return await self._flights.run(digest, lambda: self._verify(api_key, key_id, digest))

    async def _verify(self, api_key: str, key_id: str, digest: str) -> Principal:
        redis_up = True
        try:
            entry, refused = await self._cache.read(key_id, digest)
        except RedisError:
            # The cache is an optimisation: without Redis, ask contacts every time.
            log.warning("API-key cache unavailable; asking contacts directly", exc_info=True)
            entry, refused, redis_up = None, False, False
        if refused:
            raise Unauthenticated("unknown API key")
        if entry == REVOKED:
            raise Unauthenticated("API key revoked")
        cached = CachedKey.decode(entry) if entry is not None else None
        if cached is not None and hmac.compare_digest(cached.key_hash, digest):
            if not cached.accepts(digest, clock.now()):
                raise Unauthenticated("API key expired")
            return Principal(workspace_id=cached.workspace_id, key_id=key_id)
        try:
            answer = await self._stub.AuthenticateApiKey(
                contacts_pb2.AuthenticateApiKeyRequest(api_key=api_key),
                metadata=internal_metadata(self._token),
                timeout=5,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
                if redis_up:
                    with contextlib.suppress(RedisError):
                        await self._cache.refuse(digest)
                raise Unauthenticated(err.details() or "unknown API key") from err
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable("cannot check the API key now; retry shortly") from err
            raise
        expires_at = answer.expires_at.ToDatetime(UTC) if answer.HasField("expires_at") else None
        if redis_up:
            with contextlib.suppress(RedisError):
                await self._cache.fill(key_id, CachedKey(digest, answer.workspace_id, expires_at))
        return Principal(workspace_id=answer.workspace_id, key_id=answer.key_id)
