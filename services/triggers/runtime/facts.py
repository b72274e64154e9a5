"""What the engine knows of each contact (``contact_facts``) and its recent events
(``contact_events``), written in the transaction of the event that taught it.

Contacts' events carry the contact's version: a profile, tag or score event is applied
only when newer than the version held, so a redelivered or reordered copy changes nothing.
Shop, segment and tracking events move what contacts does not know (money spent, last
activity, segments); they are guarded by the event's claim (processed_events) instead.

Tag overlays. A workflow's Tag step changes ``tags`` at once (the contact's next order must
see it: seed 002) and leaves a ``commands`` row that the relay carries to contacts later
(services/triggers/commands.py). Contacts' events, meanwhile, describe states from before
that change: replacing ``tags`` by an event's would forget the engine's later changes until
their own event came (order 1's TagsChanged arriving after order 2 was handled made order 3
a "second purchase"). So ``base_tags`` holds contacts' tags as of ``version``, a tags
command stays an overlay until an event at least as new as the version contacts answered it
with (``commands.settled_version``) has been applied, and ``tags`` is always ``base_tags``
with the live overlays applied in the order they were written (:func:`fold_tags`). A
command contacts refused for good (the contact does not exist there) is dropped by the relay
without touching ``tags``: contacts will never say otherwise, so the engine's word stands, as
before overlays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
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
            "INSERT INTO contact_facts AS f (workspace_id, contact_id, version, tags, base_tags,"
            " attributes, time_zone, birthday, signed_up_at)"
            " VALUES ($1, $2, $3, $4, $4, $5::jsonb, $6, $7, $8)"
            " ON CONFLICT (workspace_id, contact_id) DO UPDATE SET version = EXCLUDED.version,"
            " tags = EXCLUDED.tags, base_tags = EXCLUDED.base_tags,"
            " attributes = EXCLUDED.attributes,"
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
        if not row:
            return None
        await _overlay(conn, ws, contact.id, contact.version, sorted(contact.tags))
        return contact.id
    if kind == "tags_changed":
        tags = envelope.tags_changed
        row = await conn.fetchval(
            "INSERT INTO contact_facts AS f (workspace_id, contact_id, version, tags, base_tags)"
            " VALUES ($1, $2, $3, $4, $4) ON CONFLICT (workspace_id, contact_id) DO UPDATE"
            " SET version = EXCLUDED.version, tags = EXCLUDED.tags, base_tags = EXCLUDED.tags"
            " WHERE f.version < EXCLUDED.version RETURNING 1",
            ws,
            tags.contact_id,
            tags.version,
            sorted(tags.tags),
        )
        if not row:
            return None
        await _overlay(conn, ws, tags.contact_id, tags.version, sorted(tags.tags))
        return str(tags.contact_id)
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
        if not row:
            return None
        await _overlay(conn, ws, deleted.contact_id, deleted.version, None)
        return str(deleted.contact_id)
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
        if not row:
            return None
        await _overlay(conn, ws, score.contact_id, score.version, None)
        return str(score.contact_id)
    return None


def fold_tags(
    base: Iterable[str], changes: Iterable[tuple[Iterable[str], Iterable[str]]]
) -> list[str]:
    """``base`` with each (added, removed) change applied in order, as contacts applies one
    (``services.contacts.domain.model.modify_tags``: a tag in both is added)."""
    tags = set(base)
    for add, remove in changes:
        tags.difference_update(remove)
        tags.update(add)
    return sorted(tags)


def _change_of(payload: Any) -> tuple[list[str], list[str]]:
    body = fastjson.loads(payload) if isinstance(payload, (str, bytes)) else payload
    return [str(t) for t in body.get("add", [])], [str(t) for t in body.get("remove", [])]


async def _overlay(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: str,
    version: int,
    base: list[str] | None,
) -> None:
    """After contacts' event of ``version`` was applied to the (locked) facts row: drop the
    overlays it covers and put the others back on top of its tags (``base``; None: the
    event did not carry tags, ``base_tags`` stands). One statement when the contact has no
    overlay, the usual case."""
    rows = await conn.fetch(
        "WITH covered AS (DELETE FROM commands WHERE workspace_id = $1 AND contact_id = $2"
        " AND kind = 'tags' AND settled_version <= $3)"
        " SELECT payload, settled_version FROM commands WHERE workspace_id = $1"
        " AND contact_id = $2 AND kind = 'tags' ORDER BY created_at, id",
        workspace_id,
        contact_id,
        version,
    )
    if not rows:
        return
    await _retag(conn, workspace_id, contact_id, version, base, rows)


async def _retag(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: str,
    version: int,
    base: list[str] | None,
    commands: Sequence[asyncpg.Record],
) -> None:
    """Set ``tags`` to ``base`` (or the row's ``base_tags``) with the ``commands`` rows still
    live at ``version`` applied in order (the rows' order)."""
    live = [
        _change_of(c["payload"])
        for c in commands
        if c["settled_version"] is None or c["settled_version"] > version
    ]
    if base is None:
        base = await conn.fetchval(
            "SELECT base_tags FROM contact_facts WHERE workspace_id = $1 AND contact_id = $2",
            workspace_id,
            contact_id,
        )
    await conn.execute(
        "UPDATE contact_facts SET tags = $3 WHERE workspace_id = $1 AND contact_id = $2",
        workspace_id,
        contact_id,
        fold_tags(base or [], live),
    )


async def settle_tags(
    conn: asyncpg.Connection, command_id: str, workspace_id: str, contact_id: str, version: int
) -> None:
    """Contacts carried out the tags command ``command_id`` and answered with the contact at
    ``version``. Until the engine has applied an event that new, the command stays an
    overlay (settled, never sent again); once it has, the command goes and ``tags`` is
    recomputed without it. In the caller's transaction; the facts row is locked first, as
    the engine's transactions lock facts before commands."""
    held = await _lock_facts(conn, workspace_id, contact_id)
    if held is None or held < version:
        await conn.execute(
            "UPDATE commands SET settled_version = $2, next_try_at = 'infinity' WHERE id = $1",
            command_id,
            version,
        )
        return
    # The event came first and put this command back on top of it: take it off.
    await _take_off(conn, command_id, workspace_id, contact_id, held)


async def drop_tags(
    conn: asyncpg.Connection, command_id: str, workspace_id: str, contact_id: str
) -> None:
    """Contacts refused the tags command ``command_id`` for good (a tag it does not accept,
    a contact it does not know): the command goes, and ``tags`` is recomputed without it,
    so that no condition goes on reading a tag the contact never got. In the caller's
    transaction, the facts row locked first, as in :func:`settle_tags`."""
    held = await _lock_facts(conn, workspace_id, contact_id)
    if held is None:
        await conn.execute("DELETE FROM commands WHERE id = $1", command_id)
        return
    await _take_off(conn, command_id, workspace_id, contact_id, held)


async def _lock_facts(conn: asyncpg.Connection, workspace_id: str, contact_id: str) -> int | None:
    """Lock the contact's facts row (before its commands, as the engine's transactions do);
    the contacts version it holds, None when there is no row."""
    held: int | None = await conn.fetchval(
        "SELECT version FROM contact_facts WHERE workspace_id = $1 AND contact_id = $2 FOR UPDATE",
        workspace_id,
        contact_id,
    )
    return held


async def _take_off(
    conn: asyncpg.Connection, command_id: str, workspace_id: str, contact_id: str, version: int
) -> None:
    """Delete the tags command and put contacts' tags as of ``version`` back, with the
    other overlays still live on top."""
    await conn.execute("DELETE FROM commands WHERE id = $1", command_id)
    rows = await conn.fetch(
        "SELECT payload, settled_version FROM commands WHERE workspace_id = $1"
        " AND contact_id = $2 AND kind = 'tags' ORDER BY created_at, id",
        workspace_id,
        contact_id,
    )
    await _retag(conn, workspace_id, contact_id, version, None, rows)


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
            "WITH q AS (SELECT * FROM unnest(uuids($1), uuids($2),"
            "  bigints($3), $4::text[], $5::timestamptz[], $6::text[], $7::text[],"
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
        "WITH q AS (SELECT * FROM unnest(uuids($1), uuids($2),"
        "  bigints($3), $4::text[], $5::timestamptz[], $6::text[], $7::text[],"
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
        # As contacts applies one change (and fold_tags): removed, then added.
        added.difference_update(remove)
        removed.update(remove)
        added.update(add)
        removed.difference_update(add)
    if not folded:
        return
    keys = sorted(folded)  # one order of row locks for every transaction
    updated = await conn.fetch(
        "UPDATE contact_facts f SET tags = ARRAY(SELECT t FROM unnest(f.tags) AS t"
        "  WHERE NOT t = ANY(ARRAY(SELECT jsonb_array_elements_text(q.r)))"
        "  UNION SELECT jsonb_array_elements_text(q.a) ORDER BY 1)"
        " FROM unnest(uuids($1), uuids($2), $3::jsonb[], $4::jsonb[])"
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
            # Settled tag overlays whose event never came (contacts publishes one for every
            # version, so none should be left): the change is in ``tags`` already.
            await pool.execute(
                "DELETE FROM commands WHERE settled_version IS NOT NULL AND created_at < $1",
                before,
            )
        except Exception as err:
            if not is_dependency_outage(err):
                raise
            log.warning("pruning contact events failed (%r); trying again later", err)
        await asyncio.sleep(every_s)
