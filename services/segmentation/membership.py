"""Segment membership over time: evaluate, diff with ``memberships``, publish transitions.

Who is in which segment is stored (``memberships``); a transition is the difference between
that and a new evaluation, written in the same transaction as its outbox row on
``segments.membership.v1`` (keyed by contact id), so a transition and its event commit
together or not at all. Three things re-evaluate:

- a batch of read-model changes (:func:`after_apply`, run in the batch's transaction): the
  changed contacts, every segment of their workspace, cause EVENT (the last event that
  changed the contact is ``caused_by_event_id``); removed contacts leave every segment,
  cause REMOVAL;
- the sweeper (:mod:`services.segmentation.sweeper`): contacts whose
  ``next_transition_at`` fell due, cause TIME, effective at the due moment;
- a definition change (:func:`on_segment_created` / ``_updated`` / ``_deleted``, called in
  the transaction that writes the segment): a created segment's population is a baseline
  stored without events; an updated one is re-evaluated over the workspace with cause
  DEFINITION (with the segments that reference it); a deleted one's memberships go without
  events.

Exactly once: each event id is a uuid5 of the transition (workspace, segment, contact,
change, cause and what distinguishes its cause: the causing event id, the due moment, or
the definition version), so the relay's republished copy and a re-run of a rolled-back
transaction carry the same id, and two distinct transitions never share one.

Evaluations of changed contacts hold a shared advisory lock of their workspace and a
definition change an exclusive one (docs/segment-membership.md, "Concurrency"), so that no
evaluation mixes an old definition with a new population.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.segmentation.v1 import events_pb2

from services.common.events import deterministic_id
from services.common.outbox import add_many_to_outbox
from services.common.topics import SEGMENT_MEMBERSHIP
from services.common.tracing import current_traceparent
from services.segmentation.adapters import membership_sql as sql
from services.segmentation.adapters.postgres import SCHEMA, Applied
from services.segmentation.domain import builtins, rules
from services.segmentation.domain.rules import Node

log = logging.getLogger(__name__)

E = events_pb2
BUILT_IN_VERSION = 1
_PAYLOAD_TYPE = E.SegmentMembershipChanged.DESCRIPTOR.full_name
_TICK = timedelta(microseconds=1)  # PostgreSQL's resolution
# Where transitions are published: segments.membership.v1, unless the service is configured
# otherwise (``SEGMENTATION_MEMBERSHIP_TOPIC``: a read-model rebuild must not publish its
# replayed transitions to the live topic). Set once at start-up by :func:`configure`.
_topic = SEGMENT_MEMBERSHIP


def configure(*, topic: str) -> None:
    global _topic
    _topic = topic


# Compiled statements kept per workspace (least recently used go first).
CACHE_SIZE = 1000
# Transitions queued into the outbox per statement.
OUTBOX_CHUNK = 5000


@dataclass(frozen=True)
class Trigger:
    """Why a contact is re-evaluated: the cause, when the change takes effect, and what to
    name as its cause (the event id for EVENT and REMOVAL)."""

    cause: E.MembershipCause.ValueType
    effective_at: datetime
    caused_by: str = ""


@dataclass(frozen=True)
class Transition:
    segment_id: str
    contact_id: str
    entered: bool
    cause: E.MembershipCause.ValueType
    segment_version: int
    effective_at: datetime
    caused_by: str
    discriminator: str  # what makes this transition unique beyond its (segment, contact)


def transition_id(workspace_id: str, t: Transition) -> str:
    """The event id of a transition: the same transition always gets the same id."""
    return deterministic_id(
        "membership",
        workspace_id,
        t.segment_id,
        t.contact_id,
        "entered" if t.entered else "exited",
        E.MembershipCause.Name(t.cause),
        t.discriminator,
    )


class Definitions:
    """The compiled evaluation statement of each workspace, keyed by its custom segments'
    versions: reading (id, version) of a workspace's segments is one indexed query per batch,
    and a changed fingerprint (a segment created, updated, deleted, by this or another
    replica) recompiles. Built-ins are always there, first."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._cache: OrderedDict[str, tuple[tuple[tuple[str, int], ...], sql.Compiled]] = (
            OrderedDict()
        )
        self.compiles = 0  # for tests

    def invalidate(self, workspace_id: str) -> None:
        self._cache.pop(workspace_id, None)

    async def compiled(
        self, conn: asyncpg.Connection, workspace_ids: Sequence[str]
    ) -> dict[str, sql.Compiled]:
        fingerprints = await sql.segment_versions(conn, workspace_ids)
        out: dict[str, sql.Compiled] = {}
        for ws in workspace_ids:
            cached = self._cache.get(ws)
            if cached is not None and cached[0] == fingerprints[ws]:
                self._cache.move_to_end(ws)
                out[ws] = cached[1]
                continue
            compiled = sql.compile_workspace(await workspace_segments(conn, ws))
            self.compiles += 1
            self._cache[ws] = (fingerprints[ws], compiled)
            self._cache.move_to_end(ws)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
            out[ws] = compiled
        return out


