"""API keys of a workspace: create, list, revoke, rotate, and how contacts checks them.

Contacts owns the keys (``api_keys``: the SHA-256 of the whole key, never the key), so it
checks them in its own table; the other services ask it (``AuthenticateApiKey``) and cache
the answer in Redis (services/common/auth.py, which also describes the Redis layout).

A revoked key stops working at once on every service:

- :func:`revoke_key` writes a tombstone over the key's Redis entry inside the revoking
  transaction, before it commits, so no verifier can cache an answer read before the
  commit (their fill is ``SET NX``) and every Redis reader sees the revocation next;
- :class:`LocalApiKeyVerifier`, contacts' own in-process cache (a PostgreSQL query per call
  cost a fifth of an event's ingestion), reads that Redis entry on every hit: one ``GET``,
  far cheaper than the query it saves, and exact across any number of contacts processes.
  Pub/sub invalidation was rejected: its messages arrive *after* the revoking call returns
  (and are lost while a subscriber reconnects), so the very next call could still pass.
  When Redis does not answer, the in-process cache is bypassed and PostgreSQL decides;
- when Redis is down during a revocation the revocation still commits (a leaked key must
  be revocable at any time) and is logged: every verifier that cannot reach Redis asks
  PostgreSQL anyway; only one that reaches a Redis contacts cannot reach could keep using
  its cached answer, for at most its TTL.

Rotation gives a new key and sets the old one's end (``expires_at``, now + the overlap),
written into the old key's Redis entry as well, so caches holding the answer from before
the rotation apply the end too. ``last_used_at`` is recorded off the request path, at most
once a minute per key (:class:`LastUsedRecorder`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import redis.asyncio as aioredis
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.contacts.v1 import contacts_pb2
from redis.exceptions import RedisError

from services.common import clock
from services.common.auth import (
    REVOKED,
    CachedKey,
    KeyCache,
    Principal,
    SingleFlight,
    cache_key,
    generate_api_key,
    hash_api_key,
    hashes_match,
    parse_key_id,
)
from services.common.errors import FailedPrecondition, NotFound, Unauthenticated, Validator

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 100
# Working keys a workspace may hold at once (a rotated key counts until its end).
MAX_ACTIVE_KEYS = 100
# ListApiKeys with include_revoked answers at most this many, newest first.
MAX_LISTED_KEYS = 1000
DEFAULT_OVERLAP = timedelta(hours=24)
MAX_OVERLAP = timedelta(days=30)
KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_COLUMNS = "key_id, name, created_at, revoked_at, expires_at, last_used_at"


@dataclass(frozen=True)
class KeyCheck:
    """A valid key: who it acts for, and until when (None: until revoked)."""

    principal: Principal
    workspace_name: str
    expires_at: datetime | None


async def authenticate(pool: asyncpg.Pool, api_key: str) -> KeyCheck:
    """The key's workspace, if the key is known, not revoked and not past its end."""
    key_id = parse_key_id(api_key)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT k.key_hash, k.workspace_id, k.revoked_at, k.expires_at, w.name"
            " FROM api_keys k JOIN workspaces w ON w.id = k.workspace_id WHERE k.key_id = $1",
            key_id,
        )
    if row is None or not hashes_match(row["key_hash"], api_key):
        raise Unauthenticated("unknown API key")
    if row["revoked_at"] is not None:
        raise Unauthenticated("API key revoked")
    expires_at: datetime | None = row["expires_at"]
    if expires_at is not None and expires_at <= clock.now():
        raise Unauthenticated("API key expired")
    return KeyCheck(
        Principal(workspace_id=str(row["workspace_id"]), key_id=key_id), row["name"], expires_at
    )


