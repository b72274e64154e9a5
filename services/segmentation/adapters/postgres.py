"""The segmentation schema in PostgreSQL: the contact read model and segment queries.

Every query names its workspace. Changes are applied in batches, one set-based statement per
kind of change (rows passed as one ``jsonb`` array and expanded with ``jsonb_to_recordset``),
so that a bulk import's million events cost thousands of statements, not millions.

How a batch stays correct:

- Contact changes carry the contact's version; each statement updates a profile only where
  the stored version is below the event's (``NULL`` = no contact event applied yet), so a
  replay or redelivery changes nothing and no claim row is needed for them.
- Shop events carry no version: their event ids are claimed in ``processed_events`` in the
  batch's transaction, and only the newly claimed ones are applied.
- A deleted or erased contact leaves a tombstone; nothing but another removal is applied to
  a tombstoned contact (contact ids are never reused), so a late event cannot resurrect it.
- A statement must not touch one row twice, and one contact's changes must apply in their
  order: a batch is cut into rounds in which each contact appears at most once, applied one
  after the other in the same transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.segmentation.adapters import segment_sql
from services.segmentation.domain.builtins import BY_ID
from services.segmentation.domain.readmodel import (
    ConsentSet,
    OrderPlaced,
    OrderVoided,
    ProfileSnapshot,
    ReadModelChange,
    Removed,
    ScoreSet,
    SignedUp,
    Suppressed,
    TagsSet,
)
from services.segmentation.domain.segments import OrderStatus

SCHEMA = "segmentation"
CONSUMER = "segmentation"

Key = tuple[str, str]  # (workspace id, contact id), as text


@dataclass(frozen=True)
class Pending:
    """One change to apply, with the envelope it came in."""

    workspace_id: str
    event_id: str
    change: ReadModelChange

    @property
    def key(self) -> Key:
        return (self.workspace_id, self.change.contact_id)


def rounds(items: Sequence[Pending]) -> list[list[int]]:
    """The indexes of ``items`` cut into consecutive rounds in which each contact appears at
    most once; applying the rounds in order applies every contact's changes in order."""
    cut: list[list[int]] = []
    seen: set[Key] = set()
    for i, item in enumerate(items):
        if not cut or item.key in seen:
            cut.append([])
            seen = set()
        cut[-1].append(i)
        seen.add(item.key)
    return cut


async def apply(conn: asyncpg.Connection, items: Sequence[Pending], now: datetime) -> list[bool]:
    """Apply ``items`` in order inside the caller's transaction; for each, whether it changed
    the read model (False: an older or repeated event, or a tombstoned contact)."""
    applied = [False] * len(items)
    for indexes in rounds(items):
        await _apply_round(conn, [items[i] for i in indexes], now, indexes, applied)
    return applied


async def _apply_round(
    conn: asyncpg.Connection,
    items: list[Pending],
    now: datetime,
    indexes: list[int],
    applied: list[bool],
) -> None:
    gone = await _tombstoned(conn, [item.key for item in items])
    live = [
        (i, item)
        for i, item in zip(indexes, items, strict=True)
        if item.key not in gone or isinstance(item.change, Removed)
    ]
    shop_ids = [
        item.event_id
        for _, item in live
        if isinstance(item.change, SignedUp | OrderPlaced | OrderVoided)
    ]
    claimed = await _claim(conn, shop_ids) if shop_ids else set()
    by_kind: dict[type, list[tuple[int, Pending]]] = {}
    for i, item in live:
        if isinstance(item.change, SignedUp | OrderPlaced | OrderVoided):
            if item.event_id not in claimed:
                continue
            applied[i] = True
        by_kind.setdefault(type(item.change), []).append((i, item))
    for kind, group in by_kind.items():
        changed = await _APPLY[kind](conn, [item for _, item in group], now)
        if changed is not None:
            for i, item in group:
                applied[i] = item.key in changed


async def _tombstoned(conn: asyncpg.Connection, keys: list[Key]) -> set[Key]:
    rows = await conn.fetch(
        "SELECT t.workspace_id, t.contact_id FROM contact_tombstones t"
        " JOIN unnest($1::text[]::uuid[], $2::text[]::uuid[]) AS k(ws, contact)"
        "   ON t.workspace_id = k.ws AND t.contact_id = k.contact",
        [ws for ws, _ in keys],  # parsed by PostgreSQL: uuid.UUID() costs in a hot path
        [c for _, c in keys],
    )
    return {(str(r["workspace_id"]), str(r["contact_id"])) for r in rows}


async def _claim(conn: asyncpg.Connection, event_ids: list[str]) -> set[str]:
    """The event ids of ``event_ids`` not claimed before (now claimed, in this transaction)."""
    rows = await conn.fetch(
        "INSERT INTO processed_events (consumer, event_id)"
        " SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING event_id",
        CONSUMER,
        event_ids,
    )
    return {r["event_id"] for r in rows}


def _rows(items: list[Pending], fields: Any) -> str:
    return json.dumps(
        [
            {"ws": item.workspace_id, "contact": item.change.contact_id, **fields(item.change)}
            for item in items
        ],
        default=_json_default,
    )


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _keys(rows: list[asyncpg.Record]) -> set[Key]:
    return {(str(r["workspace_id"]), str(r["contact_id"])) for r in rows}


