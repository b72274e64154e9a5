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

import functools
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import asyncpg
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import fastjson
from services.common.db import id_array
from services.common.events import deterministic_id, new_envelope
from services.common.outbox import add_many_to_outbox
from services.common.topics import DELIVERY_REQUESTS
from services.common.tracing import current_traceparent
from services.triggers import derived
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
from services.triggers.runtime.caps import Cap, FrequencyCaps
from services.triggers.runtime.observed import seen_from_row

log = logging.getLogger(__name__)
_T = TypeVar("_T")

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
            vars=fastjson.loads(row["vars"]),
            executed=fastjson.loads(row["executed"]),
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
    cached for good), the live workflows of each workspace and event and the workspace's
    published workflows of derived triggers (both cached, and dropped by :meth:`forget`
    when a workflow of the workspace is published, paused, resumed or archived in any
    worker: runtime/live_changes.py; ``live_ttl_s`` bounds how stale they can be should
    that word be lost), the frequency caps, and ``wake``, told of every timer written so
    the loop can fire it on time."""

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
        self._derived: dict[str, tuple[datetime, list[derived.PublishedWorkflow]]] = {}
        # Moved by every forget: a list read before it is not cached after it (it may be
        # from before the change).
        self._generation = 0

    def forget(self, workspace_id: str | None = None) -> None:
        """Drop the cached live workflows of ``workspace_id`` (None: of every workspace)."""
        self._generation += 1
        if workspace_id is None:
            self._live.clear()
            self._derived.clear()
            return
        for key in [k for k in self._live if k[0] == workspace_id]:
            del self._live[key]
        self._derived.pop(workspace_id, None)

    async def version(
        self, conn: asyncpg.Connection, workspace_id: str, workflow_id: str, version: int
    ) -> Compiled:
        key = (workspace_id, workflow_id, version)
        hit = self._versions.get(key)
        if hit is None:
            doc = await conn.fetchval(
                "SELECT definition FROM workflow_versions"
                " WHERE workspace_id = $1 AND workflow_id = $2 AND version = $3",
                workspace_id,
                workflow_id,
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
        generation = self._generation
        rows = await conn.fetch(
            "SELECT id, published_version FROM workflows WHERE workspace_id = $1"
            " AND trigger_event = $2 AND status = 'active' AND published_version > 0",
            workspace_id,
            event,
        )
        found = [
            await self.version(conn, workspace_id, str(r["id"]), r["published_version"])
            for r in rows
        ]
        if generation != self._generation:
            return found  # a change came in meanwhile: the next event reads it again
        if len(self._live) > 10_000:
            self._live.clear()
        self._live[key] = (now + self.live_ttl, found)
        return found

    async def derived_workflows(
        self, conn: asyncpg.Connection, workspace_id: str, now: datetime
    ) -> list[derived.PublishedWorkflow]:
        """The workspace's published workflows of a derived trigger (date, silence, value),
        which every event hands to :func:`derived.on_contact_changed`; cached as
        :meth:`live` is."""
        hit = self._derived.get(workspace_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._generation
        found = await derived.published_derived(conn, workspace_id)
        if generation != self._generation:
            return found
        if len(self._derived) > 10_000:
            self._derived.clear()
        self._derived[workspace_id] = (now + self.live_ttl, found)
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


@dataclass(frozen=True)
class Ending:
    """A live run to end (locked by the caller), with the state and reason it ends with."""

    workspace_id: str
    run_id: str
    state: str
    reason: str


async def end_runs(conn: asyncpg.Connection, ending: Sequence[Ending], now: datetime) -> None:
    """End locked live runs and delete their timers: one statement for any number (a cart
    change ends the contact's run, an order ends it; a round of events ends hundreds)."""
    if not ending:
        return
    await conn.execute(
        "WITH q AS (SELECT * FROM unnest(uuids($1), uuids($2), $3::text[],"
        "  $4::text[]) AS q(w, r, s, why)),"
        " timer AS (DELETE FROM timers t USING q"
        "  WHERE t.timer_key = 'run/' || q.r::text AND t.workspace_id = q.w)"
        " UPDATE runs SET state = q.s, end_reason = q.why, ended_at = $5, updated_at = $5,"
        " position = NULL, next_wake_at = NULL"
        " FROM q WHERE runs.workspace_id = q.w AND runs.id = q.r",  # the callers' FOR UPDATE
        id_array(e.workspace_id for e in ending),
        id_array(e.run_id for e in ending),
        [e.state for e in ending],
        [e.reason for e in ending],
        now,
    )


async def end_run(
    conn: asyncpg.Connection,
    workspace_id: str,
    run_id: str,
    state: str,
    reason: str,
    now: datetime,
) -> None:
    await end_runs(conn, [Ending(workspace_id, run_id, state, reason)], now)


async def end_runs_of_contact(
    conn: asyncpg.Connection, workspace_id: str, contact_id: str, reason: str, now: datetime
) -> None:
    """End every live run of the contact (it was deleted: nothing more is sent to it)."""
    live = await lock_live_runs(conn, workspace_id, contact_id)
    await end_runs(
        conn, [Ending(workspace_id, str(r["id"]), "cancelled", reason) for r in live], now
    )


async def lock_live_runs(
    conn: asyncpg.Connection, workspace_id: str, contact_id: str
) -> list[asyncpg.Record]:
    """Lock the contact's live runs (:func:`lock_live_runs_of`)."""
    return (await lock_live_runs_of(conn, [(workspace_id, contact_id)])).get(
        (workspace_id, contact_id), []
    )


async def lock_live_runs_of(
    conn: asyncpg.Connection, contacts: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[asyncpg.Record]]:
    """Lock the live runs of the (workspace, contact)s, first thing in an event's (or a
    round of events') transaction; by contact, in order of run id.

    The order of locks is the same everywhere: runs (by id, so two rounds sharing contacts
    take them in one order), then the contacts' facts, then timers. The timer loop locks
    runs (skipping those held) and then writes facts (a tag step); an event that wrote
    facts before waiting for a run could deadlock with it."""
    rows = await conn.fetch(
        "SELECT r.* FROM runs r JOIN unnest(uuids($1), uuids($2)) AS q(w, c)"
        " ON r.workspace_id = q.w AND r.contact_id = q.c WHERE r.ended_at IS NULL"
        " ORDER BY r.id FOR UPDATE OF r",
        id_array(w for w, _ in contacts),
        id_array(c for _, c in contacts),
    )
    live: dict[tuple[str, str], list[asyncpg.Record]] = {}
    for row in rows:
        live.setdefault((str(row["workspace_id"]), str(row["contact_id"])), []).append(row)
    return live


async def exited_by(
    conn: asyncpg.Connection,
    engine: Engine,
    live: Sequence[asyncpg.Record],
    event_id: str,
    seen: SeenEvent,
) -> list[Ending]:
    """The runs of ``live`` (:func:`lock_live_runs_of`) whose workflow exits on ``seen``.
    An event from before a run began does not end it (a late order of yesterday ends no
    cart run started today)."""
    ending = []
    for row in live:  # the row's fields, not a Run: most live runs go on (no JSON to read)
        if seen.occurred_at < row["started_at"] or row["trigger_event_id"] == event_id:
            continue
        ws, run_id, workflow_id = str(row["workspace_id"]), str(row["id"]), str(row["workflow_id"])
        compiled = await engine.version(conn, ws, workflow_id, row["version"])
        reason = exits(compiled, row["entry_key"], seen)
        if reason is not None:
            ending.append(Ending(ws, run_id, "exited", reason))
            log.debug("run %s of workflow %s ended by %s", run_id, workflow_id, reason)
    return ending


@dataclass(frozen=True)
class Start:
    """A run to start (:func:`start_runs`): a workflow's published version, for a contact,
    by a trigger (an event, a timer, a crossing) whose id makes the run's."""

    compiled: Compiled
    workspace_id: str
    contact_id: str
    trigger_event_id: str
    occurred_at: datetime
    vars: Mapping[str, str]
    key: str
    test_recipient: str = ""
    # The trace context its mails carry (None: the current span's).
    trace: Mapping[str, str] | None = None

    @functools.cached_property
    def run_id(self) -> str:
        return deterministic_id(self.workspace_id, self.compiled.workflow_id, self.trigger_event_id)

    @functools.cached_property
    def slot(self) -> str:
        """The live-run slot it takes: '' for a single run, the key for one run per key,
        its own id (no slot shared) for unlimited runs and test runs."""
        concurrency = self.compiled.program.definition.entry.concurrency
        if concurrency == "single" and not self.test_recipient:
            return ""
        if concurrency == "per_key" and not self.test_recipient:
            return self.key
        return self.run_id


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
    test_recipient: str = "",
) -> str | None:
    """Start one run (:func:`start_runs`); its id, or None when nothing started.

    A test run (``test_recipient``, the manager's address) ignores the entry rules, does
    not count for them, waits for nothing and mails every send to that address only
    (``MESSAGE_KIND_TEST``); it changes no tags or scores."""
    start = Start(
        compiled,
        workspace_id,
        contact_id,
        trigger_event_id,
        occurred_at,
        vars,
        key,
        test_recipient,
    )
    started = await start_runs(conn, engine, [start], now)
    return started[0] if started else None