async def workspace_segments(
    conn: asyncpg.Connection, workspace_id: str
) -> list[tuple[str, int, Node]]:
    """Every segment of the workspace as (id, version, parsed node): the built-ins, then the
    custom ones by id. A stored rule that no longer parses (it was valid when written) is
    skipped with an error log rather than stopping every evaluation of the workspace."""
    stored = await sql.segment_rules(conn, workspace_id)
    segments: list[tuple[str, int, Node]] = [
        (b.id, BUILT_IN_VERSION, b.node) for b in builtins.BUILT_IN
    ]
    resolve = _resolver(stored)
    for segment_id in sorted(stored):
        version, doc = stored[segment_id]
        try:
            segments.append((segment_id, version, rules.parse_rule(doc, resolve=resolve)))
        except rules.RuleError as err:
            log.error(
                "segment %s of workspace %s no longer parses, not evaluated: %s",
                segment_id,
                workspace_id,
                err.violations,
            )
    return segments


def _resolver(stored: Mapping[str, tuple[int, object]]) -> Callable[[str], object | None]:
    def resolve(segment_id: str) -> object | None:
        found = stored.get(segment_id)
        return found[1] if found is not None else None

    return resolve


DEFINITIONS = Definitions()

# Called with the earliest next transition an evaluation set (the sweeper's wake-up).
NextDue = Callable[[datetime], None]
_next_due_listeners: list[NextDue] = []


def on_next_due(listener: NextDue) -> Callable[[], None]:
    """Tell ``listener`` whenever an evaluation sets a next transition; returns the undo."""
    _next_due_listeners.append(listener)
    return lambda: _next_due_listeners.remove(listener)


def _announce(due: datetime | None) -> None:
    if due is None:
        return
    for listener in list(_next_due_listeners):
        listener(due)


async def reevaluate(
    conn: asyncpg.Connection,
    workspace_id: str,
    triggers: Mapping[str, Trigger],
    compiled: sql.Compiled,
) -> list[Transition]:
    """Evaluate every segment for the contacts of ``triggers``, each at its trigger's
    ``effective_at``; store the difference, queue its events and set each contact's next
    transition. Runs inside the caller's transaction, which holds the workspace's shared
    lock."""
    contacts = sorted(triggers)
    evaluated = await sql.evaluate(
        conn, compiled, workspace_id, [(c, triggers[c].effective_at) for c in contacts]
    )
    stored = await sql.current_memberships(conn, workspace_id, contacts)
    entered: list[tuple[str, str]] = []
    entered_at: list[datetime] = []
    exited: list[tuple[str, str]] = []
    transitions: list[Transition] = []
    next_at: list[tuple[str, datetime | None]] = []
    for contact in contacts:
        trigger = triggers[contact]
        members, nxt = evaluated.get(contact, ([False] * len(compiled.segment_ids), None))
        if contact in evaluated:
            if nxt is not None and nxt <= trigger.effective_at:
                # Never due again at the same moment: that would sweep this row forever.
                nxt = trigger.effective_at + _TICK
            next_at.append((contact, nxt))
        for segment_id, version, member in zip(
            compiled.segment_ids, compiled.versions, members, strict=True
        ):
            was = (segment_id, contact) in stored
            if member == was:
                continue
            pair = (segment_id, contact)
            if member:
                entered.append(pair)
                entered_at.append(trigger.effective_at)
            else:
                exited.append(pair)
            transitions.append(
                Transition(
                    segment_id,
                    contact,
                    member,
                    trigger.cause,
                    version,
                    trigger.effective_at,
                    trigger.caused_by,
                    _discriminator(trigger),
                )
            )
    await sql.delete_memberships(conn, workspace_id, exited)
    await sql.insert_memberships(conn, workspace_id, entered, entered_at)
    await sql.set_next_transitions(conn, workspace_id, next_at)
    await publish(conn, workspace_id, transitions)
    _announce(min((n for _, n in next_at if n is not None), default=None))
    return transitions


