"""Triggers that no single event carries: a date coming round (birthday, signup
anniversary), a silence (no order, visit or open for N days), the total spent crossing a
threshold. The runtime calls two hooks, both inside the transaction of what it is handling:

- :func:`on_contact_changed` after it applied an event to the contact's facts
  (``contact_facts``): (re)schedule the contact's ``date`` and ``inactive`` timers for every
  published workflow with such a trigger, and return the ``value_crossed`` runs to start;
- :func:`on_timer` for a claimed timer of kind ``date`` or ``inactive``: return the runs to
  start (and schedule the next year's ``date`` timer).

and the API calls :func:`schedule_workflow` when a workflow with one of these triggers is
published, so that contacts known before it get their timers (and value baselines) without
waiting for their next event.

The runtime starts the returned :class:`Start` s exactly as it starts runs for events
(entry rules, deterministic run ids from ``trigger_event_id``): a replayed event or timer
yields the same ids, hence the same runs, never a second one.

Why the choices (docs/triggers.md, "Dates, silence and value"):

- One ``date`` timer per (workflow, contact), due at the next occurrence of the date at
  ``trigger.at`` in the contact's zone. Its payload keeps the *basis* it was computed from
  (field, date, time, zone): a contact change that leaves the basis alone does not touch the
  timer, so an event arriving while the timer is overdue cannot push it to next year.
- ``inactive`` timers only move forward (an out-of-order, older activity never pulls one
  back); when one fires, the contact's recorded events of the workflow's own activity kinds
  are checked for a newer one (``contact_facts.last_activity_at`` counts every kind of
  activity, so it would keep a "no order for 90 days" workflow from ever firing for a
  contact who browses).
- ``value_crossed`` compares the new total with the total last seen by this module
  (``contact_value_seen``, migration 0040): only an order crosses; a total raised by an
  import or a profile change becomes the new baseline.

The pure parts (occurrences, 29 February, zones, crossings, amounts) are plain functions
at the top, unit-tested in tests/unit/triggers/test_derived.py.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, tzinfo
from typing import Any

import asyncpg
from pydantic import ValidationError

from services.common.events import deterministic_id
from services.triggers.domain.engine import zone
from services.triggers.domain.model import Definition, Trigger

log = logging.getLogger(__name__)

DATE_REACHED = "date_reached"
INACTIVE = "inactive"
VALUE_CROSSED = "value_crossed"
DERIVED_TRIGGERS = (DATE_REACHED, INACTIVE, VALUE_CROSSED)
# Only these raise the total spent in a way that counts as crossing a threshold.
ORDER_EVENTS = frozenset({"order_placed"})
# schedule_workflow reads contacts and writes timers this many at a time.
BATCH_SIZE = 1_000
# A birthday stored with a year before this one is a birthday without a year (contacts keep
# year 0 for "unknown"; a date column cannot): its `years` is "0".
FIRST_REAL_YEAR = 1900


@dataclass(frozen=True)
class Start:
    """Start a run of ``workflow_id`` at ``version`` for a contact."""

    workflow_id: str
    version: int
    contact_id: str
    # Deterministic: the same birthday of the same year, the same crossing, gives the same id.
    trigger_event_id: str
    vars: Mapping[str, str] = field(default_factory=dict)  # e.g. {"years": "2"}
    key: str = ""


# Pure parts --------------------------------------------------------------------------------


def anniversary(source: date, year: int) -> date:
    """``source``'s day in ``year``; 29 February falls on 28 February in other years (the
    last day of the month the date belongs to, rather than 1 March, a month too late)."""
    try:
        return source.replace(year=year)
    except ValueError:  # 29 February in a year that has none
        return date(year, 2, 28)


@dataclass(frozen=True)
class Occurrence:
    day: date  # the local calendar day it falls on
    due_at: datetime  # UTC
    years: int  # whole years since the source date (0 on the day itself)


def next_occurrence(
    source: date, at: time, tz: tzinfo, after: datetime, *, min_years: int = 0
) -> Occurrence:
    """The first yearly occurrence of ``source`` at wall-clock ``at`` in ``tz`` strictly after
    ``after``, at least ``min_years`` years on.

    A wall-clock time that a DST change skips that day (02:30 when clocks jump from 02:00 to
    03:00) happens at the same distance past the jump (03:30); one that happens twice (clocks
    going back) happens the first time. This is zoneinfo's ``fold=0`` reading.
    """
    year = max(after.astimezone(tz).year, source.year + min_years)
    while True:
        day = anniversary(source, year)
        due = datetime.combine(day, at, tzinfo=tz).astimezone(UTC)
        if due > after:
            return Occurrence(day=day, due_at=due, years=year - source.year)
        year += 1


def parse_date_value(value: object, tz: tzinfo) -> date | None:
    """An ISO date (``2020-05-01``) or date-time (``2020-05-01T10:00:00+02:00``, read as
    the day it is in the contact's zone), as a date attribute may hold; None otherwise."""
    if isinstance(value, datetime):
        return value.astimezone(tz).date() if value.tzinfo else value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(tz).date() if moment.tzinfo else moment.date()


@dataclass(frozen=True)
class ContactFacts:
    """The part of ``contact_facts`` the derived triggers read."""

    time_zone: str = ""
    birthday: date | None = None
    signed_up_at: datetime | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    total_spent_minor: int = 0
    currency: str = ""
    last_activity_at: datetime | None = None


@dataclass(frozen=True)
class DatePlan:
    """Where a contact's date timer for one trigger is due, and what it was computed from."""

    basis: str
    occurrence: Occurrence
    source: date  # the date it comes round from (its year counts the years)


def date_source(trigger: Trigger, facts: ContactFacts, tz: tzinfo) -> date | None:
    name = trigger.date_field or ""
    if name == "birthday":
        return facts.birthday
    if name == "signed_up_at":
        return facts.signed_up_at.astimezone(tz).date() if facts.signed_up_at else None
    if name.startswith("attributes."):
        return parse_date_value(facts.attributes.get(name.removeprefix("attributes.")), tz)
    return None


def plan_date(trigger: Trigger, facts: ContactFacts, after: datetime) -> DatePlan | None:
    """The contact's next occurrence of ``trigger.date_field`` after ``after``; None when the
    contact has no such date.

    A signup's anniversaries start one year on (the signup day itself is no anniversary: the
    welcome workflow has it); a birthday or a date attribute also fires on the day itself when
    that is still ahead (a contract's end date)."""
    tz = zone(facts.time_zone)
    source = date_source(trigger, facts, tz)
    if source is None:
        return None
    min_years = 1 if trigger.date_field == "signed_up_at" else 0
    occurrence = next_occurrence(source, trigger.at, tz, after, min_years=min_years)
    zone_name = facts.time_zone if tz is not UTC else "UTC"
    basis = f"{trigger.date_field}|{source.isoformat()}|{trigger.at.isoformat()}|{zone_name}"
    return DatePlan(basis=basis, occurrence=occurrence, source=source)


def years_since(source_year: int, occurrence: Occurrence) -> int:
    return occurrence.years if source_year >= FIRST_REAL_YEAR else 0


def crossed(
    before_minor: int,
    before_currency: str,
    after_minor: int,
    after_currency: str,
    threshold_minor: int,
    currency: str,
) -> bool:
    """Did the total go from below ``threshold_minor`` to at least it, in ``currency``? A
    total in another currency is not comparable (no conversion): no crossing. A total never
    seen before (currency "") counts as 0."""
    want = currency.upper()
    if after_currency.upper() != want:
        return False
    if before_currency and before_currency.upper() != want:
        return False
    before = before_minor if before_currency else 0
    return before < threshold_minor <= after_minor


# ISO 4217 minor units that are not 2 (the rest, EUR, USD, GBP..., have 2).
_MINOR_DIGITS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG"), 0),
    **dict.fromkeys(("RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}


def format_money(minor: int, currency: str) -> str:
    """``100000, "EUR"`` -> ``"1,000.00 EUR"`` (the run vars' format for amounts)."""
    code = currency.upper()
    digits = _MINOR_DIGITS.get(code, 2)
    sign = "-" if minor < 0 else ""
    units, fraction = divmod(abs(minor), 10**digits)
    text = f"{units:,}" + (f".{fraction:0{digits}d}" if digits else "")
    return f"{sign}{text} {code}".strip()


def date_trigger_id(workspace_id: str, workflow_id: str, contact_id: str, day: date) -> str:
    return deterministic_id(DATE_REACHED, workspace_id, workflow_id, contact_id, day.isoformat())


def inactive_trigger_id(
    workspace_id: str, workflow_id: str, contact_id: str, activity_at: datetime
) -> str:
    moment = activity_at.astimezone(UTC).isoformat()
    return deterministic_id(INACTIVE, workspace_id, workflow_id, contact_id, moment)


def value_trigger_id(
    workspace_id: str, workflow_id: str, contact_id: str, currency: str, threshold_minor: int
) -> str:
    return deterministic_id(
        VALUE_CROSSED, workspace_id, workflow_id, contact_id, currency.upper(), str(threshold_minor)
    )


def timer_key(kind: str, workflow_id: str, contact_id: str) -> str:
    return f"{kind}/{workflow_id}/{contact_id}"


# Reading the database ----------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedWorkflow:
    id: str
    version: int
    status: str  # active or paused: timers are kept current for both, runs start when active
    definition: Definition

    @property
    def active(self) -> bool:
        return self.status == "active"


# Published versions never change, so their parsed definitions can be kept: (workspace,
# workflow, version) -> Definition. Bounded by clearing when full (a cache, not a record).
_definitions: dict[tuple[str, str, int], Definition] = {}
_DEFINITIONS_KEPT = 4_096


def _json(value: object) -> Any:
    """jsonb as text (queries cast to text so that a pool with or without a json codec reads
    the same)."""
    if isinstance(value, str):
        return json.loads(value)
    return value if value is not None else {}


async def _published(
    conn: asyncpg.Connection,
    workspace_id: str,
    events: Sequence[str],
    workflow_id: str | None = None,
) -> list[PublishedWorkflow]:
    """The workspace's published, not archived workflows whose trigger is one of ``events``
    (or the one ``workflow_id``)."""
    rows = await conn.fetch(
        "SELECT id::text AS id, published_version AS version, status FROM workflows"
        " WHERE workspace_id = $1 AND status IN ('active', 'paused') AND published_version > 0"
        " AND trigger_event = ANY($2::text[]) AND ($3::uuid IS NULL OR id = $3::uuid)",
        workspace_id,
        list(events),
        workflow_id,
    )
    found: list[PublishedWorkflow] = []
    for row in rows:
        definition = await _definition(conn, workspace_id, row["id"], row["version"])
        if definition is not None:
            found.append(PublishedWorkflow(row["id"], row["version"], row["status"], definition))
    return found


async def published_derived(conn: asyncpg.Connection, workspace_id: str) -> list[PublishedWorkflow]:
    """What :func:`on_contact_changed` looks through: the workspace's published workflows of
    a derived trigger. The event path caches them (``Engine.derived_workflows``) as it
    caches its live workflows, since every event of every workspace asks."""
    return await _published(conn, workspace_id, DERIVED_TRIGGERS)


async def _definition(
    conn: asyncpg.Connection, workspace_id: str, workflow_id: str, version: int
) -> Definition | None:
    key = (workspace_id, workflow_id, version)
    cached = _definitions.get(key)
    if cached is not None:
        return cached
    text = await conn.fetchval(
        "SELECT definition::text FROM workflow_versions"
        " WHERE workspace_id = $1 AND workflow_id = $2 AND version = $3",
        workspace_id,
        workflow_id,
        version,
    )
    if text is None:
        return None
    try:
        definition = Definition.model_validate(_json(text))
    except ValidationError:
        # Published versions were validated by the API; one that no longer parses (a model
        # change) must not fail every event of the workspace: it is left out, loudly.
        log.exception("workflow %s version %s does not parse; ignored", workflow_id, version)
        return None
    if len(_definitions) >= _DEFINITIONS_KEPT:
        _definitions.clear()
    _definitions[key] = definition
    return definition


FACTS_COLUMNS = (
    "contact_id::text AS contact_id, time_zone, birthday, signed_up_at,"
    " attributes::text AS attributes, total_spent_minor, currency, last_activity_at"
)


def _facts_of(row: Mapping[str, Any]) -> ContactFacts:
    text = row["attributes"]
    attributes = {} if text in (None, "{}") else _json(text)
    return ContactFacts(
        time_zone=row["time_zone"] or "",
        birthday=row["birthday"],
        signed_up_at=row["signed_up_at"],
        attributes=attributes if isinstance(attributes, dict) else {},
        total_spent_minor=row["total_spent_minor"] or 0,
        currency=row["currency"] or "",
        last_activity_at=row["last_activity_at"],
    )


async def _facts(conn: asyncpg.Connection, workspace_id: str, contact_id: str) -> ContactFacts:
    return (await _facts_many(conn, workspace_id, [contact_id]))[contact_id]


async def _facts_many(
    conn: asyncpg.Connection, workspace_id: str, contact_ids: Sequence[str]
) -> dict[str, ContactFacts]:
    """Each contact's facts (empty ones for a contact the engine does not know)."""
    rows = await conn.fetch(
        f"SELECT {FACTS_COLUMNS} FROM contact_facts"
        " WHERE workspace_id = $1 AND contact_id = ANY($2::uuid[])",
        workspace_id,
        list(contact_ids),
    )
    found = {row["contact_id"]: _facts_of(row) for row in rows}
    return {c: found.get(str(uuid.UUID(c)), ContactFacts()) for c in contact_ids}


# Writing timers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _DateTimer:
    contact_id: str
    plan: DatePlan
    source_year: int


def _date_payload(workflow: PublishedWorkflow, timer: _DateTimer) -> str:
    return json.dumps(
        {
            "version": workflow.version,
            "date_field": workflow.definition.trigger.date_field,
            "basis": timer.plan.basis,
            "occurrence": timer.plan.occurrence.day.isoformat(),
            "years": years_since(timer.source_year, timer.plan.occurrence),
        }
    )


async def _put_date_timers(
    conn: asyncpg.Connection,
    workspace_id: str,
    workflow: PublishedWorkflow,
    timers: Sequence[_DateTimer],
    *,
    replace: bool = False,
) -> int:
    """Insert, or move when their basis changed, the date timers; returns how many were
    written (an unchanged basis leaves the row alone, even overdue). ``replace``: move them
    whatever the basis (the next year's, after one fired)."""
    if not timers:
        return 0
    result = await conn.execute(
        "INSERT INTO timers (timer_key, workspace_id, contact_id, workflow_id, kind, due_at,"
        " payload)"
        " SELECT k, $1::uuid, c, $2::uuid, 'date', d, p::jsonb"
        " FROM unnest($3::text[], $4::uuid[], $5::timestamptz[], $6::text[]) AS t(k, c, d, p)"
        " ON CONFLICT (timer_key) DO UPDATE SET due_at = EXCLUDED.due_at,"
        " payload = EXCLUDED.payload"
        " WHERE $7 OR timers.payload->>'basis' IS DISTINCT FROM EXCLUDED.payload->>'basis'",
        workspace_id,
        workflow.id,
        [timer_key("date", workflow.id, t.contact_id) for t in timers],
        [t.contact_id for t in timers],
        [t.plan.occurrence.due_at for t in timers],
        [_date_payload(workflow, t) for t in timers],
        replace,
    )
    return int(result.split()[-1])


def _date_timers(
    workflow: PublishedWorkflow, contacts: Iterable[tuple[str, ContactFacts]], after: datetime
) -> tuple[list[_DateTimer], list[str]]:
    """(timers to put, contacts without the date whose timer goes)."""
    trigger = workflow.definition.trigger
    timers: list[_DateTimer] = []
    dateless: list[str] = []
    for contact_id, facts in contacts:
        plan = plan_date(trigger, facts, after)
        if plan is None:
            dateless.append(contact_id)
            continue
        timers.append(_DateTimer(contact_id, plan, plan.source.year))
    return timers, dateless


async def _drop_timers(
    conn: asyncpg.Connection,
    workspace_id: str,
    kind: str,
    workflow_id: str,
    contact_ids: Sequence[str],
) -> None:
    if contact_ids:
        await conn.execute(
            "DELETE FROM timers WHERE workspace_id = $1::uuid AND timer_key = ANY($2::text[])",
            workspace_id,
            [timer_key(kind, workflow_id, c) for c in contact_ids],
        )


async def _push_inactive_timer(
    conn: asyncpg.Connection,
    workspace_id: str,
    workflow: PublishedWorkflow,
    contact_id: str,
    activity_at: datetime,
) -> None:
    await _push_inactive_timers(conn, workspace_id, workflow, [(contact_id, activity_at)])


async def _push_inactive_timers(
    conn: asyncpg.Connection,
    workspace_id: str,
    workflow: PublishedWorkflow,
    activities: Sequence[tuple[str, datetime]],
) -> None:
    """Each contact's timer due ``inactive_for`` after its activity; only ever later than
    it was."""
    inactive_for = workflow.definition.trigger.inactive_for
    if inactive_for is None or not activities:
        return
    await conn.execute(
        "INSERT INTO timers (timer_key, workspace_id, contact_id, workflow_id, kind, due_at,"
        " payload) SELECT k, $1::uuid, c, $2::uuid, 'inactive', d, p::jsonb"
        " FROM unnest($3::text[], $4::uuid[], $5::timestamptz[], $6::text[]) AS t(k, c, d, p)"
        " ON CONFLICT (timer_key) DO UPDATE SET due_at = EXCLUDED.due_at,"
        " payload = EXCLUDED.payload WHERE timers.due_at < EXCLUDED.due_at",
        workspace_id,
        workflow.id,
        [timer_key(INACTIVE, workflow.id, c) for c, _ in activities],
        [c for c, _ in activities],
        [at + inactive_for for _, at in activities],
        [
            json.dumps({"version": workflow.version, "activity_at": at.astimezone(UTC).isoformat()})
            for _, at in activities
        ],
    )


async def _swap_seen_totals(
    conn: asyncpg.Connection,
    workspace_id: str,
    facts: Mapping[str, ContactFacts],
    now: datetime,
) -> dict[str, tuple[int, str]]:
    """Each contact's total last seen (0 and "" for a contact new since the publication),
    replaced by its current one (``facts``)."""
    contacts = list(facts)
    rows = await conn.fetch(
        "SELECT contact_id::text AS contact_id, total_spent_minor, currency"
        " FROM contact_value_seen WHERE workspace_id = $1 AND contact_id = ANY($2::uuid[])"
        " ORDER BY contact_id FOR UPDATE",
        workspace_id,
        contacts,
    )
    seen = {r["contact_id"]: (int(r["total_spent_minor"]), str(r["currency"])) for r in rows}
    before = {c: seen.get(str(uuid.UUID(c)), (0, "")) for c in contacts}
    changed = sorted(
        c
        for c in contacts
        if seen.get(str(uuid.UUID(c))) != (facts[c].total_spent_minor, facts[c].currency)
    )
    if changed:  # most events change no total
        await conn.execute(
            "INSERT INTO contact_value_seen (workspace_id, contact_id, total_spent_minor,"
            " currency, seen_at) SELECT $1, c, t, cur, $5"
            " FROM unnest($2::uuid[], $3::bigint[], $4::text[]) AS q(c, t, cur)"
            " ON CONFLICT (workspace_id, contact_id) DO UPDATE SET"
            " total_spent_minor = EXCLUDED.total_spent_minor, currency = EXCLUDED.currency,"
            " seen_at = EXCLUDED.seen_at",
            workspace_id,
            changed,
            [facts[c].total_spent_minor for c in changed],
            [facts[c].currency for c in changed],
            now,
        )
    return before


# The hooks ---------------------------------------------------------------------------------


async def on_contact_changed(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: str,
    event: str,
    occurred_at: datetime,
    now: datetime,
    *,
    published: Sequence[PublishedWorkflow] | None = None,
) -> list[Start]:
    """``event`` is the EventName the contact's facts were just updated by (or
    ``contact_updated`` for a profile change); ``occurred_at`` its event time.
    ``published``: the workspace's :func:`published_derived` when the caller has them
    (the engine's cache), else they are read."""
    return await on_contacts_changed(
        conn, workspace_id, [Change(contact_id, event, occurred_at)], now, published=published
    )


@dataclass(frozen=True)
class Change:
    """A contact's facts updated by ``event`` (see :func:`on_contact_changed`)."""

    contact_id: str
    event: str
    occurred_at: datetime


async def on_contacts_changed(
    conn: asyncpg.Connection,
    workspace_id: str,
    changes: Sequence[Change],
    now: datetime,
    *,
    published: Sequence[PublishedWorkflow] | None = None,
) -> list[Start]:
    """:func:`on_contact_changed` for a round of events of different contacts of one
    workspace, with a fixed number of statements whatever their number."""
    workflows = await published_derived(conn, workspace_id) if published is None else published
    if not workflows or not changes:
        return []
    facts = await _facts_many(conn, workspace_id, [c.contact_id for c in changes])
    starts: list[Start] = []
    values: list[PublishedWorkflow] = []
    for workflow in workflows:
        trigger = workflow.definition.trigger
        if trigger.event == DATE_REACHED:
            timers, dateless = _date_timers(workflow, facts.items(), now)
            await _put_date_timers(conn, workspace_id, workflow, timers)
            await _drop_timers(conn, workspace_id, "date", workflow.id, dateless)
        elif trigger.event == INACTIVE:
            await _push_inactive_timers(
                conn,
                workspace_id,
                workflow,
                [(c.contact_id, c.occurred_at) for c in changes if c.event in trigger.activities],
            )
        elif trigger.event == VALUE_CROSSED:
            values.append(workflow)
    if not values:
        return starts
    seen = await _swap_seen_totals(conn, workspace_id, facts, now)
    for change in changes:
        contact_id = change.contact_id
        before, before_currency = seen[contact_id]
        after = facts[contact_id]
        for workflow in values:
            trigger = workflow.definition.trigger
            if (
                workflow.active
                and change.event in ORDER_EVENTS
                and trigger.threshold_minor is not None
                and trigger.currency
                and crossed(
                    before,
                    before_currency,
                    after.total_spent_minor,
                    after.currency,
                    trigger.threshold_minor,
                    trigger.currency,
                )
            ):
                starts.append(
                    Start(
                        workflow_id=workflow.id,
                        version=workflow.version,
                        contact_id=contact_id,
                        trigger_event_id=value_trigger_id(
                            workspace_id,
                            workflow.id,
                            contact_id,
                            trigger.currency,
                            trigger.threshold_minor,
                        ),
                        vars={
                            "total_spent": format_money(after.total_spent_minor, after.currency),
                            "threshold": format_money(trigger.threshold_minor, trigger.currency),
                        },
                    )
                )
    return starts


async def on_timer(conn: asyncpg.Connection, timer: asyncpg.Record, now: datetime) -> list[Start]:
    """``timer`` is the claimed ``timers`` row (kind ``date`` or ``inactive``)."""
    kind = timer["kind"]
    workspace_id = str(timer["workspace_id"])
    workflow_id = str(timer["workflow_id"])
    contact_id = str(timer["contact_id"])
    event = {"date": DATE_REACHED, "inactive": INACTIVE}.get(kind)
    if event is None:
        return []
    found = await _published(conn, workspace_id, [event], workflow_id)
    if not found:  # unpublished, archived or changed trigger: the timer just goes
        return []
    workflow = found[0]
    payload = _json(timer["payload"])
    facts = await _facts(conn, workspace_id, contact_id)
    if kind == "date":
        return await _date_fired(
            conn, workspace_id, workflow, contact_id, facts, timer, payload, now
        )
    return await _inactive_fired(conn, workspace_id, workflow, contact_id, payload, now)


async def _date_fired(
    conn: asyncpg.Connection,
    workspace_id: str,
    workflow: PublishedWorkflow,
    contact_id: str,
    facts: ContactFacts,
    timer: asyncpg.Record,
    payload: Mapping[str, Any],
    now: datetime,
) -> list[Start]:
    trigger = workflow.definition.trigger
    after = max(now, timer["due_at"])
    timers, _ = _date_timers(workflow, [(contact_id, facts)], after)
    if not timers:  # the date is gone from the contact
        return []
    await _put_date_timers(conn, workspace_id, workflow, timers, replace=True)  # the next
    if timers[0].plan.basis != payload.get("basis"):
        # Computed from another date, time or zone (the workflow was republished with another
        # field or hour): not this contact's occurrence any more; the next one is set.
        log.info("date timer of workflow %s for contact %s was stale", workflow.id, contact_id)
        return []
    if not workflow.active:
        return []
    day = date.fromisoformat(str(payload["occurrence"]))
    return [
        Start(
            workflow_id=workflow.id,
            version=workflow.version,
            contact_id=contact_id,
            trigger_event_id=date_trigger_id(workspace_id, workflow.id, contact_id, day),
            vars={"date_field": trigger.date_field or "", "years": str(payload.get("years", 0))},
        )
    ]


async def _inactive_fired(
    conn: asyncpg.Connection,
    workspace_id: str,
    workflow: PublishedWorkflow,
    contact_id: str,
    payload: Mapping[str, Any],
    now: datetime,
) -> list[Start]:
    trigger = workflow.definition.trigger
    if trigger.inactive_for is None or "activity_at" not in payload:
        return []
    activity_at = datetime.fromisoformat(str(payload["activity_at"]))
    newer = await conn.fetchval(
        "SELECT max(occurred_at) FROM contact_events WHERE workspace_id = $1"
        " AND contact_id = $2 AND event = ANY($3::text[]) AND occurred_at > $4",
        workspace_id,
        contact_id,
        list(trigger.activities),
        activity_at,
    )
    latest = newer if newer is not None else activity_at
    if newer is not None or latest + trigger.inactive_for > now:
        # A newer activity the timer missed, or a longer silence since a republication.
        await _push_inactive_timer(conn, workspace_id, workflow, contact_id, latest)
        return []
    if not workflow.active:
        return []
    return [
        Start(
            workflow_id=workflow.id,
            version=workflow.version,
            contact_id=contact_id,
            trigger_event_id=inactive_trigger_id(
                workspace_id, workflow.id, contact_id, activity_at
            ),
            vars={"days": str((now - activity_at).days)},
        )
    ]


# On publication ----------------------------------------------------------------------------


async def schedule_workflow(
    conn: asyncpg.Connection, workspace_id: str, workflow_id: str, version: int, now: datetime
) -> int:
    """Prepare a just-published ``date_reached``, ``inactive`` or ``value_crossed`` workflow
    for the contacts already known (``contact_facts``); returns how many rows were written.
    The API calls it in the publication's transaction (it is idempotent; also on resuming a
    paused workflow). Any other trigger: 0.

    - date_reached: each contact with the date gets its timer, but not here: a job is
      recorded (``schedule_jobs``, one per workflow, a later call restarting it) and the
      workers' schedule loop writes the timers in batches after the commit
      (runtime/schedules.py), as at 100,000 contacts it took 8 s (bench/RESULTS.md);
    - inactive: each contact with a recorded activity gets a timer at that activity plus
      ``inactive_for`` (``last_activity_at``: any kind of activity; already past for the
      long silent, who then start at once);
    - value_crossed: each contact's current total becomes the baseline, so that totals
      reached before the publication are no crossing.
    """
    definition = await _definition(conn, workspace_id, workflow_id, version)
    if definition is None:
        return 0
    trigger = definition.trigger
    if trigger.event == DATE_REACHED:
        await conn.execute(
            "INSERT INTO schedule_jobs (workspace_id, workflow_id, version, created_at)"
            " VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (workspace_id, workflow_id) DO UPDATE SET version = EXCLUDED.version,"
            " after_contact = NULL, written = 0, created_at = EXCLUDED.created_at",
            uuid.UUID(workspace_id),
            uuid.UUID(workflow_id),
            version,
            now,
        )
        return 0
    if trigger.event == INACTIVE and trigger.inactive_for is not None:
        result = await conn.execute(
            "INSERT INTO timers (timer_key, workspace_id, contact_id, workflow_id, kind, due_at,"
            " payload)"
            " SELECT 'inactive/' || $2::text || '/' || f.contact_id::text, f.workspace_id,"
            " f.contact_id, $2::uuid, 'inactive', f.last_activity_at + $3::interval,"
            " jsonb_build_object('version', $4::integer, 'activity_at',"
            " to_char(f.last_activity_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"
            " || '+00:00')"
            " FROM contact_facts f"
            " WHERE f.workspace_id = $1 AND f.last_activity_at IS NOT NULL"
            " ON CONFLICT (timer_key) DO UPDATE SET due_at = EXCLUDED.due_at,"
            " payload = EXCLUDED.payload WHERE timers.due_at < EXCLUDED.due_at",
            workspace_id,
            workflow_id,
            trigger.inactive_for,
            version,
        )
        return int(result.split()[-1])
    if trigger.event == VALUE_CROSSED:
        result = await conn.execute(
            "INSERT INTO contact_value_seen (workspace_id, contact_id, total_spent_minor,"
            " currency, seen_at)"
            " SELECT workspace_id, contact_id, total_spent_minor, currency, $2"
            " FROM contact_facts WHERE workspace_id = $1"
            " ON CONFLICT (workspace_id, contact_id) DO UPDATE SET"
            " total_spent_minor = EXCLUDED.total_spent_minor, currency = EXCLUDED.currency,"
            " seen_at = EXCLUDED.seen_at",
            workspace_id,
            now,
        )
        return int(result.split()[-1])
    return 0


async def schedule_dates_batch(
    conn: asyncpg.Connection,
    workspace_id: str,
    workflow_id: str,
    version: int,
    rows: Sequence[Mapping[str, Any]],
    now: datetime,
) -> int:
    """The date timers of ``rows`` (contact_facts rows, :data:`FACTS_COLUMNS`) for a just
    published or resumed workflow: a batch of the job :func:`schedule_workflow` leaves
    (services/triggers/runtime/schedules.py); how many were written."""
    definition = await _definition(conn, workspace_id, workflow_id, version)
    if definition is None or definition.trigger.event != DATE_REACHED:
        return 0
    workflow = PublishedWorkflow(workflow_id, version, "active", definition)
    timers, _ = _date_timers(workflow, ((r["contact_id"], _facts_of(r)) for r in rows), now)
    return await _put_date_timers(conn, workspace_id, workflow, timers)
