"""Runs: starting them under the entry rules, ending them by exit rules, advancing them with
the pure interpreter and writing what an advance decided, all inside the caller's
transaction (the event's, or the claimed timers').

Writing an :class:`~services.triggers.domain.engine.Advance`: the steps taken go to
``run_steps`` (a replayed step is a no-op on its key), a mail to the outbox as a
``DeliveryRequested`` keyed by contact (delivery deduplicates its deterministic message id)
and to ``contact_sends`` for the frequency cap, a tag or score change to ``commands``
(relayed to contacts with its deterministic id) and, for tags, straight into the contact's
facts; the run's position and its one timer ``run/<run id>`` follow.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2

from services.common.events import deterministic_id, new_envelope
from services.common.outbox import add_to_outbox
from services.common.topics import DELIVERY_REQUESTS
from services.triggers.domain.engine import (
    AdjustScore,
    Advance,
    Facts,
    ModifyTags,
    Program,
    RunState,
    SeenEvent,
    SendMail,
    advance,
    compile_definition,
    matches,
)
from services.triggers.domain.model import Branch, Definition, Send, Step
from services.triggers.runtime import facts as facts_store
from services.triggers.runtime.caps import FrequencyCaps

log = logging.getLogger(__name__)

SCHEMA = "triggers"
# An event older than this (by its own time, against the clock) updates facts and ends runs
# but starts none: a consumer group replaying the topic from the start, or a platform
# reporting last week's cart, must not mail about it now.
TRIGGER_LATENESS = timedelta(hours=24)
# How long a run of a paused workflow holds before its timer looks again.
PAUSED_HOLD = timedelta(seconds=30)


@dataclass(frozen=True)
class Compiled:
    """A published version, compiled, with what advancing it needs to load."""

    workflow_id: str
    version: int
    program: Program
    needs_history: bool  # a step with repeat false: load earlier runs' steps
    needs_cap: bool  # a marketing send that respects the frequency cap


def _walk(steps: tuple[Step, ...]) -> list[Step]:
    out: list[Step] = []
    for step in steps:
        out.append(step)
        if isinstance(step, Branch):
            out.extend(_walk(step.then))
            out.extend(_walk(step.otherwise))
    return out


def compile_version(workflow_id: str, version: int, definition: Definition) -> Compiled:
    steps = _walk(definition.steps)
    return Compiled(
        workflow_id=workflow_id,
        version=version,
        program=compile_definition(definition),
        needs_history=any(not s.repeat for s in steps),
        needs_cap=any(
            isinstance(s, Send)
            and s.message.kind == "marketing"
            and s.message.respect_frequency_cap
            for s in steps
        ),
    )


@dataclass(frozen=True)
class Run:
    """A row of ``runs``."""

    workspace_id: str
    id: str
    workflow_id: str
    version: int
    contact_id: str
    entry_key: str
    position: str | None
    vars: Mapping[str, str]
    executed: Mapping[str, int]
    trigger_event_id: str
    started_at: datetime
    ended: bool
    test_recipient: str

    @classmethod
    def of(cls, row: asyncpg.Record) -> Run:
        return cls(
            workspace_id=str(row["workspace_id"]),
            id=str(row["id"]),
            workflow_id=str(row["workflow_id"]),
            version=row["version"],
            contact_id=str(row["contact_id"]),
            entry_key=row["entry_key"],
            position=row["position"],
            vars=json.loads(row["vars"]),
            executed=json.loads(row["executed"]),
            trigger_event_id=row["trigger_event_id"],
            started_at=row["started_at"],
            ended=row["ended_at"] is not None,
            test_recipient=row["test_recipient"],
        )

    def state(self) -> RunState:
        return RunState(
            run_id=self.id,
            workspace_id=self.workspace_id,
            contact_id=self.contact_id,
            started_at=self.started_at,
            position=self.position,
            executed=self.executed,
            key=self.entry_key,
            test=bool(self.test_recipient),
        )


class Engine:
    """What the event path and the timer loop share: compiled versions (immutable, so
    cached for good), the live workflows of each workspace and event (cached for
    ``live_ttl_s``: a publish or a pause reaches the engine within that), the frequency
    caps, and ``wake``, told of every timer written so the loop can fire it on time."""

    def __init__(
        self,
        caps: FrequencyCaps,
        *,
        wake: Callable[[datetime], None] = lambda _: None,
        live_ttl_s: float = 2.0,
    ) -> None:
        self.caps = caps
        self.wake = wake
        self.live_ttl = timedelta(seconds=live_ttl_s)
        self._versions: dict[tuple[str, str, int], Compiled] = {}
        self._live: dict[tuple[str, str], tuple[datetime, list[Compiled]]] = {}

    async def version(
        self, conn: asyncpg.Connection, workspace_id: str, workflow_id: str, version: int
    ) -> Compiled:
        key = (workspace_id, workflow_id, version)
        hit = self._versions.get(key)
        if hit is None:
            doc = await conn.fetchval(
                "SELECT definition FROM workflow_versions"
                " WHERE workspace_id = $1 AND workflow_id = $2 AND version = $3",
                uuid.UUID(workspace_id),
                uuid.UUID(workflow_id),
                version,
            )
            if doc is None:
                raise LookupError(f"workflow {workflow_id} has no version {version}")
            hit = compile_version(workflow_id, version, Definition.model_validate_json(doc))
            if len(self._versions) > 10_000:
                self._versions.clear()
            self._versions[key] = hit
        return hit

    async def live(
        self, conn: asyncpg.Connection, workspace_id: str, event: str, now: datetime
    ) -> list[Compiled]:
        """The active workflows whose published version is triggered by ``event``."""
        key = (workspace_id, event)
        hit = self._live.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        rows = await conn.fetch(
            "SELECT id, published_version FROM workflows WHERE workspace_id = $1"
            " AND trigger_event = $2 AND status = 'active' AND published_version > 0",
            uuid.UUID(workspace_id),
            event,
        )
        found = [
            await self.version(conn, workspace_id, str(r["id"]), r["published_version"])
            for r in rows
        ]
        if len(self._live) > 10_000:
            self._live.clear()
        self._live[key] = (now + self.live_ttl, found)
        return found


def triggered(compiled: Compiled, seen: SeenEvent) -> bool:
    trigger = compiled.program.definition.trigger
    if trigger.event != seen.event or not matches(trigger.filter, seen):
        return False
    return trigger.segment_id is None or trigger.segment_id == seen.segment_id


def exits(compiled: Compiled, entry_key: str, seen: SeenEvent) -> str | None:
    """The end reason when ``seen`` is one of the workflow's exit rules, else None."""
    for rule in compiled.program.definition.exit_on:
        if (
            rule.event == seen.event
            and matches(rule.filter, seen)
            and (not rule.same_key or seen.key == entry_key)
        ):
            return f"exit_rule:{seen.event}"
    return None


