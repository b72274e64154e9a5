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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from services.segmentation.adapters import segment_sql
from services.segmentation.domain.builtins import BY_ID
from services.segmentation.domain.readmodel import (
    CLAIMED,
    UNVERSIONED,
    CartUpdated,
    ConsentSet,
    LinkClicked,
    MessageOpened,
    OrderPlaced,
    OrderVoided,
    PageViewed,
    ProfileSnapshot,
    ReadModelChange,
    Removed,
    ScoreSet,
    Searched,
    SignedUp,
    Suppressed,
    TagsSet,
    visit_at,
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


@dataclass
class Applied:
    """What :func:`apply` did: per item whether it changed the read model (``results``, in
    the order of the items), and per contact the event that last changed it.

    ``changed`` maps each (workspace, contact) whose profile, orders or activity changed to
    the event id of its last applied item, so that whoever re-evaluates memberships in the
    same transaction can name the cause; ``removed`` maps each contact deleted or erased by
    the batch to its removal's event id (such a key is not in ``changed``). It reads as the
    list of results too (``all(applied)``, ``applied == [True, False]``, ``applied[0]``).
    """

    results: list[bool]
    changed: dict[Key, str] = field(default_factory=dict)
    removed: dict[Key, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[bool]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> bool:
        return self.results[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return self.results == other
        if isinstance(other, Applied):
            return (self.results, self.changed, self.removed) == (
                other.results,
                other.changed,
                other.removed,
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def _note(self, item: Pending) -> None:
        if isinstance(item.change, Removed):
            self.changed.pop(item.key, None)
            self.removed[item.key] = item.event_id
        else:
            self.removed.pop(item.key, None)
            self.changed.pop(item.key, None)  # re-insert: the last applied item names it
            self.changed[item.key] = item.event_id


async def apply(conn: asyncpg.Connection, items: Sequence[Pending], now: datetime) -> Applied:
    """Apply ``items`` in order inside the caller's transaction; for each, whether it changed
    the read model (False: an older or repeated event, or a tombstoned contact), and which
    contacts changed or went (:class:`Applied`)."""
    applied = Applied([False] * len(items))
    for indexes in rounds(items):
        await _apply_round(conn, [items[i] for i in indexes], now, indexes, applied.results)
    for item, result in zip(items, applied.results, strict=True):
        if result:
            applied._note(item)
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
    claimed_ids = [item.event_id for _, item in live if isinstance(item.change, CLAIMED)]
    claimed = await _claim(conn, claimed_ids) if claimed_ids else set()
    todo: list[tuple[int, Pending]] = []
    for i, item in live:
        if isinstance(item.change, CLAIMED):
            if item.event_id not in claimed:
                continue
            applied[i] = True
        todo.append((i, item))
    # In a fixed order: the profile a shop event touches exists before its orders, cart and
    # aggregates are written (a round holds each contact once, so order across kinds only
    # matters for that).
    orders_changed: set[Key] = set()
    for kinds, step in _STEPS:
        group = [(i, item) for i, item in todo if isinstance(item.change, kinds)]
        if not group:
            continue
        changed = await step(conn, [item for _, item in group], now)
        if kinds in ((OrderPlaced,), (OrderVoided,)):
            orders_changed.update(item.key for _, item in group)
        if changed is not None:
            for i, item in group:
                applied[i] = item.key in changed
    if orders_changed:
        await _recompute_orders(conn, sorted(orders_changed))


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


def _last_per_order(items: list[Pending]) -> list[Pending]:
    """One change per order (the last): an upsert must not touch a row twice, and two
    contacts' events may name the same order id in one round (a shop reusing ids)."""
    last: dict[tuple[str, str], Pending] = {}
    for item in items:
        order_id: str = getattr(item.change, "order_id")  # noqa: B009 - OrderPlaced/Voided
        last.pop((item.workspace_id, order_id), None)
        last[(item.workspace_id, order_id)] = item
    return list(last.values())


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
        "first_name": "text",
        "last_name": "text",
    },
    # A signup time the snapshot lacks is kept (a SignedUp shop event may have set it).
    "email = EXCLUDED.email, vip = EXCLUDED.vip, tags = EXCLUDED.tags,"
    " attributes = EXCLUDED.attributes,"
    " signed_up_at = coalesce(EXCLUDED.signed_up_at, p.signed_up_at), score = EXCLUDED.score,"
    " first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name",
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
            "first_name": c.first_name,
            "last_name": c.last_name,
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
), activity_gone AS (
    DELETE FROM activity a USING gone g WHERE a.workspace_id = g.ws AND a.contact_id = g.contact
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
    """Delete the contacts' profiles, orders and activity and leave a tombstone; an erasure after a
    deletion only marks the tombstone erased (there is nothing left to remove)."""

    def fields(c: Removed) -> dict[str, object]:
        return {"version": c.version, "reason": "erased" if c.erased else "deleted"}

    return _keys(await conn.fetch(_REMOVE, _rows(items, fields), now))


# The two statements every shop or tracking event runs take parallel arrays, not JSON: the
# rows are encoded by asyncpg's binary codecs (datetimes included) instead of json.dumps.
_TOUCH = """
INSERT INTO profiles AS p (workspace_id, contact_id, last_visit_at, last_open_at, last_click_at,
                           created_at, updated_at)
SELECT r.ws::uuid, r.contact::uuid, r.visit_at, r.open_at, r.click_at, $6, $6
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[])
    AS r(ws, contact, visit_at, open_at, click_at)
ON CONFLICT (workspace_id, contact_id) DO UPDATE SET
    last_visit_at = greatest(p.last_visit_at, EXCLUDED.last_visit_at),
    last_open_at = greatest(p.last_open_at, EXCLUDED.last_open_at),
    last_click_at = greatest(p.last_click_at, EXCLUDED.last_click_at),
    updated_at = EXCLUDED.updated_at
-- An older event moves nothing: no new row version written (most of a replay's).
WHERE EXCLUDED.last_visit_at > p.last_visit_at OR EXCLUDED.last_open_at > p.last_open_at
   OR EXCLUDED.last_click_at > p.last_click_at
   OR (p.last_visit_at IS NULL AND EXCLUDED.last_visit_at IS NOT NULL)
   OR (p.last_open_at IS NULL AND EXCLUDED.last_open_at IS NOT NULL)
   OR (p.last_click_at IS NULL AND EXCLUDED.last_click_at IS NOT NULL)
"""


async def _touch(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> None:
    """Create the profiles shop and tracking events name (their snapshot fills them later)
    and move the last visit, open and click times forward: by event time (``greatest``), so
    a late or repeated event never moves one back."""
    visits: list[datetime | None] = []
    opens: list[datetime | None] = []
    clicks: list[datetime | None] = []
    for item in items:
        c = item.change
        visits.append(visit_at(c))
        opens.append(c.at if isinstance(c, MessageOpened) else None)
        clicks.append(c.at if isinstance(c, LinkClicked) else None)
    await conn.execute(
        _TOUCH,
        [item.workspace_id for item in items],
        [item.change.contact_id for item in items],
        visits,
        opens,
        clicks,
        now,
    )


_ACTIVITY = """
INSERT INTO activity (workspace_id, contact_id, kind, subject, at, event_id)
SELECT r.ws::uuid, r.contact::uuid, r.kind, r.subject, r.at, r.event_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
    AS r(ws, contact, kind, subject, at, event_id)
ON CONFLICT DO NOTHING
RETURNING workspace_id, contact_id
"""


def _activity_of(change: ReadModelChange) -> tuple[str, str, datetime]:
    if isinstance(change, PageViewed):
        return "page_viewed", change.category, change.at
    if isinstance(change, Searched):
        return "searched", change.query, change.at
    if isinstance(change, MessageOpened):
        return "message_opened", "", change.at
    if isinstance(change, LinkClicked):
        return "link_clicked", change.url, change.at
    raise TypeError(type(change).__name__)  # pragma: no cover - _STEPS routes only these


async def _activity(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> set[Key]:
    """One row per event (its id in the key: a replay adds nothing, and is reported so)."""
    kinds, subjects, times = zip(*(_activity_of(item.change) for item in items), strict=True)
    rows = await conn.fetch(
        _ACTIVITY,
        [item.workspace_id for item in items],
        [item.change.contact_id for item in items],
        kinds,
        subjects,
        times,
        [item.event_id for item in items],
    )
    return _keys(rows)


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
    """Store placed orders as completed (a cancellation that arrived first keeps its status)
    and clear the cart each was placed from, or any cart older than it."""

    def fields(c: OrderPlaced) -> dict[str, object]:
        return {
            "order_id": c.order_id,
            "placed_at": c.placed_at,
            "total_minor": c.total_minor,
            "currency": c.currency,
            "categories": list(c.categories),
            "cart_id": c.cart_id,
        }

    rows = _rows(_last_per_order(items), fields)
    await conn.execute(
        "INSERT INTO orders (workspace_id, order_id, contact_id, placed_at, total_minor,"
        " currency, status, updated_at, categories, cart_id)"
        " SELECT r.ws, r.order_id, r.contact, r.placed_at, r.total_minor, r.currency, $3, $2,"
        "   r.categories, r.cart_id"
        " FROM jsonb_to_recordset($1::jsonb) AS r(ws uuid, contact uuid, order_id text,"
        "   placed_at timestamptz, total_minor bigint, currency text, categories text[],"
        "   cart_id text)"
        " ON CONFLICT (workspace_id, order_id) DO UPDATE SET"
        "   contact_id = EXCLUDED.contact_id, placed_at = EXCLUDED.placed_at,"
        "   total_minor = EXCLUDED.total_minor, currency = EXCLUDED.currency,"
        "   categories = EXCLUDED.categories, cart_id = EXCLUDED.cart_id,"
        "   updated_at = EXCLUDED.updated_at",
        rows,
        now,
        OrderStatus.COMPLETED.value,
    )
    await conn.execute(
        "UPDATE profiles p SET cart = NULL"
        " FROM jsonb_to_recordset($1::jsonb)"
        "   AS r(ws uuid, contact uuid, placed_at timestamptz, cart_id text)"
        " WHERE p.workspace_id = r.ws AND p.contact_id = r.contact AND p.cart IS NOT NULL"
        "   AND ((p.cart->>'updated_at')::timestamptz <= r.placed_at"
        "        OR (r.cart_id <> '' AND p.cart->>'cart_id' = r.cart_id))",
        rows,
    )


async def _orders_voided(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> None:
    """Mark orders cancelled or refunded, creating those whose placement is still to come."""

    def fields(c: OrderVoided) -> dict[str, object]:
        return {"order_id": c.order_id, "status": c.status.value}

    await conn.execute(
        "INSERT INTO orders (workspace_id, order_id, contact_id, status, updated_at)"
        " SELECT r.ws, r.order_id, r.contact, r.status, $2"
        " FROM jsonb_to_recordset($1::jsonb)"
        "   AS r(ws uuid, contact uuid, order_id text, status text)"
        " ON CONFLICT (workspace_id, order_id) DO UPDATE SET"
        "   status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
        _rows(_last_per_order(items), fields),
        now,
    )


# The aggregates of the given contacts, recomputed from their completed orders: exact
# whatever order placements, cancellations and repeats arrived in, and one statement for a
# batch. Rows whose aggregates did not change are not written.
_RECOMPUTE = """
WITH k AS (
    SELECT DISTINCT ws, contact
    FROM unnest($1::text[]::uuid[], $2::text[]::uuid[]) AS k(ws, contact)
), per_currency AS (
    SELECT o.workspace_id, o.contact_id, o.currency, count(*) AS n, sum(o.total_minor) AS total,
           min(o.placed_at) AS first_at, max(o.placed_at) AS last_at
    FROM orders o JOIN k ON o.workspace_id = k.ws AND o.contact_id = k.contact
    WHERE o.status = 'completed' AND o.placed_at IS NOT NULL
    GROUP BY o.workspace_id, o.contact_id, o.currency
), agg AS (
    SELECT k.ws, k.contact,
           coalesce(sum(c.n), 0)::integer AS n,
           min(c.first_at) AS first_at,
           max(c.last_at) AS last_at,
           coalesce(
               jsonb_object_agg(
                   coalesce(c.currency, ''),
                   jsonb_build_object('total_minor', c.total, 'orders', c.n)
               ) FILTER (WHERE c.n IS NOT NULL),
               '{}'::jsonb
           ) AS spent
    FROM k LEFT JOIN per_currency c ON c.workspace_id = k.ws AND c.contact_id = k.contact
    GROUP BY k.ws, k.contact
)
UPDATE profiles p SET
    orders_count = agg.n, first_order_at = agg.first_at, last_order_at = agg.last_at,
    spent = agg.spent
FROM agg
WHERE p.workspace_id = agg.ws AND p.contact_id = agg.contact
  AND (p.orders_count, p.first_order_at, p.last_order_at, p.spent)
      IS DISTINCT FROM (agg.n, agg.first_at, agg.last_at, agg.spent)
"""


async def _recompute_orders(conn: asyncpg.Connection, keys: list[Key]) -> None:
    await conn.execute(_RECOMPUTE, [ws for ws, _ in keys], [c for _, c in keys])


async def _carts(conn: asyncpg.Connection, items: list[Pending], now: datetime) -> set[Key]:
    """Set the cart, unless the profile holds a newer one or an order placed at or after
    this cart (or from it) already cleared it: by event time, whatever the arrival order."""

    def fields(c: CartUpdated) -> dict[str, object]:
        return {
            "at": c.at,
            "cart_id": c.cart_id,
            "total_minor": c.total_minor,
            "currency": c.currency,
            "items": c.items,
        }

    return _keys(
        await conn.fetch(
            "UPDATE profiles p SET cart = jsonb_build_object('cart_id', r.cart_id,"
            "   'total_minor', r.total_minor, 'currency', r.currency, 'items', r.items,"
            "   'updated_at', r.at)"
            " FROM jsonb_to_recordset($1::jsonb) AS r(ws uuid, contact uuid, at timestamptz,"
            "   cart_id text, total_minor bigint, currency text, items integer)"
            " WHERE p.workspace_id = r.ws AND p.contact_id = r.contact"
            "   AND (p.cart IS NULL OR (p.cart->>'updated_at')::timestamptz < r.at)"
            "   AND NOT EXISTS (SELECT 1 FROM orders o"
            "     WHERE o.workspace_id = r.ws AND o.contact_id = r.contact"
            "       AND (o.placed_at >= r.at OR (r.cart_id <> '' AND o.cart_id = r.cart_id)))"
            " RETURNING p.workspace_id, p.contact_id",
            _rows(items, fields),
        )
    )


# The statements of a round, in order: each takes the round's changes of its kinds; those
# answering a set of keys report which rows changed (versioned contact changes), the others
# None (the claims of shop and tracking events already say which were applied).
_STEPS: list[tuple[tuple[type, ...], Any]] = [
    ((ProfileSnapshot,), _snapshots),
    ((TagsSet,), _tags),
    ((ScoreSet,), _scores),
    ((ConsentSet,), _consents),
    ((Suppressed,), _suppressions),
    ((Removed,), _removals),
    (UNVERSIONED, _touch),
    ((SignedUp,), _signups),
    ((OrderPlaced,), _orders_placed),
    ((OrderVoided,), _orders_voided),
    ((CartUpdated,), _carts),
    ((PageViewed, Searched, MessageOpened, LinkClicked), _activity),
]


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
        "SELECT contact_id, email, first_name, last_name, vip, tags, attributes, signed_up_at,"
        " score, consents, suppressed, suppression_reason, orders_count, first_order_at,"
        " last_order_at, spent, last_visit_at, last_open_at, last_click_at, cart, version,"
        " created_at, updated_at"
        " FROM profiles WHERE workspace_id = $1 AND contact_id = $2",
        uuid.UUID(workspace_id),
        uuid.UUID(contact_id),
    )


async def orders_of(
    conn: asyncpg.Connection, workspace_id: str, contact_id: str
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT order_id, placed_at, total_minor, currency, status, categories, cart_id"
            " FROM orders"
            " WHERE workspace_id = $1 AND contact_id = $2 ORDER BY placed_at NULLS LAST, order_id",
            uuid.UUID(workspace_id),
            uuid.UUID(contact_id),
        )
    )


async def activity_of(
    conn: asyncpg.Connection, workspace_id: str, contact_id: str
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT kind, subject, at, event_id FROM activity"
            " WHERE workspace_id = $1 AND contact_id = $2 ORDER BY at, kind, event_id",
            uuid.UUID(workspace_id),
            uuid.UUID(contact_id),
        )
    )