# A versioned upsert: insert the profile the event describes (partly, for the events that
# carry one field), or update it where the stored version is below the event's.
_VERSIONED = """
INSERT INTO profiles AS p (workspace_id, contact_id, {columns}, version, created_at, updated_at)
SELECT r.ws, r.contact, {values}, r.version, $2, $2
FROM jsonb_to_recordset($1::jsonb) AS r(ws uuid, contact uuid, version bigint, {types})
ON CONFLICT (workspace_id, contact_id) DO UPDATE SET
    {updates}, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at
WHERE p.version IS NULL OR p.version < EXCLUDED.version
RETURNING workspace_id, contact_id
"""


def _versioned(columns: dict[str, str], updates: str) -> str:
    return _VERSIONED.format(
        columns=", ".join(columns),
        values=", ".join(f"r.{c}" for c in columns),
        types=", ".join(f"{c} {t}" for c, t in columns.items()),
        updates=updates,
    )


_SNAPSHOTS = _versioned(
    {
        "email": "text",
        "vip": "boolean",
        "tags": "text[]",
        "attributes": "jsonb",
        "signed_up_at": "timestamptz",
        "score": "bigint",
    },
    # A signup time the snapshot lacks is kept (a SignedUp shop event may have set it).
    "email = EXCLUDED.email, vip = EXCLUDED.vip, tags = EXCLUDED.tags,"
    " attributes = EXCLUDED.attributes,"
    " signed_up_at = coalesce(EXCLUDED.signed_up_at, p.signed_up_at), score = EXCLUDED.score",
)
_TAGS = _versioned({"tags": "text[]"}, "tags = EXCLUDED.tags")
_SCORES = _versioned({"score": "bigint"}, "score = EXCLUDED.score")
_CONSENTS = _versioned({"consents": "jsonb"}, "consents = p.consents || EXCLUDED.consents")
_SUPPRESSIONS = _versioned(
    {"suppressed": "boolean", "suppression_reason": "text"},
    "suppressed = EXCLUDED.suppressed, suppression_reason = EXCLUDED.suppression_reason",
)


