"""DKIM keys in PostgreSQL: one per sending domain of a workspace, and the signer the send
path asks for a mail's key (cached: a lookup per mail would cost a round trip per mail)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.delivery.domain import dkim
from services.delivery.domain.sealing import Sealer, SealError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredKey:
    domain: str
    selector: str
    dns_record_value: str
    created_at: datetime


async def insert(
    conn: asyncpg.Connection,
    workspace_id: str,
    domain: str,
    selector: str,
    key: dkim.KeyMaterial,
    now: datetime,
    sealer: Sealer,
) -> bool:
    """Store the key, sealed; False (nothing written) when the domain has one already."""
    row = await conn.fetchval(
        "INSERT INTO dkim_keys (workspace_id, domain, selector, algorithm, private_key_pem,"
        " dns_record_value, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (workspace_id, domain) DO NOTHING RETURNING 1",
        uuid.UUID(workspace_id),
        domain,
        selector,
        key.algorithm,
        sealer.seal(key.pem, workspace_id=workspace_id, domain=domain),
        key.dns_record_value(),
        now,
    )
    return row is not None


async def find(
    conn: asyncpg.Connection, workspace_id: str, domain: str, sealer: Sealer
) -> tuple[StoredKey, str] | None:
    """The domain's key and its private PEM (for the caller to compare, never to answer).
    Raises :class:`SealError` when the stored key does not open."""
    row = await conn.fetchrow(
        "SELECT domain, selector, dns_record_value, created_at, private_key_pem FROM dkim_keys"
        " WHERE workspace_id = $1 AND domain = $2",
        uuid.UUID(workspace_id),
        domain,
    )
    if row is None:
        return None
    pem = sealer.unseal(row["private_key_pem"], workspace_id=workspace_id, domain=domain)
    return _stored(row), pem


async def list_keys(conn: asyncpg.Connection, workspace_id: str) -> list[StoredKey]:
    rows = await conn.fetch(
        "SELECT domain, selector, dns_record_value, created_at FROM dkim_keys"
        " WHERE workspace_id = $1 ORDER BY domain",
        uuid.UUID(workspace_id),
    )
    return [_stored(r) for r in rows]


async def delete(conn: asyncpg.Connection, workspace_id: str, domain: str) -> bool:
    deleted = await conn.fetchval(
        "DELETE FROM dkim_keys WHERE workspace_id = $1 AND domain = $2 RETURNING 1",
        uuid.UUID(workspace_id),
        domain,
    )
    return deleted is not None


def _stored(row: asyncpg.Record) -> StoredKey:
    return StoredKey(
        domain=row["domain"],
        selector=row["selector"],
        dns_record_value=row["dns_record_value"],
        created_at=row["created_at"],
    )


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    material: dkim.KeyMaterial


class KeyCache:
    """The signing key of (workspace, domain), read from PostgreSQL at most once per
    ``ttl_s``: a key set or deleted takes effect on every delivery process within that time
    (docs/delivery-auth.md). Absent keys are cached too, so unsigned mail costs no query.

    A key that does not open (``NUDGE_DATA_KEY`` changed) is logged as an error and the
    domain's mail goes out unsigned, as before the key was set: holding every mail of the
    workspace back would be worse than a mail that fails a receiver's DKIM check."""

    def __init__(self, pool: asyncpg.Pool, sealer: Sealer, ttl_s: float = 10.0) -> None:
        self._pool = pool
        self._sealer = sealer
        self._ttl = ttl_s
        self._entries: dict[tuple[str, str], tuple[float, SigningKey | None]] = {}
        self._lock = asyncio.Lock()

    async def get(self, workspace_id: str, domain: str) -> SigningKey | None:
        cache_key = (workspace_id, domain)
        entry = self._entries.get(cache_key)
        if entry is not None and time.monotonic() < entry[0]:
            return entry[1]
        async with self._lock:
            entry = self._entries.get(cache_key)
            if entry is not None and time.monotonic() < entry[0]:
                return entry[1]
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(
                    "SELECT selector, private_key_pem FROM dkim_keys"
                    " WHERE workspace_id = $1 AND domain = $2",
                    uuid.UUID(workspace_id),
                    domain,
                )
            found = None
            if row is not None:
                try:
                    pem = self._sealer.unseal(
                        row["private_key_pem"], workspace_id=workspace_id, domain=domain
                    )
                except SealError as err:
                    log.error("workspace %s: %s; its mail goes out unsigned", workspace_id, err)
                else:
                    found = SigningKey(domain, row["selector"], dkim.load_private_key(pem))
            self._entries[cache_key] = (time.monotonic() + self._ttl, found)
            return found

    def forget(self, workspace_id: str, domain: str) -> None:
        """Drop the cached entry (this process changed the key)."""
        self._entries.pop((workspace_id, domain), None)