def waves(items: Sequence[_T], key: Callable[[_T], object]) -> list[list[_T]]:
    """``items`` in waves in which each key appears at most once: an item goes to the wave
    after its key's previous item, so that handling the waves in order handles each key's
    items in order, and each wave can be handled at once (one statement per kind)."""
    out: list[list[_T]] = []
    count: dict[object, int] = {}
    for item in items:
        k = key(item)
        n = count.get(k, 0)
        count[k] = n + 1
        if n == len(out):
            out.append([])
        out[n].append(item)
    return out


async def start_runs(
    conn: asyncpg.Connection, engine: Engine, starts: Sequence[Start], now: datetime
) -> list[str]:
    """Start runs under their workflows' entry rules and advance them at once; the ids of
    those that started (the rules, or an earlier copy of the same trigger, start nothing).

    A fixed number of statements for any number of runs of different contacts. Two runs of
    one contact start in two waves, one after the other, as if one at a time: the second
    sees the first's mail (the frequency cap) and tags."""
    started: list[str] = []
    for wave in waves(starts, lambda s: (s.workspace_id, s.contact_id)):
        started += await _start_wave(conn, engine, wave, now)
    return started


async def _start_wave(
    conn: asyncpg.Connection, engine: Engine, starts: Sequence[Start], now: datetime
) -> list[str]:
    # Both questions in one statement, as every start asks them: did this trigger start its
    # run already, and which live run holds the slot (locked, as it is replaced or kept)? A
    # test run holds no slot.
    found = await conn.fetch(
        "SELECT q.i, EXISTS (SELECT 1 FROM runs r WHERE r.workspace_id = q.w AND r.id = q.r)"
        " AS started, live.id AS live"
        " FROM unnest(ints($1), uuids($2), uuids($3), uuids($4),"
        "  uuids($5), $6::text[], $7::bool[]) AS q(i, w, r, f, c, k, slotted)"
        " LEFT JOIN LATERAL (SELECT l.id FROM runs l WHERE q.slotted AND l.workspace_id = q.w"
        "  AND l.workflow_id = q.f AND l.contact_id = q.c AND l.run_key = q.k"
        "  AND l.ended_at IS NULL AND l.test_recipient = '' FOR UPDATE) live ON true"
        " ORDER BY q.i",
        id_array(map(str, range(len(starts)))),
        id_array(s.workspace_id for s in starts),
        id_array(s.run_id for s in starts),
        id_array(s.compiled.workflow_id for s in starts),
        id_array(s.contact_id for s in starts),
        [s.slot for s in starts],
        [not s.test_recipient for s in starts],
    )
    going: list[tuple[Start, uuid.UUID | None]] = []
    for start, row in zip(starts, found, strict=True):
        if row["started"]:
            continue  # this trigger already started its run
        if row["live"] is not None and start.compiled.program.definition.entry.on_retrigger == (
            "ignore"
        ):
            continue
        going.append((start, row["live"]))
    going = await _reentry_allowed(conn, going)
    await end_runs(
        conn,
        [Ending(s.workspace_id, str(old), "cancelled", "restarted") for s, old in going if old],
        now,
    )
    if not going:
        return []
    # The new rows themselves come back: advancing the runs needs them, and reading them
    # again would cost a round trip.
    rows = await conn.fetch(
        "INSERT INTO runs (workspace_id, id, workflow_id, version, contact_id, run_key,"
        " entry_key, state, vars, trigger_event_id, started_at, updated_at, test_recipient)"
        " SELECT w, r, f, v, c, k, e, 'active', d::jsonb, t, o, $12, x"
        " FROM unnest(uuids($1), uuids($2), uuids($3), ints($4),"
        "  uuids($5), $6::text[], $7::text[], $8::text[], $9::text[],"
        "  $10::timestamptz[], $11::text[])"
        "  AS q(w, r, f, v, c, k, e, d, t, o, x)"
        " ON CONFLICT DO NOTHING RETURNING *",
        id_array(s.workspace_id for s, _ in going),
        id_array(s.run_id for s, _ in going),
        id_array(s.compiled.workflow_id for s, _ in going),
        id_array(str(s.compiled.version) for s, _ in going),
        id_array(s.contact_id for s, _ in going),
        [s.slot for s, _ in going],
        [s.key for s, _ in going],
        [fastjson.dumps(dict(s.vars)) for s, _ in going],
        [s.trigger_event_id for s, _ in going],
        [s.occurred_at for s, _ in going],
        [s.test_recipient for s, _ in going],
        now,
    )
    by_id = {s.run_id: s for s, _ in going}
    pending = []
    for row in rows:
        run = Run.of(row)
        start = by_id[run.id]
        # DEBUG, as every line per run or event on this path: a JSON log line costs ~30 µs,
        # a tenth of what an event costs the worker (bench/RESULTS.md, issue 16), and the
        # runs' story is in run_steps and the traces.
        log.debug(
            "started run %s of workflow %s for contact %s",
            run.id,
            run.workflow_id,
            run.contact_id,
        )
        # The first steps run at the event's time (a 3-hour wait counts from the cart
        # change), never earlier than the allowed lateness, never in the future.
        first_now = max(min(start.occurred_at, now), now - TRIGGER_LATENESS)
        pending.append(Pending(start.compiled, run, first_now, new=True, trace=start.trace))
    await advance_many(conn, engine, pending, now)
    return [p.run.id for p in pending]