async def _snapshots(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> set[Key]:
    def fields(c: ProfileSnapshot) -> dict[str, object]:
        return {
            "version": c.version,
            "email": c.email,
            "vip": c.vip,
            "tags": sorted(set(c.tags)),
            "attributes": c.attributes,
            "signed_up_at": c.signed_up_at,
            "score": c.score,
        }

    return _keys(await conn.fetch(_SNAPSHOTS, _rows(items, fields), now))


async def _tags(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> set[Key]:
    def fields(c: TagsSet) -> dict[str, object]:
        return {"version": c.version, "tags": sorted(set(c.tags))}

    return _keys(await conn.fetch(_TAGS, _rows(items, fields), now))


async def _scores(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> set[Key]:
    def fields(c: ScoreSet) -> dict[str, object]:
        return {"version": c.version, "score": c.score}

    return _keys(await conn.fetch(_SCORES, _rows(items, fields), now))


async def _consents(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> set[Key]:
    def fields(c: ConsentSet) -> dict[str, object]:
        state = {"state": c.state, "since": c.at.isoformat(), "source": c.source}
        return {"version": c.version, "consents": {c.purpose: state}}

    return _keys(await conn.fetch(_CONSENTS, _rows(items, fields), now))


async def _suppressions(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> set[Key]:
    def fields(c: Suppressed) -> dict[str, object]:
        return {"version": c.version, "suppressed": True, "suppression_reason": c.reason}

    return _keys(await conn.fetch(_SUPPRESSIONS, _rows(items, fields), now))


_REMOVE = """
WITH gone AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb)
        AS r(ws uuid, contact uuid, version bigint, reason text)
), orders_gone AS (
    DELETE FROM orders o USING gone g WHERE o.workspace_id = g.ws AND o.contact_id = g.contact
), profiles_gone AS (
    DELETE FROM profiles p USING gone g WHERE p.workspace_id = g.ws AND p.contact_id = g.contact
)
INSERT INTO contact_tombstones AS t (workspace_id, contact_id, version, reason, removed_at)
SELECT ws, contact, version, reason, $2 FROM gone
ON CONFLICT (workspace_id, contact_id) DO UPDATE SET
    version = greatest(t.version, EXCLUDED.version),
    reason = CASE WHEN EXCLUDED.reason = 'erased' THEN 'erased' ELSE t.reason END,
    removed_at = CASE WHEN EXCLUDED.reason = 'erased' AND t.reason <> 'erased'
                      THEN EXCLUDED.removed_at ELSE t.removed_at END
WHERE EXCLUDED.reason = 'erased' AND t.reason <> 'erased'
RETURNING workspace_id, contact_id
"""


async def _removals(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> set[Key]:
    """Delete the contacts' profiles and orders and leave a tombstone; an erasure after a
    deletion only marks the tombstone erased (there is nothing left to remove)."""

    def fields(c: Removed) -> dict[str, object]:
        return {"version": c.version, "reason": "erased" if c.erased else "deleted"}

    return _keys(await conn.fetch(_REMOVE, _rows(items, fields), now))


_ENSURE_PROFILES = """
INSERT INTO profiles (workspace_id, contact_id, created_at, updated_at)
SELECT DISTINCT r.ws, r.contact, $2::timestamptz, $2::timestamptz
FROM jsonb_to_recordset($1::jsonb) AS r(ws uuid, contact uuid)
ON CONFLICT DO NOTHING
"""


async def _signups(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> None:
    """Set the signup time where the profile has none (the contact's own field wins); a
    profile first seen here is created, its snapshot fills it later."""

    def fields(c: SignedUp) -> dict[str, object]:
        return {"at": c.at}

    await conn.execute(
        "INSERT INTO profiles AS p (workspace_id, contact_id, signed_up_at, created_at,"
        " updated_at)"
        " SELECT r.ws, r.contact, r.at, $2, $2"
        " FROM jsonb_to_recordset($1::jsonb) AS r(ws uuid, contact uuid, at timestamptz)"
        " ON CONFLICT (workspace_id, contact_id) DO UPDATE SET"
        "   signed_up_at = EXCLUDED.signed_up_at, updated_at = EXCLUDED.updated_at"
        " WHERE p.signed_up_at IS NULL",
        _rows(items, fields),
        now,
    )


async def _orders_placed(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> None:
    """Store placed orders as completed; a cancellation that arrived first keeps its status."""

    def fields(c: OrderPlaced) -> dict[str, object]:
        return {
            "order_id": c.order_id,
            "placed_at": c.placed_at,
            "total_minor": c.total_minor,
            "currency": c.currency,
        }

    rows = _rows(items, fields)
    await conn.execute(_ENSURE_PROFILES, rows, now)
    await conn.execute(
        "INSERT INTO orders (workspace_id, order_id, contact_id, placed_at, total_minor,"
        " currency, status, updated_at)"
        " SELECT r.ws, r.order_id, r.contact, r.placed_at, r.total_minor, r.currency, $3, $2"
        " FROM jsonb_to_recordset($1::jsonb) AS r(ws uuid, contact uuid, order_id text,"
        "   placed_at timestamptz, total_minor bigint, currency text)"
        " ON CONFLICT (workspace_id, order_id) DO UPDATE SET"
        "   contact_id = EXCLUDED.contact_id, placed_at = EXCLUDED.placed_at,"
        "   total_minor = EXCLUDED.total_minor, currency = EXCLUDED.currency,"
        "   updated_at = EXCLUDED.updated_at",
        rows,
        now,
        OrderStatus.COMPLETED.value,
    )


async def _orders_voided(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> None:
    """Mark orders cancelled or refunded, creating those whose placement is still to come."""

    def fields(c: OrderVoided) -> dict[str, object]:
        return {"order_id": c.order_id, "status": c.status.value}

    rows = _rows(items, fields)
    await conn.execute(_ENSURE_PROFILES, rows, now)
    await conn.execute(
        "INSERT INTO orders (workspace_id, order_id, contact_id, status, updated_at)"
        " SELECT r.ws, r.order_id, r.contact, r.status, $2"
        " FROM jsonb_to_recordset($1::jsonb)"
        "   AS r(ws uuid, contact uuid, order_id text, status text)"
        " ON CONFLICT (workspace_id, order_id) DO UPDATE SET"
        "   status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
        rows,
        now,
    )


# Per kind of change, its statement; those answering None report nothing per row (the
# shop events' claims already say which were applied).
_APPLY: dict[type, Any] = {
    ProfileSnapshot: _snapshots,
    TagsSet: _tags,
    ScoreSet: _scores,
    ConsentSet: _consents,
    Suppressed: _suppressions,
    Removed: _removals,
    SignedUp: _signups,
    OrderPlaced: _orders_placed,
    OrderVoided: _orders_voided,
}


async def count_members(
    conn: asyncpg.Connection, workspace_id: str, segment_id: str, as_of: datetime
) -> int:
    """Members of a built-in segment at ``as_of`` (its rule compiled, as any segment's)."""
    query, params = segment_sql.count_query(BY_ID[segment_id].node)
    count = await conn.fetchval(query, uuid.UUID(workspace_id), as_of, *params)
    return int(count)


async def profile_of(
    conn: asyncpg.Connection, workspace_id: str, contact_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT contact_id, email, vip, tags, attributes, signed_up_at, score, consents,"
        " suppressed, suppression_reason, version, created_at, updated_at"
        " FROM profiles WHERE workspace_id = $1 AND contact_id = $2",
        uuid.UUID(workspace_id),
        uuid.UUID(contact_id),
    )


async def orders_of(
    conn: asyncpg.Connection, workspace_id: str, contact_id: str
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT order_id, placed_at, total_minor, currency, status FROM orders"
            " WHERE workspace_id = $1 AND contact_id = $2 ORDER BY placed_at NULLS LAST, order_id",
            uuid.UUID(workspace_id),
            uuid.UUID(contact_id),
        )
    )