class LastUsedRecorder:
    """Remembers which keys were used and writes ``last_used_at`` in one statement every
    ``flush_every_s`` (:meth:`run`), at most once a minute per key: a write per call would
    put a row lock on the path of every request."""

    PRECISION = timedelta(minutes=1)

    def __init__(self, pool: asyncpg.Pool, *, flush_every_s: float = 10.0) -> None:
        self._pool = pool
        self._flush_every_s = flush_every_s
        self._seen: dict[str, datetime] = {}
        self._written: dict[str, datetime] = {}

    def saw(self, key_id: str) -> None:
        now = clock.now()
        written = self._written.get(key_id)
        if written is None or now - written >= self.PRECISION:
            self._seen[key_id] = now

    async def flush(self) -> None:
        if not self._seen:
            return
        batch, self._seen = self._seen, {}
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE api_keys k SET last_used_at = u.at"
                " FROM unnest($1::text[], $2::timestamptz[]) AS u(key_id, at)"
                " WHERE k.key_id = u.key_id"
                " AND (k.last_used_at IS NULL OR k.last_used_at <= u.at - $3::interval)",
                list(batch),
                list(batch.values()),
                self.PRECISION,
            )
        if len(self._written) > 100_000:
            self._written.clear()  # bounded; at worst a key is written again within a minute
        self._written.update(batch)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_every_s)
            try:
                await self.flush()
            except (OSError, asyncpg.PostgresError):
                log.warning("could not record when API keys were last used", exc_info=True)


@dataclass
class _Remembered:
    check: KeyCheck
    until: float  # time.monotonic()