async def _reentry_allowed(
    conn: asyncpg.Connection, going: list[tuple[Start, uuid.UUID | None]]
) -> list[tuple[Start, uuid.UUID | None]]:
    """``going`` without the starts that the workflow's re-entry rule refuses ("once", or
    not before ``reentry_after`` since the contact's last run; the run a start replaces
    does not count, and a test run is never refused)."""

    def ruled(start: Start) -> bool:
        entry = start.compiled.program.definition.entry
        return not start.test_recipient and (
            entry.reentry == "once" or entry.reentry_after is not None
        )

    asked = [(i, s, old) for i, (s, old) in enumerate(going) if ruled(s)]
    if not asked:
        return going
    rows = await conn.fetch(
        "SELECT q.i, (SELECT max(started_at) FROM runs WHERE workspace_id = q.w"
        " AND workflow_id = q.f AND contact_id = q.c AND test_recipient = ''"
        " AND (q.old IS NULL OR id <> q.old)) AS last"
        " FROM unnest($1::int[], $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[])"
        " AS q(i, w, f, c, old)",
        [i for i, _, _ in asked],
        [s.workspace_id for _, s, _ in asked],
        [s.compiled.workflow_id for _, s, _ in asked],
        [s.contact_id for _, s, _ in asked],
        [old for _, _, old in asked],
    )
    refused = set()
    for row in rows:
        last = row["last"]
        start = going[row["i"]][0]
        entry = start.compiled.program.definition.entry
        if last is not None and (
            entry.reentry == "once"
            or (entry.reentry_after and start.occurred_at < last + entry.reentry_after)
        ):
            refused.add(row["i"])
    return [g for i, g in enumerate(going) if i not in refused]