async def end_run(
    conn: asyncpg.Connection,
    workspace_id: str,
    run_id: str,
    state: str,
    reason: str,
    now: datetime,
) -> None:
    await conn.execute(
        "UPDATE runs SET state = $3, end_reason = $4, ended_at = $5, updated_at = $5,"
        " position = NULL, next_wake_at = NULL"
        " WHERE workspace_id = $1 AND id = $2 AND ended_at IS NULL",
        uuid.UUID(workspace_id),
        uuid.UUID(run_id),
        state,
        reason,
        now,
    )
    await conn.execute("DELETE FROM timers WHERE timer_key = $1", f"run/{run_id}")


async def end_runs_of_contact(
    conn: asyncpg.Connection, workspace_id: str, contact_id: str, reason: str, now: datetime
) -> None:
    """End every live run of the contact (it was deleted: nothing more is sent to it)."""
    rows = await conn.fetch(
        "SELECT id FROM runs WHERE workspace_id = $1 AND contact_id = $2 AND ended_at IS NULL"
        " ORDER BY id FOR UPDATE",
        uuid.UUID(workspace_id),
        uuid.UUID(contact_id),
    )
    for row in rows:
        await end_run(conn, workspace_id, str(row["id"]), "cancelled", reason, now)


async def end_runs_exited_by(
    conn: asyncpg.Connection,
    engine: Engine,
    workspace_id: str,
    contact_id: str,
    event_id: str,
    seen: SeenEvent,
    now: datetime,
) -> int:
    """End the contact's live runs whose workflow exits on ``seen``. An event from before a
    run began does not end it (a late order of yesterday ends no cart run started today)."""
    rows = await conn.fetch(
        "SELECT * FROM runs WHERE workspace_id = $1 AND contact_id = $2 AND ended_at IS NULL"
        " ORDER BY id FOR UPDATE",
        uuid.UUID(workspace_id),
        uuid.UUID(contact_id),
    )
    ended = 0
    for row in rows:
        run = Run.of(row)
        if seen.occurred_at < run.started_at or run.trigger_event_id == event_id:
            continue
        compiled = await engine.version(conn, workspace_id, run.workflow_id, run.version)
        reason = exits(compiled, run.entry_key, seen)
        if reason is not None:
            await end_run(conn, workspace_id, run.id, "exited", reason, now)
            ended += 1
            log.info("run %s of workflow %s ended by %s", run.id, run.workflow_id, reason)
    return ended