class LocalApiKeyVerifier:
    """Contacts' verifier: its own table, a valid key remembered in this process for
    ``ttl_s`` (by the hash of the whole key), each hit confirmed against the key's Redis
    entry (a revocation or rotation anywhere shows there at once; see the module
    docstring). A refused key is remembered for ``negative_ttl_s``, and concurrent checks
    of one key share one query, so a flood of bad keys does not reach PostgreSQL each time.
    ``lookup`` is :func:`authenticate`; tests count its calls."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        *,
        ttl_s: float = 30.0,
        negative_ttl_s: float = 5.0,
        max_keys: int = 10_000,
        recorder: LastUsedRecorder | None = None,
        lookup: Callable[[asyncpg.Pool, str], Awaitable[KeyCheck]] = authenticate,
    ) -> None:
        self._pool = pool
        self._cache = KeyCache(redis)
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._max_keys = max_keys
        self._recorder = recorder
        self._lookup = lookup
        self._valid: dict[str, _Remembered] = {}
        self._refused: dict[str, tuple[float, str]] = {}
        self._flights: SingleFlight[KeyCheck] = SingleFlight()
        self._warned_at = 0.0

    async def verify(self, api_key: str) -> Principal:
        key_id = parse_key_id(api_key)
        digest = hash_api_key(api_key)
        now = time.monotonic()
        remembered = self._valid.get(digest)
        if remembered is not None and remembered.until > now:
            if await self._still_valid(key_id, digest, remembered.check):
                self._saw(key_id)
                return remembered.check.principal
            self._valid.pop(digest, None)
        refused = self._refused.get(digest)
        if refused is not None and refused[0] > now:
            raise Unauthenticated(refused[1])
        check = await self._flights.run(digest, lambda: self._check(api_key, digest))
        self._saw(key_id)
        return check.principal

    async def _still_valid(self, key_id: str, digest: str, check: KeyCheck) -> bool:
        now = clock.now()
        if check.expires_at is not None and now >= check.expires_at:
            return False
        try:
            entry = await self._cache.redis.get(cache_key(key_id))
        except RedisError:
            # Without Redis a revocation made by another process cannot be seen here:
            # PostgreSQL decides every call until Redis answers again.
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                log.warning("API-key cache unavailable; checking keys in PostgreSQL")
            return False
        if entry is None:
            return True
        if entry == REVOKED:
            return False
        cached = CachedKey.decode(entry)
        return cached is None or cached.accepts(digest, now)

    async def _check(self, api_key: str, digest: str) -> KeyCheck:
        try:
            check = await self._lookup(self._pool, api_key)
        except Unauthenticated as err:
            if len(self._refused) >= self._max_keys:
                self._refused.clear()
            self._refused[digest] = (time.monotonic() + self._negative_ttl_s, str(err))
            raise
        if len(self._valid) >= self._max_keys:
            self._valid.clear()  # crude, but bounded; keys in use come back on their next call
        self._valid[digest] = _Remembered(check, time.monotonic() + self._ttl_s)
        return check

    def _saw(self, key_id: str) -> None:
        if self._recorder is not None:
            self._recorder.saw(key_id)


# ---------------------------------------------------------------- managing keys


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def key_to_proto(row: asyncpg.Record) -> contacts_pb2.ApiKey:
    """What a workspace may see of a key: never its secret nor the hash of it."""
    return contacts_pb2.ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        created_at=_timestamp(row["created_at"]),
        revoked_at=_timestamp(row["revoked_at"]),
        expires_at=_timestamp(row["expires_at"]),
        last_used_at=_timestamp(row["last_used_at"]),
    )


def validate_name(name: str) -> str:
    v = Validator()
    stripped = name.strip()
    v.check(bool(stripped), "name", "is required")
    v.check(len(stripped) <= MAX_NAME_LENGTH, "name", f"longer than {MAX_NAME_LENGTH} characters")
    v.check(not _CONTROL.search(stripped), "name", "contains a control character")
    v.raise_if_any()
    return stripped


def validate_key_id(key_id: str) -> None:
    v = Validator()
    v.check(bool(KEY_ID.match(key_id)), "key_id", "not a key id (16 hexadecimal digits)")
    v.raise_if_any()


def validate_overlap(overlap: Duration | None) -> timedelta:
    """The overlap of a rotation: the default when not given; 0 ends the old key at once."""
    if overlap is None:
        return DEFAULT_OVERLAP
    v = Validator()
    v.check(overlap.seconds >= 0 and overlap.nanos >= 0, "overlap", "must not be negative")
    v.check(abs(overlap.nanos) < 1_000_000_000, "overlap", "nanos out of range")
    v.raise_if_any()
    value = timedelta(seconds=overlap.seconds, microseconds=overlap.nanos // 1000)
    v.check(value <= MAX_OVERLAP, "overlap", f"longer than {MAX_OVERLAP.days} days")
    v.raise_if_any()
    return value


def _workspace(workspace_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(workspace_id)
    except ValueError:
        raise NotFound("no such workspace") from None


async def _lock_workspace(conn: asyncpg.Connection, workspace_id: str) -> None:
    """Serialises key changes of one workspace, so the counts checked below stay true."""
    found = await conn.fetchval(
        "SELECT 1 FROM workspaces WHERE id = $1 FOR UPDATE", _workspace(workspace_id)
    )
    if found is None:
        raise NotFound("no such workspace")


async def _active_count(conn: asyncpg.Connection, workspace_id: str, now: datetime) -> int:
    count = await conn.fetchval(
        "SELECT count(*) FROM api_keys WHERE workspace_id = $1 AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > $2)",
        _workspace(workspace_id),
        now,
    )
    return int(count)


async def _insert(
    conn: asyncpg.Connection, workspace_id: str, name: str, now: datetime
) -> tuple[asyncpg.Record, str]:
    key_id, api_key = generate_api_key()
    row = await conn.fetchrow(
        "INSERT INTO api_keys (key_id, workspace_id, key_hash, name, created_at)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}",
        key_id,
        _workspace(workspace_id),
        hash_api_key(api_key),
        name,
        now,
    )
    assert row is not None
    return row, api_key


async def _find_for_update(
    conn: asyncpg.Connection, workspace_id: str, key_id: str
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, key_hash FROM api_keys"
        " WHERE key_id = $1 AND workspace_id = $2 FOR UPDATE",
        key_id,
        _workspace(workspace_id),
    )
    if row is None:
        raise NotFound(f"no API key {key_id} in this workspace")
    return row


async def create_key(
    pool: asyncpg.Pool, workspace_id: str, name: str
) -> tuple[contacts_pb2.ApiKey, str]:
    """A new key of the workspace and its secret, shown only in this answer."""
    name = validate_name(name)
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        await _lock_workspace(conn, workspace_id)
        if await _active_count(conn, workspace_id, now) >= MAX_ACTIVE_KEYS:
            raise FailedPrecondition(
                f"the workspace already has {MAX_ACTIVE_KEYS} working API keys; revoke one first"
            )
        row, api_key = await _insert(conn, workspace_id, name, now)
    return key_to_proto(row), api_key


async def list_keys(
    pool: asyncpg.Pool, workspace_id: str, include_revoked: bool
) -> list[contacts_pb2.ApiKey]:
    """The workspace's working keys, newest first; with ``include_revoked`` also the revoked
    and expired ones (at most :data:`MAX_LISTED_KEYS`)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM api_keys WHERE workspace_id = $1"
            " AND ($2 OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $3)))"
            " ORDER BY created_at DESC, key_id LIMIT $4",
            _workspace(workspace_id),
            include_revoked,
            clock.now(),
            MAX_LISTED_KEYS,
        )
    return [key_to_proto(row) for row in rows]