@dataclass(frozen=True)
class Pending:
    """A live run to advance at ``now``; ``new`` when this transaction inserted it, so that
    it has no timer yet (nothing to delete when it ends at once, as a thank-you does)."""

    compiled: Compiled
    run: Run
    now: datetime
    new: bool = False
    trace: Mapping[str, str] | None = None  # its mails' trace context (None: the current)


async def advance_run(
    conn: asyncpg.Connection,
    engine: Engine,
    compiled: Compiled,
    run: Run,
    now: datetime,
    *,
    wall_now: datetime | None = None,
) -> Advance | None:
    """Advance one live run and write the result (see :func:`advance_many`)."""
    [result] = await advance_many(conn, engine, [Pending(compiled, run, now)], wall_now or now)
    return result


async def advance_many(
    conn: asyncpg.Connection, engine: Engine, pending: Sequence[Pending], wall_now: datetime
) -> list[Advance | None]:
    """Advance live runs from their positions and write the results, with a fixed number of
    statements whatever their number (the timer loop advances hundreds at once). None for
    a run that an exit rule ended instead: an exit event recorded since it began, even one
    that arrived out of order with its trigger (another topic), ends it before its next
    step."""
    if not pending:
        return []
    inputs = await _load_inputs(conn, engine, pending)
    writes = Writes()
    results: list[Advance | None] = []
    writes.untimed.update(p.run.id for p in pending if p.new)
    for p, (facts, seen) in zip(pending, inputs, strict=True):
        reason = next((r for r in (exits(p.compiled, p.run.entry_key, e) for e in seen) if r), None)
        if reason is not None:
            writes.end(p.run, "exited", reason, wall_now)
            results.append(None)
            continue
        result = advance(p.compiled.program, p.run.state(), facts, p.now)
        writes.add(p.run, result, p.now, p.trace)
        results.append(result)
    await writes.flush(conn, engine)
    return results