async def start_run(
    conn: asyncpg.Connection,
    engine: Engine,
    compiled: Compiled,
    *,
    workspace_id: str,
    contact_id: str,
    trigger_event_id: str,
    occurred_at: datetime,
    vars: Mapping[str, str],
    key: str,
    now: datetime,
) -> str | None:
    """Start a run under the workflow's entry rules and advance it at once; its id, or None
    when the rules (or an earlier copy of the same trigger) start nothing."""
    entry = compiled.program.definition.entry
    ws, contact, workflow = (
        uuid.UUID(workspace_id),
        uuid.UUID(contact_id),
        uuid.UUID(compiled.workflow_id),
    )
    run_id = deterministic_id(workspace_id, compiled.workflow_id, trigger_event_id)
    if await conn.fetchval(
        "SELECT 1 FROM runs WHERE workspace_id = $1 AND id = $2", ws, uuid.UUID(run_id)
    ):
        return None  # this trigger already started its run
    if entry.concurrency == "single":
        slot = ""
    elif entry.concurrency == "per_key":
        slot = key
    else:
        slot = run_id
    live = await conn.fetchrow(
        "SELECT id FROM runs WHERE workspace_id = $1 AND workflow_id = $2 AND contact_id = $3"
        " AND run_key = $4 AND ended_at IS NULL AND test_recipient = '' FOR UPDATE",
        ws,
        workflow,
        contact,
        slot,
    )
    replaced: list[uuid.UUID] = []
    if live is not None:
        if entry.on_retrigger == "ignore":
            return None
        replaced.append(live["id"])
    if entry.reentry == "once" or entry.reentry_after is not None:
        last = await conn.fetchval(
            "SELECT max(started_at) FROM runs WHERE workspace_id = $1 AND workflow_id = $2"
            " AND contact_id = $3 AND test_recipient = '' AND NOT id = ANY($4::uuid[])",
            ws,
            workflow,
            contact,
            replaced,
        )
        if last is not None and entry.reentry == "once":
            return None
        if last is not None and entry.reentry_after and occurred_at < last + entry.reentry_after:
            return None
    for old in replaced:
        await end_run(conn, workspace_id, str(old), "cancelled", "restarted", now)
    inserted = await conn.fetchval(
        "INSERT INTO runs (workspace_id, id, workflow_id, version, contact_id, run_key,"
        " entry_key, state, vars, trigger_event_id, started_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8::jsonb, $9, $10, $11)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        ws,
        uuid.UUID(run_id),
        workflow,
        compiled.version,
        contact,
        slot,
        key,
        json.dumps(dict(vars)),
        trigger_event_id,
        occurred_at,
        now,
    )
    if inserted is None:
        return None
    row = await conn.fetchrow(
        "SELECT * FROM runs WHERE workspace_id = $1 AND id = $2", ws, uuid.UUID(run_id)
    )
    log.info("started run %s of workflow %s for contact %s", run_id, compiled.workflow_id, contact)
    # The first steps run at the event's time (a 3-hour wait counts from the cart change),
    # never earlier than the allowed lateness, never in the future.
    first_now = max(min(occurred_at, now), now - TRIGGER_LATENESS)
    await advance_run(conn, engine, compiled, Run.of(row), first_now, wall_now=now)
    return run_id