async def revoke_key(
    pool: asyncpg.Pool, cache: KeyCache, workspace_id: str, key_id: str
) -> contacts_pb2.ApiKey:
    """Revokes the key at once, everywhere. Revoking it again answers the same key.
    The workspace's last working key cannot be revoked (nobody could then make another
    one): rotate it with a zero overlap instead."""
    validate_key_id(key_id)
    now = clock.now()
    async with (
        pool.acquire() as conn,
        _CacheNotice(cache, key_id) as notice,
        conn.transaction(),
    ):
        await _lock_workspace(conn, workspace_id)
        row = await _find_for_update(conn, workspace_id, key_id)
        if row["revoked_at"] is not None:
            return key_to_proto(row)
        working = row["expires_at"] is None or row["expires_at"] > now
        if working and await _active_count(conn, workspace_id, now) <= 1:
            raise FailedPrecondition(
                "this is the workspace's last working API key; create another first, or"
                " rotate this one with a zero overlap"
            )
        row = await conn.fetchrow(
            f"UPDATE api_keys SET revoked_at = $2 WHERE key_id = $1 RETURNING {_COLUMNS}",
            key_id,
            now,
        )
        await notice.revoked()
    return key_to_proto(row)


async def rotate_key(
    pool: asyncpg.Pool,
    cache: KeyCache,
    workspace_id: str,
    key_id: str,
    overlap: Duration | None,
) -> tuple[contacts_pb2.ApiKey, str, contacts_pb2.ApiKey]:
    """A new key with the old one's name; the old one works until now + ``overlap``.
    Returns (new key, its secret, old key)."""
    validate_key_id(key_id)
    window = validate_overlap(overlap)
    now = clock.now()
    async with (
        pool.acquire() as conn,
        _CacheNotice(cache, key_id) as notice,
        conn.transaction(),
    ):
        await _lock_workspace(conn, workspace_id)
        old = await _find_for_update(conn, workspace_id, key_id)
        if old["revoked_at"] is not None:
            raise FailedPrecondition("API key revoked; create a new one instead")
        if old["expires_at"] is not None:
            raise FailedPrecondition(
                "API key already rotated (or expired); rotate its replacement instead"
            )
        if window and await _active_count(conn, workspace_id, now) >= MAX_ACTIVE_KEYS:
            raise FailedPrecondition(
                f"the workspace already has {MAX_ACTIVE_KEYS} working API keys; revoke one first"
            )
        new, api_key = await _insert(conn, workspace_id, old["name"], now)
        ends = now + window
        await notice.ends(CachedKey(old["key_hash"], str(_workspace(workspace_id)), ends))
        old = await conn.fetchrow(
            "UPDATE api_keys SET expires_at = $2, replaced_by = $3 WHERE key_id = $1"
            f" RETURNING {_COLUMNS}",
            key_id,
            ends,
            new["key_id"],
        )
    return key_to_proto(new), api_key, key_to_proto(old)


class _CacheNotice:
    """What a key-changing transaction tells the Redis caches, inside it, before its commit:
    the key is revoked, or when it ends. If Redis does not answer, the change still commits
    (see the module docstring). If the transaction does not commit, what was written is
    dropped (the next check asks PostgreSQL, which holds the key as it was)."""

    def __init__(self, cache: KeyCache, key_id: str) -> None:
        self._cache = cache
        self._key_id = key_id
        self._told = False

    async def revoked(self) -> None:
        await self._tell(self._cache.mark_revoked(self._key_id))

    async def ends(self, end: CachedKey) -> None:
        await self._tell(self._cache.set_end(self._key_id, end))

    async def _tell(self, write: Awaitable[None]) -> None:
        try:
            await write
            self._told = True
        except RedisError:
            log.error(
                "API-key cache unavailable: caches that still reach Redis may accept key %s"
                " for up to a minute",
                self._key_id,
                exc_info=True,
            )

    async def __aenter__(self) -> _CacheNotice:
        return self

    async def __aexit__(self, kind: object, error: object, trace: object) -> None:
        if error is not None and self._told:
            with contextlib.suppress(RedisError):
                await self._cache.unmark(self._key_id)
