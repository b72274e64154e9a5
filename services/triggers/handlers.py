"""What the trigger engine does with events, in one PostgreSQL transaction per round of
events of different contacts (:func:`on_events`): claim each (a redelivery is a no-op),
update what is known of the contact, record the event, end the runs it exits, start the
runs it triggers (and those the derived triggers return), and write what their first
steps decided.

Idempotent end to end: the claim makes a redelivered envelope a no-op; a run's id is
derived from its workflow and trigger, and every effect's id from its run and step, so
even a replay without the claim (another consumer group) starts and sends nothing twice.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import clock
from services.common.db import id_array
from services.common.idempotency import claim_event
from services.common.ids import canonical_uuid
from services.triggers import derived
from services.triggers.runtime import facts, runs
from services.triggers.runtime.erasure import ERASURE_LOCK
from services.triggers.runtime.observed import Observation, entry_key, event_time, observe
from services.triggers.runtime.runs import Engine

log = logging.getLogger(__name__)

SCHEMA = runs.SCHEMA
CONSUMER = "triggers"


async def on_event(pool: asyncpg.Pool, engine: Engine, envelope: Envelope) -> list[str]:
    """Handle one envelope of any topic the engine reads; the ids of the runs it started."""
    return await on_events(pool, engine, [envelope])


async def on_events(
    pool: asyncpg.Pool,
    engine: Engine,
    envelopes: Sequence[Envelope],
    traces: Sequence[Mapping[str, str] | None] | None = None,
) -> list[str]:
    """Handle envelopes of one topic, each contact's in the order given; the ids of the runs
    they started. ``traces``: each envelope's trace context, carried by the mails it causes
    (by default the current span's).

    Shop, segment and tracking events (observations) are handled in rounds of different
    contacts, a round in one transaction with one statement per kind of write (claims,
    facts, ends, starts, steps, outbox, timers) whatever its size: an event handled alone
    costs a dozen round trips to PostgreSQL, and the worker is bound by them
    (bench/RESULTS.md, issue 16). A round fails or commits whole; the caller handles a
    failed round's events one at a time. Contacts' own events are handled one at a time."""
    started: list[str] = []
    observed: list[tuple[Observation, Mapping[str, str] | None]] = []
    for i, envelope in enumerate(envelopes):
        trace = traces[i] if traces is not None else None
        if envelope.WhichOneof("payload") in facts.CONTACT_PAYLOADS:
            started += await _on_contact_event(pool, engine, envelope)
            continue
        observation = observe(envelope)
        if observation is None:
            continue
        # Canonical ids: a round groups and looks up its contacts by them.
        ws, contact = (
            canonical_uuid(observation.workspace_id),
            canonical_uuid(observation.contact_id),
        )
        if ws is None or contact is None:
            log.error("skipping event %s: its workspace or contact is no id", envelope.event_id)
            continue
        if (ws, contact) != (observation.workspace_id, observation.contact_id):
            observation = dataclasses.replace(observation, workspace_id=ws, contact_id=contact)
        observed.append((observation, trace))
    for wave in runs.waves(observed, lambda o: (o[0].workspace_id, o[0].contact_id)):
        started += await _on_observations(pool, engine, wave)
    return started


async def _on_observations(
    pool: asyncpg.Pool,
    engine: Engine,
    observed: Sequence[tuple[Observation, Mapping[str, str] | None]],
) -> list[str]:
    """A round of observed events of different contacts, in one transaction: claim them (a
    redelivery is a no-op), lock the contacts' live runs, record the events in their
    facts, end the runs they exit, start the runs they trigger, then the derived ones."""
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        fresh = await claim_unless_erased_many(
            conn, [(o.event_id, o.workspace_id, o.contact_id) for o, _ in observed]
        )
        observed = [item for item, ok in zip(observed, fresh, strict=True) if ok]
        if not observed:
            return []
        # Runs first (deadlocks: runs.lock_live_runs_of).
        live = await runs.lock_live_runs_of(
            conn, [(o.workspace_id, o.contact_id) for o, _ in observed]
        )
        await facts.apply_observations(conn, [o for o, _ in observed])
        ending: list[runs.Ending] = []
        for o, _ in observed:
            ending += await runs.exited_by(
                conn, engine, live.get((o.workspace_id, o.contact_id), []), o.event_id, o.seen
            )
        await runs.end_runs(conn, ending, now)
        starts: list[runs.Start] = []
        for o, trace in observed:
            seen = o.seen
            if seen.occurred_at < now - runs.TRIGGER_LATENESS:
                log.info("event %s is too old to start runs (%s)", o.event_id, seen.occurred_at)
                continue
            for compiled in await engine.live(conn, o.workspace_id, seen.event, now):
                if runs.triggered(compiled, seen):
                    starts.append(
                        runs.Start(
                            compiled,
                            o.workspace_id,
                            o.contact_id,
                            o.event_id,
                            seen.occurred_at,
                            o.vars,
                            entry_key(compiled.program.definition.entry.key, o),
                            trace=trace,
                        )
                    )
        started = await runs.start_runs(conn, engine, starts, now)
        derived_starts: list[runs.Start] = []
        by_workspace: dict[str, list[tuple[Observation, Mapping[str, str] | None]]] = {}
        for item in observed:
            by_workspace.setdefault(item[0].workspace_id, []).append(item)
        for ws, items in by_workspace.items():
            changes = [
                derived.Change(o.contact_id, o.seen.event, o.seen.occurred_at) for o, _ in items
            ]
            found = await derived.on_contacts_changed(
                conn, ws, changes, now, published=await engine.derived_workflows(conn, ws, now)
            )
            traces = {o.contact_id: trace for o, trace in items}
            for start in found:
                derived_starts += await _derived_starts(
                    conn, engine, ws, [start], now, traces.get(start.contact_id)
                )
        return started + await runs.start_runs(conn, engine, derived_starts, now)


async def _on_contact_event(pool: asyncpg.Pool, engine: Engine, envelope: Envelope) -> list[str]:
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        contact_id = facts.contact_of(envelope)
        if not contact_id:
            await claim_event(conn, CONSUMER, envelope.event_id)
            return []
        if not await claim_unless_erased(
            conn, envelope.event_id, envelope.workspace_id, contact_id
        ):
            return []
        # Runs before facts, as everywhere (runs.lock_live_runs).
        await runs.lock_live_runs(conn, envelope.workspace_id, contact_id)
        contact = await facts.apply_contact_event(conn, envelope)
        if contact is None:
            return []  # older than what is held: nothing changed
        ws = envelope.workspace_id
        if envelope.WhichOneof("payload") == "contact_deleted":
            await runs.end_runs_of_contact(conn, ws, contact, "contact_deleted", now)
            return []
        found = await derived.on_contact_changed(
            conn,
            ws,
            contact,
            "contact_updated",
            event_time(envelope),
            now,
            published=await engine.derived_workflows(conn, ws, now),
        )
        starts = await _derived_starts(conn, engine, ws, found, now, None)
        return await runs.start_runs(conn, engine, starts, now)


async def claim_unless_erased(
    conn: asyncpg.Connection, event_id: str, workspace_id: str, contact_id: str
) -> bool:
    """:func:`claim_unless_erased_many` for one event."""
    [fresh] = await claim_unless_erased_many(conn, [(event_id, workspace_id, contact_id)])
    return fresh


async def claim_unless_erased_many(
    conn: asyncpg.Connection, events: Sequence[tuple[str, str, str]]
) -> list[bool]:
    """Claim each (event id, workspace, contact) (as :func:`~services.common.idempotency.
    claim_event`) and say whether to handle it: True the first time, unless the contact was
    erased, when nothing about it is recorded again (services/triggers/privacy.py). The
    claim is kept either way, so a redelivery is a no-op; one statement for all, as every
    event asks both. An event id twice in ``events`` is handled once (the first).

    First the contacts' erasure locks are taken, shared (:func:`lock_against_erasure`), in a
    statement of their own: the erasure check must see an erasure that committed while the
    lock was awaited, and a statement sees what was committed when it began."""
    await lock_against_erasure(conn, [(w, c) for _, w, c in events])
    rows = await conn.fetch(
        "WITH q AS (SELECT * FROM unnest($2::text[], uuids($3), uuids($4))"
        "  WITH ORDINALITY AS q(e, w, c, n)),"
        " claim AS (INSERT INTO processed_events (consumer, event_id)"
        "  SELECT DISTINCT $1, e FROM q ON CONFLICT DO NOTHING RETURNING event_id)"
        " SELECT min(q.n) AS n FROM q JOIN claim ON claim.event_id = q.e"
        " WHERE NOT EXISTS (SELECT 1 FROM erased_contacts x"
        "  WHERE x.workspace_id = q.w AND x.erased_contact = q.c) GROUP BY q.e",
        CONSUMER,
        [e for e, _, _ in events],
        id_array(w for _, w, _ in events),
        id_array(c for _, _, c in events),
    )
    fresh = {row["n"] - 1 for row in rows}
    return [i in fresh for i in range(len(events))]


async def lock_against_erasure(
    conn: asyncpg.Connection, contacts: Sequence[tuple[str, str]]
) -> None:
    """Hold each (workspace, contact)'s erasure lock, shared, until the transaction ends:
    the contact is not erased meanwhile, and an erasure under way is waited for."""
    await conn.execute(
        f"SELECT count({ERASURE_LOCK.format('_shared')})"
        " FROM (SELECT DISTINCT w, c FROM unnest(uuids($1), uuids($2)) AS q(w, c))"
        " AS q",
        id_array(w for w, _ in contacts),
        id_array(c for _, c in contacts),
    )


async def _derived_starts(
    conn: asyncpg.Connection,
    engine: Engine,
    workspace_id: str,
    found: list[derived.Start],
    now: datetime,
    trace: Mapping[str, str] | None,
) -> list[runs.Start]:
    """The runs the derived triggers asked for, to start as the event's own."""
    return [
        runs.Start(
            await engine.version(conn, workspace_id, s.workflow_id, s.version),
            workspace_id,
            s.contact_id,
            s.trigger_event_id,
            now,
            s.vars,
            s.key,
            trace=trace,
        )
        for s in found
    ]