def _discriminator(trigger: Trigger) -> str:
    if trigger.cause == E.MEMBERSHIP_CAUSE_TIME:
        return trigger.effective_at.isoformat()
    return trigger.caused_by


async def publish(
    conn: asyncpg.Connection, workspace_id: str, transitions: Sequence[Transition]
) -> None:
    """Queue one event per transition on segments.membership.v1, in order, keyed by contact.
    Envelopes are built directly (not through ``new_envelope``) with one Timestamp per
    moment: a sweep publishes thousands per transaction and this is its Python cost."""
    trace = current_traceparent()
    stamps: dict[datetime, Timestamp] = {}
    for start in range(0, len(transitions), OUTBOX_CHUNK):
        chunk = transitions[start : start + OUTBOX_CHUNK]
        events = []
        for t in chunk:
            stamp = stamps.get(t.effective_at)
            if stamp is None:
                stamp = stamps[t.effective_at] = Timestamp()
                stamp.FromDatetime(t.effective_at)
            envelope = Envelope(
                event_id=transition_id(workspace_id, t),
                workspace_id=workspace_id,
                type=_PAYLOAD_TYPE,
                occurred_at=stamp,
                segment_membership_changed=E.SegmentMembershipChanged(
                    segment_id=t.segment_id,
                    contact_id=t.contact_id,
                    change=E.MEMBERSHIP_CHANGE_ENTERED if t.entered else E.MEMBERSHIP_CHANGE_EXITED,
                    cause=t.cause,
                    segment_version=t.segment_version,
                    effective_at=stamp,
                    caused_by_event_id=t.caused_by,
                ),
            )
            events.append((t.contact_id, envelope, trace))
        await add_many_to_outbox(conn, SCHEMA, _topic, events)


async def after_apply(conn: asyncpg.Connection, applied: Applied, now: datetime) -> None:
    """ReadModelWriter's hook: re-evaluate the changed contacts (cause EVENT) and take the
    removed ones out of every segment (cause REMOVAL), in the batch's transaction."""
    by_ws: dict[str, dict[str, Trigger]] = {}
    for (ws, contact), event_id in applied.changed.items():
        by_ws.setdefault(ws, {})[contact] = Trigger(E.MEMBERSHIP_CAUSE_EVENT, now, event_id)
    removed: dict[str, dict[str, str]] = {}
    for (ws, contact), event_id in applied.removed.items():
        removed.setdefault(ws, {})[contact] = event_id
    workspaces = sorted(set(by_ws) | set(removed))
    for ws in workspaces:  # in one order everywhere: no deadlock between batches
        await sql.lock_workspace(conn, ws, shared=True)
    compiled = await DEFINITIONS.compiled(conn, workspaces)
    for ws in workspaces:
        if ws in by_ws:
            await reevaluate(conn, ws, by_ws[ws], compiled[ws])
        if ws in removed:
            await remove(conn, ws, removed[ws], now, compiled[ws])