async def _load_inputs(
    conn: asyncpg.Connection, engine: Engine, pending: Sequence[Pending]
) -> list[tuple[Facts, list[SeenEvent]]]:
    """Each run's facts: the contact's, its events since the run began (but its trigger),
    whether the frequency cap is reached, and the steps done in earlier runs."""
    n = range(len(pending))
    ws = [p.run.workspace_id for p in pending]
    contacts = [p.run.contact_id for p in pending]
    caps = await _caps(engine, pending)
    # The facts and the frequency cap in one statement (both one row per run); the mails
    # are counted only for the runs that respect the cap (the others' cap is NULL), and only
    # those of other runs: a run's own reminder does not hold back its next step.
    rows = await conn.fetch(
        "SELECT q.i, f.contact_id IS NOT NULL AS known, f.tags, f.attributes, f.segments,"
        " f.time_zone, CASE WHEN q.cap IS NULL THEN false ELSE q.cap <= (SELECT count(*)"
        " FROM contact_sends s WHERE s.workspace_id = q.w AND s.contact_id = q.c"
        " AND s.sent_at > q.since AND s.run_id IS DISTINCT FROM q.r) END AS capped"
        " FROM unnest(ints($1), uuids($2), uuids($3), $4::timestamptz[],"
        "  ints($5), uuids($6))"
        " AS q(i, w, c, since, cap, r)"
        " LEFT JOIN contact_facts f ON f.workspace_id = q.w AND f.contact_id = q.c",
        id_array(map(str, n)),
        id_array(ws),
        id_array(contacts),
        [
            p.now - timedelta(days=cap.days) if cap else None
            for p, cap in zip(pending, caps, strict=True)
        ],
        id_array(cap.messages if cap else None for cap in caps),
        id_array(p.run.id for p in pending),
    )
    known = {r["i"]: r for r in rows if r["known"]}
    capped = {r["i"] for r in rows if r["capped"]}
    events = await conn.fetch(
        "SELECT q.i, e.event, e.occurred_at, e.event_key, e.data"
        " FROM unnest(ints($1), uuids($2), uuids($3), $4::timestamptz[],"
        "  $5::text[]) AS q(i, w, c, since, trigger)"
        " CROSS JOIN LATERAL (SELECT event, occurred_at, event_key, data, event_id"
        "  FROM contact_events e WHERE e.workspace_id = q.w AND e.contact_id = q.c"
        "  AND e.occurred_at >= q.since AND e.event_id <> q.trigger"
        "  ORDER BY e.occurred_at, e.event_id LIMIT 1000) e"
        " ORDER BY q.i, e.occurred_at, e.event_id",
        id_array(map(str, n)),
        id_array(ws),
        id_array(contacts),
        [p.run.started_at for p in pending],
        [p.run.trigger_event_id for p in pending],
    )
    seen: dict[int, list[SeenEvent]] = {}
    for e in events:
        seen.setdefault(e["i"], []).append(
            seen_from_row(e["event"], e["occurred_at"], e["event_key"], fastjson.loads(e["data"]))
        )
    done = await _done_before(conn, pending)
    out: list[tuple[Facts, list[SeenEvent]]] = []
    for i in n:
        row = known.get(i)
        events_i = seen.get(i, [])
        attributes: Mapping[str, object] = fastjson.loads(row["attributes"]) if row else {}
        out.append(
            (
                Facts(
                    tags=frozenset(row["tags"]) if row else frozenset(),
                    attributes={k: str(v) for k, v in attributes.items()},
                    segments=frozenset(row["segments"]) if row else frozenset(),
                    time_zone=row["time_zone"] if row else "",
                    frequency_capped=i in capped,
                    events_since_start=tuple(events_i),
                    done_in_earlier_runs=done.get(i, frozenset()),
                ),
                events_i,
            )
        )
    return out