async def advance_run(
    conn: asyncpg.Connection,
    engine: Engine,
    compiled: Compiled,
    run: Run,
    now: datetime,
    *,
    wall_now: datetime | None = None,
) -> Advance | None:
    """Advance a live run from its position and write the result; None when an exit rule
    ended it instead (an exit event recorded since it began, even one that arrived out of
    order with the trigger)."""
    wall = wall_now or now
    facts, seen = await facts_store.load_facts(
        conn,
        run.workspace_id,
        run.contact_id,
        run.started_at,
        exclude_event_id=run.trigger_event_id,
    )
    for event in seen:
        reason = exits(compiled, run.entry_key, event)
        if reason is not None:
            await end_run(conn, run.workspace_id, run.id, "exited", reason, wall)
            return None
    capped = False
    if compiled.needs_cap and not run.test_recipient:
        cap = await engine.caps.cap(run.workspace_id)
        sent = await conn.fetchval(
            "SELECT count(*) FROM contact_sends WHERE workspace_id = $1 AND contact_id = $2"
            " AND sent_at > $3",
            uuid.UUID(run.workspace_id),
            uuid.UUID(run.contact_id),
            now - timedelta(days=cap.days),
        )
        capped = sent >= cap.messages
    done: frozenset[str] = frozenset()
    if compiled.needs_history:
        rows = await conn.fetch(
            "SELECT DISTINCT step_id FROM run_steps WHERE workspace_id = $1 AND contact_id = $2"
            " AND workflow_id = $3 AND run_id <> $4 AND outcome IN ('done', 'yes', 'no')",
            uuid.UUID(run.workspace_id),
            uuid.UUID(run.contact_id),
            uuid.UUID(run.workflow_id),
            uuid.UUID(run.id),
        )
        done = frozenset(r["step_id"] for r in rows)
    facts = Facts(
        tags=facts.tags,
        attributes=facts.attributes,
        segments=facts.segments,
        time_zone=facts.time_zone,
        frequency_capped=capped,
        events_since_start=tuple(seen),
        done_in_earlier_runs=done,
    )
    result = advance(compiled.program, run.state(), facts, now)
    await apply_advance(conn, engine, run, result, now)
    return result


