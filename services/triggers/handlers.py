"""What the trigger engine does with each event, in one PostgreSQL transaction per event:
claim it (a redelivery is a no-op), update what is known of the contact, record the event,
end the runs it exits, start the runs it triggers (and those the derived triggers return),
and write what their first steps decided.

Idempotent end to end: the claim makes a redelivered envelope a no-op; a run's id is
derived from its workflow and trigger, and every effect's id from its run and step, so
even a replay without the claim (another consumer group) starts and sends nothing twice.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

import asyncpg
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import clock
from services.common.idempotency import claim_event
from services.triggers import derived
from services.triggers.runtime import facts, runs
from services.triggers.runtime.observed import entry_key, event_time, observe
from services.triggers.runtime.runs import Engine

log = logging.getLogger(__name__)

SCHEMA = runs.SCHEMA
CONSUMER = "triggers"


async def on_event(pool: asyncpg.Pool, engine: Engine, envelope: Envelope) -> list[str]:
    """Handle one envelope of any topic the engine reads; the ids of the runs it started."""
    kind = envelope.WhichOneof("payload")
    if kind in facts.CONTACT_PAYLOADS:
        return await _on_contact_event(pool, engine, envelope)
    observation = observe(envelope)
    if observation is None:
        return []
    now = clock.now()
    started: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        ws, contact, seen = observation.workspace_id, observation.contact_id, observation.seen
        if not await claim_unless_erased(conn, envelope.event_id, ws, contact):
            return []
        live = await runs.lock_live_runs(conn, ws, contact)  # runs first (deadlocks)
        await facts.apply_observation(conn, observation)
        await runs.end_runs_exited_by(conn, engine, live, envelope.event_id, seen, now)
        if seen.occurred_at >= now - runs.TRIGGER_LATENESS:
            for compiled in await engine.live(conn, ws, seen.event, now):
                if not runs.triggered(compiled, seen):
                    continue
                run_id = await runs.start_run(
                    conn,
                    engine,
                    compiled,
                    workspace_id=ws,
                    contact_id=contact,
                    trigger_event_id=envelope.event_id,
                    occurred_at=seen.occurred_at,
                    vars=observation.vars,
                    key=entry_key(compiled.program.definition.entry.key, observation),
                    now=now,
                )
                if run_id is not None:
                    started.append(run_id)
        else:
            log.info("event %s is too old to start runs (%s)", envelope.event_id, seen.occurred_at)
        starts = await derived.on_contact_changed(
            conn,
            ws,
            contact,
            seen.event,
            seen.occurred_at,
            now,
            published=await engine.derived_workflows(conn, ws, now),
        )
        started += await _start_derived(conn, engine, ws, starts, now)
    return started


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
        starts = await derived.on_contact_changed(
            conn,
            ws,
            contact,
            "contact_updated",
            event_time(envelope),
            now,
            published=await engine.derived_workflows(conn, ws, now),
        )
        return await _start_derived(conn, engine, ws, starts, now)


async def claim_unless_erased(
    conn: asyncpg.Connection, event_id: str, workspace_id: str, contact_id: str
) -> bool:
    """Claim the event (as :func:`~services.common.idempotency.claim_event`) and say whether
    to handle it: True the first time, unless the contact was erased, when nothing about it
    is recorded again (services/triggers/privacy.py). The claim is kept either way, so a
    redelivery is a no-op; one statement for both, as every event asks both."""
    return bool(
        await conn.fetchval(
            "WITH claim AS (INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)"
            " ON CONFLICT DO NOTHING RETURNING 1)"
            " SELECT EXISTS (SELECT 1 FROM claim) AND NOT EXISTS (SELECT 1 FROM erased_contacts"
            " WHERE workspace_id = $3 AND erased_contact = $4)",
            CONSUMER,
            event_id,
            uuid.UUID(workspace_id),
            uuid.UUID(contact_id),
        )
    )


async def _start_derived(
    conn: asyncpg.Connection,
    engine: Engine,
    workspace_id: str,
    starts: list[derived.Start],
    now: datetime,
) -> list[str]:
    started = []
    for start in starts:
        compiled = await engine.version(conn, workspace_id, start.workflow_id, start.version)
        run_id = await runs.start_run(
            conn,
            engine,
            compiled,
            workspace_id=workspace_id,
            contact_id=start.contact_id,
            trigger_event_id=start.trigger_event_id,
            occurred_at=now,
            vars=start.vars,
            key=start.key,
            now=now,
        )
        if run_id is not None:
            started.append(run_id)
    return started