async def _caps(engine: Engine, pending: Sequence[Pending]) -> list[Cap | None]:
    """Each run's workspace cap on marketing mail, None for a run that does not respect it
    (no marketing send that does, or a test run)."""
    return [
        await engine.caps.cap(p.run.workspace_id)
        if p.compiled.needs_cap and not p.run.test_recipient
        else None
        for p in pending
    ]


async def _done_before(
    conn: asyncpg.Connection, pending: Sequence[Pending]
) -> dict[int, frozenset[str]]:
    """For runs of workflows with a step that is not repeated: the steps the contact went
    through in earlier runs of the same workflow."""
    asked = [(i, p) for i, p in enumerate(pending) if p.compiled.needs_history]
    if not asked:
        return {}
    rows = await conn.fetch(
        "SELECT q.i, s.step_id FROM unnest(ints($1), uuids($2),"
        " uuids($3), uuids($4), uuids($5)) AS q(i, w, c, f, r)"
        " JOIN run_steps s ON s.workspace_id = q.w"
        " AND s.contact_id = q.c AND s.workflow_id = q.f AND s.run_id <> q.r"
        " AND s.outcome IN ('done', 'yes', 'no')",
        id_array(str(i) for i, _ in asked),
        id_array(p.run.workspace_id for _, p in asked),
        id_array(p.run.contact_id for _, p in asked),
        id_array(p.run.workflow_id for _, p in asked),
        id_array(p.run.id for _, p in asked),
    )
    done: dict[int, set[str]] = {}
    for r in rows:
        done.setdefault(r["i"], set()).add(r["step_id"])
    return {i: frozenset(steps) for i, steps in done.items()}


