"""What the engine knows of each contact (``contact_facts``) and its recent events
(``contact_events``), written in the transaction of the event that taught it.

Contacts' events carry the contact's version: a profile, tag or score event is applied
only when newer than the version held, so a redelivered or reordered copy changes nothing.
Shop, segment and tracking events move what contacts does not know (money spent, last
activity, segments); they are guarded by the event's claim (processed_events) instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from nudge.contacts.v1 import contacts_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import clock, fastjson
from services.common.consumer import is_dependency_outage
from services.common.db import id_array
from services.triggers.runtime.observed import Observation, seen_to_json

log = logging.getLogger(__name__)

# contacts.events.v1 payloads that change facts, and their event name for the derived hooks.
CONTACT_PAYLOADS = (
    "contact_created",
    "contact_updated",
    "tags_changed",
    "score_changed",
    "contact_deleted",
)
# How far back ``happened`` conditions and late exit rules look (contact_events is pruned
# past it; a run longer than that sees only its last 90 days of events).
EVENTS_KEPT_DAYS = 90


def _birthday(contact: contacts_pb2.Contact) -> datetime | None:
    b = contact.birthday
    if not contact.HasField("birthday") or not (b.month and b.day):
        return None
    try:
        return datetime(b.year or 2000, b.month, b.day, tzinfo=UTC)
    except ValueError:
        return None


def contact_of(envelope: Envelope) -> str:
    """The contact a contacts.events.v1 envelope is about ('' if none or not one we read)."""
    kind = envelope.WhichOneof("payload")
    if kind == "contact_created":
        return envelope.contact_created.contact.id
    if kind == "contact_updated":
        return envelope.contact_updated.contact.id
    if kind in ("tags_changed", "score_changed", "contact_deleted"):
        return str(getattr(envelope, kind).contact_id)
    return ""


async def apply_contact_event(conn: asyncpg.Connection, envelope: Envelope) -> str | None:
    """Apply a contacts.events.v1 envelope to ``contact_facts``; the contact id when it
    changed something (the event was newer than what is held), else None."""
    kind = envelope.WhichOneof("payload")
    ws = envelope.workspace_id
    if kind in ("contact_created", "contact_updated"):
        contact = (
            envelope.contact_created.contact
            if kind == "contact_created"
            else envelope.contact_updated.contact
        )
        birthday = _birthday(contact)
        signed_up = (
            contact.signed_up_at.ToDatetime(tzinfo=UTC)
            if contact.HasField("signed_up_at")
            else None
        )
        row = await conn.fetchval(
            "INSERT INTO contact_facts AS f (workspace_id, contact_id, version, tags, attributes,"
            " time_zone, birthday, signed_up_at) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)"
            " ON CONFLICT (workspace_id, contact_id) DO UPDATE SET version = EXCLUDED.version,"
            " tags = EXCLUDED.tags, attributes = EXCLUDED.attributes,"
            " time_zone = EXCLUDED.time_zone, birthday = EXCLUDED.birthday,"
            " signed_up_at = EXCLUDED.signed_up_at WHERE f.version < EXCLUDED.version"
            " RETURNING 1",
            ws,
            contact.id,
            contact.version,
            sorted(contact.tags),
            fastjson.dumps(dict(contact.attributes)),
            contact.time_zone,
            birthday.date() if birthday else None,
            signed_up,
        )
        return contact.id if row else None
    if kind == "tags_changed":
        tags = envelope.tags_changed
        row = await conn.fetchval(
            "INSERT INTO contact_facts AS f (workspace_id, contact_id, version, tags)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (workspace_id, contact_id) DO UPDATE"
            " SET version = EXCLUDED.version, tags = EXCLUDED.tags"
            " WHERE f.version < EXCLUDED.version RETURNING 1",
            ws,
            tags.contact_id,
            tags.version,
            sorted(tags.tags),
        )
        return tags.contact_id if row else None
    if kind == "contact_deleted":
        deleted = envelope.contact_deleted
        row = await conn.fetchval(
            "INSERT INTO contact_facts AS f (workspace_id, contact_id, version)"
            " VALUES ($1, $2, $3) ON CONFLICT (workspace_id, contact_id) DO UPDATE"
            " SET version = EXCLUDED.version WHERE f.version < EXCLUDED.version RETURNING 1",
            ws,
            deleted.contact_id,
            deleted.version,
        )
        return deleted.contact_id if row else None
    if kind == "score_changed":
        score = envelope.score_changed
        row = await conn.fetchval(
            "INSERT INTO contact_facts AS f (workspace_id, contact_id, version)"
            " VALUES ($1, $2, $3) ON CONFLICT (workspace_id, contact_id) DO UPDATE"
            " SET version = EXCLUDED.version WHERE f.version < EXCLUDED.version RETURNING 1",
            ws,
            score.contact_id,
            score.version,
        )
        return score.contact_id if row else None
    return None


async def apply_observation(conn: asyncpg.Connection, obs: Observation) -> None:
    """Record the event in ``contact_events`` and move the contact's facts by it."""
    ws, contact = obs.workspace_id, obs.contact_id
    seen = obs.seen
    # One statement for both tables (a round trip less on every event); they are different
    # tables, so neither part needs to see what the other wrote.
    await conn.execute(
        "WITH recorded AS (INSERT INTO contact_events (workspace_id, contact_id, event_id,"
        " event, occurred_at, event_key, data) VALUES ($1, $2, $8, $9, $10, $11, $12::jsonb)"
        " ON CONFLICT DO NOTHING)"
        " INSERT INTO contact_facts AS f (workspace_id, contact_id, total_spent_minor, currency,"
        " last_activity_at, segments) VALUES ($1, $2, $3, $4, $5,"
        " CASE WHEN $6 = '' THEN '{}'::text[] ELSE ARRAY[$6] END)"
        " ON CONFLICT (workspace_id, contact_id) DO UPDATE SET"
        " total_spent_minor = f.total_spent_minor + EXCLUDED.total_spent_minor,"
        " currency = CASE WHEN EXCLUDED.currency = '' THEN f.currency ELSE EXCLUDED.currency END,"
        " last_activity_at = GREATEST(f.last_activity_at, EXCLUDED.last_activity_at),"
        " segments = CASE WHEN $6 <> '' AND NOT $6 = ANY(f.segments) THEN f.segments || $6"
        "   WHEN $7 <> '' THEN array_remove(f.segments, $7) ELSE f.segments END",
        ws,
        contact,
        obs.spent_minor,
        obs.currency,
        seen.occurred_at if obs.activity else None,
        obs.segment_entered,
        obs.segment_exited,
        obs.event_id,
        seen.event,
        seen.occurred_at,
        seen.key,
        fastjson.dumps(seen_to_json(seen)),
    )