async def remove(
    conn: asyncpg.Connection,
    workspace_id: str,
    removed: Mapping[str, str],
    now: datetime,
    compiled: sql.Compiled,
) -> list[Transition]:
    """Removed contacts (deleted or erased) leave every segment: Exited, cause REMOVAL."""
    versions = dict(zip(compiled.segment_ids, compiled.versions, strict=True))
    gone = await sql.remove_contacts(conn, workspace_id, sorted(removed))
    transitions = [
        Transition(
            segment_id,
            contact,
            False,
            E.MEMBERSHIP_CAUSE_REMOVAL,
            versions.get(segment_id, 0),
            now,
            removed[contact],
            removed[contact],
        )
        for segment_id, contact in gone
    ]
    await publish(conn, workspace_id, transitions)
    return transitions


# --- Definition changes: called by the segment use cases inside their own transaction, after
# the ``segments`` row is written (so that references to it resolve).


async def on_segment_created(
    conn: asyncpg.Connection,
    ws: str,
    segment_id: str,
    node: Node,
    version: int,
    now: datetime,
) -> int:
    """Store the new segment's initial population as a baseline, WITHOUT events (nobody
    entered anything: the segment did not exist), and bring forward the next transition of
    the contacts whose membership time alone may change. Returns the population."""
    await sql.lower_next_transitions(conn, ws, node, now)
    await sql.lock_workspace(conn, ws, shared=False)
    DEFINITIONS.invalidate(ws)
    changes = await sql.reevaluate_segment(conn, ws, segment_id, node, now)
    _announce(now)
    return sum(1 for entered, _ in changes if entered)


async def on_segment_updated(
    conn: asyncpg.Connection,
    ws: str,
    segment_id: str,
    node: Node,
    version: int,
    now: datetime,
) -> list[Transition]:
    """Re-evaluate the updated segment, and every custom segment that references it
    (directly or not), over the whole workspace; publish the differences with cause
    DEFINITION. Returns the transitions."""
    await sql.lower_next_transitions(conn, ws, node, now)
    await sql.lock_workspace(conn, ws, shared=False)
    DEFINITIONS.invalidate(ws)
    cause = f"{segment_id}@{version}"
    targets: list[tuple[str, int, Node]] = [(segment_id, version, node)]
    stored = await sql.segment_rules(conn, ws)
    resolve = _resolver(stored)
    for dependent in sorted(_dependents(stored, segment_id)):
        dep_version, doc = stored[dependent]
        try:
            targets.append((dependent, dep_version, rules.parse_rule(doc, resolve=resolve)))
        except rules.RuleError as err:
            log.error("segment %s of %s no longer parses: %s", dependent, ws, err.violations)
    transitions: list[Transition] = []
    for target_id, target_version, target_node in targets:
        if target_id != segment_id:
            await sql.lower_next_transitions(conn, ws, target_node, now)
        for entered, contact in await sql.reevaluate_segment(conn, ws, target_id, target_node, now):
            transitions.append(
                Transition(
                    target_id,
                    contact,
                    entered,
                    E.MEMBERSHIP_CAUSE_DEFINITION,
                    target_version,
                    now,
                    "",
                    cause,
                )
            )
    transitions.sort(key=lambda t: t.contact_id)
    await publish(conn, ws, transitions)
    _announce(now)
    return transitions


def _dependents(stored: Mapping[str, tuple[int, object]], segment_id: str) -> set[str]:
    """The custom segments whose rule references ``segment_id``, directly or through others."""
    refs = {sid: rules.referenced_segments(doc) for sid, (_, doc) in stored.items()}
    found: set[str] = set()
    frontier = {segment_id}
    while frontier:
        frontier = {
            sid
            for sid, r in refs.items()
            if r & frontier and sid not in found and sid != segment_id
        }
        found |= frontier
    return found


async def on_segment_deleted(conn: asyncpg.Connection, ws: str, segment_id: str) -> None:
    """Drop the deleted segment's memberships WITHOUT events: the segment is gone, so nobody
    can act on its exits (a campaign targeting it cannot run any more); documented in
    docs/segment-membership.md. Next transition times it set stay: at worst the sweeper
    re-evaluates a contact once for nothing."""
    await sql.lock_workspace(conn, ws, shared=False)
    DEFINITIONS.invalidate(ws)
    await conn.execute(
        "DELETE FROM memberships WHERE workspace_id = $1::uuid AND segment_id = $2", ws, segment_id
    )