async def apply_advance(
    conn: asyncpg.Connection, engine: Engine, run: Run, adv: Advance, now: datetime
) -> None:
    ws, contact, run_uuid = (
        uuid.UUID(run.workspace_id),
        uuid.UUID(run.contact_id),
        uuid.UUID(run.id),
    )
    if adv.steps:
        await conn.execute(
            "INSERT INTO run_steps (workspace_id, run_id, step_id, iteration, workflow_id,"
            " version, contact_id, outcome, at)"
            " SELECT $1, $2, s, i, $3, $4, $5, o, $6"
            " FROM unnest($7::text[], $8::int[], $9::text[]) AS t(s, i, o)"
            " ON CONFLICT DO NOTHING",
            ws,
            run_uuid,
            uuid.UUID(run.workflow_id),
            run.version,
            contact,
            now,
            [s.step_id for s in adv.steps],
            [s.iteration for s in adv.steps],
            [s.outcome for s in adv.steps],
        )
    for effect in adv.effects:
        if isinstance(effect, SendMail):
            await _send(conn, run, effect, now)
        elif isinstance(effect, ModifyTags):
            if run.test_recipient:
                continue  # a test run changes no real contact
            payload = {"add": list(effect.add), "remove": list(effect.remove)}
            await _command(conn, run, effect.command_id, "tags", payload, now)
            await facts_store.write_through_tags(
                conn, run.workspace_id, run.contact_id, effect.add, effect.remove
            )
        elif isinstance(effect, AdjustScore):
            if run.test_recipient:
                continue
            await _command(conn, run, effect.command_id, "score", {"delta": effect.delta}, now)
    timer_key = f"run/{run.id}"
    if adv.end_reason is not None:
        state = "completed" if adv.end_reason == "completed" else "exited"
        await conn.execute(
            "UPDATE runs SET state = $3, position = NULL, executed = $4::jsonb,"
            " next_wake_at = NULL, ended_at = $5, updated_at = $5, end_reason = $6"
            " WHERE workspace_id = $1 AND id = $2",
            ws,
            run_uuid,
            state,
            json.dumps(dict(adv.executed)),
            now,
            adv.end_reason,
        )
        await conn.execute("DELETE FROM timers WHERE timer_key = $1", timer_key)
        return
    assert adv.wake_at is not None
    await conn.execute(
        "UPDATE runs SET state = 'waiting', position = $3, executed = $4::jsonb,"
        " next_wake_at = $5, updated_at = $6 WHERE workspace_id = $1 AND id = $2",
        ws,
        run_uuid,
        adv.position,
        json.dumps(dict(adv.executed)),
        adv.wake_at,
        now,
    )
    await schedule(conn, run, adv.wake_at)
    engine.wake(adv.wake_at)


async def schedule(conn: asyncpg.Connection, run: Run, due_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO timers (timer_key, workspace_id, contact_id, workflow_id, run_id, kind,"
        " due_at) VALUES ($1, $2, $3, $4, $5, 'run', $6)"
        " ON CONFLICT (timer_key) DO UPDATE SET due_at = EXCLUDED.due_at",
        f"run/{run.id}",
        uuid.UUID(run.workspace_id),
        uuid.UUID(run.contact_id),
        uuid.UUID(run.workflow_id),
        uuid.UUID(run.id),
        due_at,
    )


async def _send(conn: asyncpg.Connection, run: Run, mail: SendMail, now: datetime) -> None:
    message = mail.message
    request = delivery_pb2.DeliveryRequested(
        message_id=mail.message_id,
        contact_id=run.contact_id,
        content=delivery_pb2.MessageContent(
            subject=message.subject, body_text=message.body_text, body_html=message.body_html
        ),
        vars=dict(run.vars),
        workflow_id=run.workflow_id,
    )
    if run.test_recipient:
        request.kind = delivery_pb2.MESSAGE_KIND_TEST
        request.test_recipient = run.test_recipient
    elif message.kind == "transactional":
        request.kind = delivery_pb2.MESSAGE_KIND_TRANSACTIONAL
        request.purpose = contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
    else:
        request.kind = delivery_pb2.MESSAGE_KIND_AUTOMATION
        request.purpose = contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
        await conn.execute(
            "INSERT INTO contact_sends (workspace_id, contact_id, message_id, sent_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            uuid.UUID(run.workspace_id),
            uuid.UUID(run.contact_id),
            mail.message_id,
            now,
        )
    await add_to_outbox(
        conn,
        SCHEMA,
        DELIVERY_REQUESTS,
        run.contact_id,
        new_envelope(run.workspace_id, request, event_id=mail.message_id, occurred_at=now),
    )


async def _command(
    conn: asyncpg.Connection,
    run: Run,
    command_id: str,
    kind: str,
    payload: Mapping[str, object],
    now: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO commands (id, workspace_id, contact_id, kind, payload, created_at,"
        " next_try_at) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $6) ON CONFLICT DO NOTHING",
        command_id,
        uuid.UUID(run.workspace_id),
        uuid.UUID(run.contact_id),
        kind,
        json.dumps(payload),
        now,
    )