async def apply_observations(conn: asyncpg.Connection, observations: list[Observation]) -> None:
    """:func:`apply_observation` for a round of events of different contacts, in order of
    contact so that two rounds sharing contacts lock their facts in one order: one statement
    for the events that change no segment (shop events, opens and clicks), one for segment
    entries and exits of contacts whose facts the engine holds (a contact it does not know
    yet is written alone)."""
    ordered = sorted(observations, key=lambda o: (o.workspace_id, o.contact_id))
    plain = [o for o in ordered if not (o.segment_entered or o.segment_exited)]
    moved = [o for o in ordered if o.segment_entered or o.segment_exited]
    if plain:
        await conn.execute(
            "WITH q AS (SELECT * FROM unnest($1::text::uuid[], $2::text::uuid[],"
            "  $3::text::bigint[], $4::text[], $5::timestamptz[], $6::text[], $7::text[],"
            "  $8::timestamptz[], $9::text[], $10::text[])"
            "  WITH ORDINALITY AS q(w, c, spent, cur, act, eid, ev, at, k, d, n)),"
            f" {_RECORDED}"
            " INSERT INTO contact_facts AS f (workspace_id, contact_id, total_spent_minor,"
            " currency, last_activity_at, segments)"
            " SELECT w, c, spent, cur, act, '{}'::text[] FROM q ORDER BY n"
            " ON CONFLICT (workspace_id, contact_id) DO UPDATE SET"
            " total_spent_minor = f.total_spent_minor + EXCLUDED.total_spent_minor,"
            " currency = CASE WHEN EXCLUDED.currency = '' THEN f.currency"
            "  ELSE EXCLUDED.currency END,"
            " last_activity_at = GREATEST(f.last_activity_at, EXCLUDED.last_activity_at)",
            *_columns(plain),
        )
    if not moved:
        return
    updated = await conn.fetch(
        "WITH q AS (SELECT * FROM unnest($1::text::uuid[], $2::text::uuid[],"
        "  $3::text::bigint[], $4::text[], $5::timestamptz[], $6::text[], $7::text[],"
        "  $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::text[])"
        "  AS q(w, c, spent, cur, act, eid, ev, at, k, d, ent, ex)),"
        f" {_RECORDED}"
        " UPDATE contact_facts f SET total_spent_minor = f.total_spent_minor + q.spent,"
        " currency = CASE WHEN q.cur = '' THEN f.currency ELSE q.cur END,"
        " last_activity_at = GREATEST(f.last_activity_at, q.act),"
        " segments = CASE WHEN q.ent <> '' AND NOT q.ent = ANY(f.segments)"
        "  THEN f.segments || q.ent WHEN q.ex <> '' THEN array_remove(f.segments, q.ex)"
        "  ELSE f.segments END"
        " FROM q WHERE f.workspace_id = q.w AND f.contact_id = q.c"
        " RETURNING f.workspace_id::text, f.contact_id::text",
        *_columns(moved),
        [o.segment_entered for o in moved],
        [o.segment_exited for o in moved],
    )
    known = {(r[0], r[1]) for r in updated}
    for obs in moved:
        if (obs.workspace_id, obs.contact_id) not in known:
            await apply_observation(conn, obs)