class Writes:
    """What advances decided, gathered and then written with one statement per table."""

    def __init__(self) -> None:
        self.steps: list[tuple[Run, str, int, str, datetime]] = []
        self.mails: list[tuple[str, Envelope, dict[str, str]]] = []
        self.sends: list[tuple[Run, str, datetime]] = []
        self.commands: list[tuple[Run, str, str, str, datetime]] = []
        self.tags: list[tuple[Run, tuple[str, ...], tuple[str, ...]]] = []
        # run, state, position, executed, next wake, ended at, end reason, now
        self.runs: list[
            tuple[Run, str, str | None, str, datetime | None, datetime | None, str, datetime]
        ] = []
        self.untimed: set[str] = set()  # the ids of runs known to have no timer

    def end(self, run: Run, state: str, reason: str, now: datetime) -> None:
        self.runs.append(
            (run, state, None, fastjson.dumps(dict(run.executed)), None, now, reason, now)
        )

    def add(
        self, run: Run, adv: Advance, now: datetime, trace: Mapping[str, str] | None = None
    ) -> None:
        self.steps += [(run, s.step_id, s.iteration, s.outcome, now) for s in adv.steps]
        for effect in adv.effects:
            if isinstance(effect, SendMail):
                self._mail(run, effect, now, trace)
            elif run.test_recipient:
                continue  # a test run changes no real contact
            elif isinstance(effect, ModifyTags):
                payload = {"add": list(effect.add), "remove": list(effect.remove)}
                self.commands.append((run, effect.command_id, "tags", fastjson.dumps(payload), now))
                self.tags.append((run, effect.add, effect.remove))
            elif isinstance(effect, AdjustScore):
                payload_s = fastjson.dumps({"delta": effect.delta})
                self.commands.append((run, effect.command_id, "score", payload_s, now))
        executed = fastjson.dumps(dict(adv.executed))
        if adv.end_reason is not None:
            state = "completed" if adv.end_reason == "completed" else "exited"
            self.runs.append((run, state, None, executed, None, now, adv.end_reason, now))
        else:
            assert adv.wake_at is not None
            self.runs.append((run, "waiting", adv.position, executed, adv.wake_at, None, "", now))

    def _mail(
        self, run: Run, mail: SendMail, now: datetime, trace: Mapping[str, str] | None
    ) -> None:
        message = mail.message
        request = delivery_pb2.DeliveryRequested(
            message_id=mail.message_id,
            contact_id=run.contact_id,
            content=delivery_pb2.MessageContent(
                subject=message.subject, body_text=message.body_text, body_html=message.body_html
            ),
            vars=dict(run.vars),
            workflow_id=run.workflow_id,
            # For the story of the mail (delivery keeps them on its ledger row).
            run_id=run.id,
            step_id=mail.step_id if mail.iteration == 0 else f"{mail.step_id}#{mail.iteration}",
        )
        if message.kind == "transactional":
            request.kind = delivery_pb2.MESSAGE_KIND_TRANSACTIONAL
            request.purpose = contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
        else:
            request.kind = delivery_pb2.MESSAGE_KIND_AUTOMATION
            request.purpose = contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
        if run.test_recipient:
            # To the manager. The purpose stays the step's, as a campaign's test send keeps
            # its campaign's: delivery reads the contact's data with it.
            request.kind = delivery_pb2.MESSAGE_KIND_TEST
            request.test_recipient = run.test_recipient
        elif request.kind == delivery_pb2.MESSAGE_KIND_AUTOMATION and message.respect_frequency_cap:
            # Counted for the cap. A mail the workflow exempts from it (a direct answer:
            # the welcome letter, an order's thank-you) neither waits for it nor uses it up.
            self.sends.append((run, mail.message_id, now))
        envelope = new_envelope(
            run.workspace_id, request, event_id=mail.message_id, occurred_at=now
        )
        headers = dict(trace) if trace is not None else current_traceparent()
        self.mails.append((run.contact_id, envelope, headers))

    async def flush(self, conn: asyncpg.Connection, engine: Engine) -> None:
        if self.steps:
            await conn.execute(
                "INSERT INTO run_steps (workspace_id, run_id, step_id, iteration, workflow_id,"
                " version, contact_id, outcome, at) SELECT * FROM unnest(uuids($1),"
                " uuids($2), $3::text[], ints($4), uuids($5),"
                " ints($6), uuids($7), $8::text[], $9::timestamptz[])"
                " ON CONFLICT DO NOTHING",
                id_array(r.workspace_id for r, *_ in self.steps),
                id_array(r.id for r, *_ in self.steps),
                [s for _, s, _, _, _ in self.steps],
                id_array(str(i) for _, _, i, _, _ in self.steps),
                id_array(r.workflow_id for r, *_ in self.steps),
                id_array(str(r.version) for r, *_ in self.steps),
                id_array(r.contact_id for r, *_ in self.steps),
                [o for _, _, _, o, _ in self.steps],
                [at for *_, at in self.steps],
            )
        await add_many_to_outbox(conn, SCHEMA, DELIVERY_REQUESTS, self.mails)
        if self.sends:
            await conn.execute(
                "INSERT INTO contact_sends (workspace_id, contact_id, message_id, sent_at,"
                " run_id) SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[],"
                " $4::timestamptz[], uuids($5)) ON CONFLICT DO NOTHING",
                [r.workspace_id for r, _, _ in self.sends],
                [r.contact_id for r, _, _ in self.sends],
                [m for _, m, _ in self.sends],
                [at for _, _, at in self.sends],
                id_array(r.id for r, _, _ in self.sends),
            )
        if self.commands:
            await conn.execute(
                "INSERT INTO commands (id, workspace_id, contact_id, kind, payload, created_at,"
                " next_try_at) SELECT i, w, c, k, p::jsonb, at, at FROM unnest($1::text[],"
                " $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[])"
                " AS q(i, w, c, k, p, at) ON CONFLICT DO NOTHING",
                [i for _, i, _, _, _ in self.commands],
                [r.workspace_id for r, *_ in self.commands],
                [r.contact_id for r, *_ in self.commands],
                [k for _, _, k, _, _ in self.commands],
                [p for _, _, _, p, _ in self.commands],
                [at for *_, at in self.commands],
            )
        await facts_store.write_through_tags(
            conn, [(r.workspace_id, r.contact_id, add, remove) for r, add, remove in self.tags]
        )
        if not self.runs:
            return
        # Joined on the primary key only: the caller holds these runs locked and live, and a
        # condition on ended_at could lead the planner to the partial index of a workspace's
        # live runs, scanned whole for every row.
        await conn.execute(
            "UPDATE runs SET state = q.s, position = q.p, executed = q.x::jsonb,"
            " next_wake_at = q.nw, ended_at = q.e, end_reason = q.why, updated_at = q.u"
            " FROM unnest(uuids($1), uuids($2), $3::text[], $4::text[],"
            "  $5::text[], $6::timestamptz[], $7::timestamptz[], $8::text[], $9::timestamptz[])"
            "  AS q(w, r, s, p, x, nw, e, why, u)"
            " WHERE runs.workspace_id = q.w AND runs.id = q.r",
            id_array(run.workspace_id for run, *_ in self.runs),
            id_array(run.id for run, *_ in self.runs),
            *(list(column) for column in zip(*(rest for _, *rest in self.runs), strict=True)),
        )
        ended = [
            row[0] for row in self.runs if row[5] is not None and row[0].id not in self.untimed
        ]
        if ended:
            await conn.execute(
                "DELETE FROM timers t USING unnest(uuids($1), $2::text[]) AS e(w, k)"
                " WHERE t.timer_key = e.k AND t.workspace_id = e.w",
                id_array(run.workspace_id for run in ended),
                [f"run/{run.id}" for run in ended],
            )
        waking = [(row[0], row[4]) for row in self.runs if row[4] is not None]
        if waking:
            await conn.execute(
                "INSERT INTO timers (timer_key, workspace_id, contact_id, workflow_id, run_id,"
                " kind, due_at) SELECT 'run/' || r::text, w, c, f, r, 'run', d"
                " FROM unnest(uuids($1), uuids($2), uuids($3),"
                " uuids($4), $5::timestamptz[]) AS q(w, c, f, r, d)"
                " ON CONFLICT (timer_key) DO UPDATE SET due_at = EXCLUDED.due_at",
                id_array(r.workspace_id for r, _ in waking),
                id_array(r.contact_id for r, _ in waking),
                id_array(r.workflow_id for r, _ in waking),
                id_array(r.id for r, _ in waking),
                [d for _, d in waking],
            )
            engine.wake(min(d for _, d in waking if d is not None))
