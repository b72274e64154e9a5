"""What the engine knows of each contact (``contact_facts``) and its recent events
(``contact_events``), written in the transaction of the event that taught it.

Contacts' events carry the contact's version: a profile, tag or score event is applied
only when newer than the version held, so a redelivered or reordered copy changes nothing.
Shop, segment and tracking events move what contacts does not know (money spent, last
activity, segments); they are guarded by the event's claim (processed_events) instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from nudge.contacts.v1 import contacts_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import clock
from services.common.consumer import is_dependency_outage
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
    ws = uuid.UUID(envelope.workspace_id)
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
            uuid.UUID(contact.id),
            contact.version,
            sorted(contact.tags),
            json.dumps(dict(contact.attributes)),
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
            uuid.UUID(tags.contact_id),
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
            uuid.UUID(deleted.contact_id),
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
            uuid.UUID(score.contact_id),
            score.version,
        )
        return score.contact_id if row else None
    return None


async def apply_observation(conn: asyncpg.Connection, obs: Observation) -> None:
    """Record the event in ``contact_events`` and move the contact's facts by it."""
    ws, contact = uuid.UUID(obs.workspace_id), uuid.UUID(obs.contact_id)
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
        json.dumps(seen_to_json(seen)),
    )


async def write_through_tags(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: str,
    add: tuple[str, ...],
    remove: tuple[str, ...],
) -> None:
    """The engine's own tag change, seen at once by the contact's next event (seed 002);
    contacts' TagsChanged, newer, overwrites it with the truth later."""
    await conn.execute(
        "INSERT INTO contact_facts AS f (workspace_id, contact_id, tags) VALUES ($1, $2, $3)"
        " ON CONFLICT (workspace_id, contact_id) DO UPDATE SET tags = ARRAY("
        "  SELECT DISTINCT t FROM unnest(f.tags || $3::text[]) AS t"
        "  WHERE NOT t = ANY($4::text[]) ORDER BY t)",
        uuid.UUID(workspace_id),
        uuid.UUID(contact_id),
        sorted(set(add) - set(remove)),
        list(remove),
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