# The event recorded in contact_events, from a CTE ``q`` of the columns of :func:`_columns`.
_RECORDED = (
    "recorded AS (INSERT INTO contact_events (workspace_id, contact_id, event_id, event,"
    " occurred_at, event_key, data) SELECT w, c, eid, ev, at, k, d::jsonb FROM q"
    " ON CONFLICT DO NOTHING)"
)


def _columns(observations: list[Observation]) -> list[Any]:
    return [
        id_array(o.workspace_id for o in observations),
        id_array(o.contact_id for o in observations),
        id_array(str(o.spent_minor) for o in observations),
        [o.currency for o in observations],
        [o.seen.occurred_at if o.activity else None for o in observations],
        [o.event_id for o in observations],
        [o.seen.event for o in observations],
        [o.seen.occurred_at for o in observations],
        [o.seen.key for o in observations],
        [fastjson.dumps(seen_to_json(o.seen)) for o in observations],
    ]


async def write_through_tags(
    conn: asyncpg.Connection,
    changes: Sequence[tuple[str, str, tuple[str, ...], tuple[str, ...]]],
) -> None:
    """The engine's own tag changes, (workspace, contact, added, removed) in the order they
    were decided, seen at once by the contact's next event (seed 002); contacts'
    TagsChanged, newer, overwrites them with the truth later. One statement for any
    number: a contact's changes are folded into one first."""
    folded: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
    for workspace_id, contact_id, add, remove in changes:
        added, removed = folded.setdefault((workspace_id, contact_id), (set(), set()))
        added.difference_update(remove)
        removed.update(remove)
        added.update(set(add) - set(remove))
    if not folded:
        return
    keys = sorted(folded)  # one order of row locks for every transaction
    updated = await conn.fetch(
        "UPDATE contact_facts f SET tags = ARRAY(SELECT t FROM unnest(f.tags) AS t"
        "  WHERE NOT t = ANY(ARRAY(SELECT jsonb_array_elements_text(q.r)))"
        "  UNION SELECT jsonb_array_elements_text(q.a) ORDER BY 1)"
        " FROM unnest($1::text::uuid[], $2::text::uuid[], $3::jsonb[], $4::jsonb[])"
        " AS q(w, c, a, r)"
        " WHERE f.workspace_id = q.w AND f.contact_id = q.c"
        " RETURNING f.workspace_id::text, f.contact_id::text",
        id_array(w for w, _ in keys),
        id_array(c for _, c in keys),
        [fastjson.dumps(sorted(folded[k][0])) for k in keys],
        [fastjson.dumps(sorted(folded[k][1])) for k in keys],
    )
    # The contact's event made its facts row in the same transaction, so the update finds
    # it; a contact without one (no event kept) gets it here.
    for key in sorted(set(keys) - {(r[0], r[1]) for r in updated}):
        added, removed = folded[key]
        await conn.execute(
            "INSERT INTO contact_facts AS f (workspace_id, contact_id, tags)"
            " VALUES ($1, $2, $3) ON CONFLICT (workspace_id, contact_id) DO UPDATE SET"
            " tags = ARRAY(SELECT t FROM unnest(f.tags) AS t WHERE NOT t = ANY($4::text[])"
            "  UNION SELECT unnest($3::text[]) ORDER BY 1)",
            key[0],
            key[1],
            sorted(added),
            sorted(removed),
        )


async def prune_events(pool: asyncpg.Pool, before: datetime, *, batch: int = 10_000) -> int:
    """Delete the contact events that happened before ``before``, in short transactions of
    ``batch`` rows; how many went."""
    total = 0
    while True:
        status = await pool.execute(
            "DELETE FROM contact_events WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM contact_events WHERE occurred_at < $1 LIMIT $2))",
            before,
            batch,
        )
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch:
            return total


async def prune_events_forever(pool: asyncpg.Pool, every_s: float = 3600.0) -> None:
    """Keep ``contact_events`` to the last :data:`EVENTS_KEPT_DAYS` days, pruned hourly. A
    run older than that sees only the events of its last 90 days (docs/triggers.md)."""
    while True:
        try:
            before = clock.now() - timedelta(days=EVENTS_KEPT_DAYS)
            deleted = await prune_events(pool, before)
            if deleted:
                log.info("pruned %s contact events older than %s", deleted, before)
        except Exception as err:
            if not is_dependency_outage(err):
                raise
            log.warning("pruning contact events failed (%r); trying again later", err)
        await asyncio.sleep(every_s)
