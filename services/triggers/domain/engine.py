"""The interpreter: from where a run stands, what it does now and when it wakes next.

Pure: given a compiled workflow (:class:`Program`), a run's state, what is known of the
contact (:class:`Facts`) and the time, :func:`advance` walks the steps until the run has to
sleep (a wait, a send window) or ends, and returns the effects to write (mails, tag and
score commands) with the steps taken. The runtime applies an :class:`Advance` in one
transaction with whatever woke the run (the event, or the claimed timer), so a crash
between two steps replays the same walk to the same effects: every effect carries a
deterministic id (run id + step id + iteration) that delivery and contacts deduplicate.

``position`` is the id of the NEXT step to run: a run asleep after its 3-hour wait has
``position == "reminder"`` and ``wake_at`` three hours on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.common.events import deterministic_id
from services.triggers.domain.model import (
    AllOf,
    AnyOf,
    AttributeIs,
    Branch,
    ChangeScore,
    ChangeTags,
    Condition,
    Definition,
    EventFilter,
    ExitStep,
    HappenedSinceStart,
    HasTag,
    InSegment,
    Message,
    Not,
    Send,
    SendWindow,
    Step,
    Wait,
    WaitUntil,
)


@dataclass(frozen=True)
class SeenEvent:
    """One event of the contact, as exit rules, filters and conditions look at it."""

    event: str  # an EventName
    occurred_at: datetime
    key: str = ""  # cart or order id
    items: int = 0
    total_minor: int = 0
    categories: tuple[str, ...] = ()
    product_ids: tuple[str, ...] = ()
    query: str = ""
    segment_id: str = ""


def matches(flt: EventFilter, event: SeenEvent) -> bool:
    """Does ``event`` satisfy every field given in ``flt``?"""
    if flt.min_items is not None and event.items < flt.min_items:
        return False
    if flt.max_items is not None and event.items > flt.max_items:
        return False
    if flt.category is not None and flt.category not in event.categories:
        return False
    if flt.product_id is not None and flt.product_id not in event.product_ids:
        return False
    if flt.min_total_minor is not None and event.total_minor < flt.min_total_minor:
        return False
    if flt.has_product and not event.product_ids:
        return False
    return flt.query_contains is None or flt.query_contains.casefold() in event.query.casefold()


@dataclass(frozen=True)
class Facts:
    """What the runtime knows of the contact when the run advances."""

    tags: frozenset[str] = frozenset()
    attributes: Mapping[str, str] = field(default_factory=dict)
    segments: frozenset[str] = frozenset()
    time_zone: str = ""  # IANA; empty or unknown: UTC
    # A marketing mail now would exceed the workspace's frequency cap.
    frequency_capped: bool = False
    # The contact's events since the run began, oldest first (for `happened` conditions).
    events_since_start: tuple[SeenEvent, ...] = ()
    # Step ids this contact went through in EARLIER runs of the same workflow (Step.repeat).
    done_in_earlier_runs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RunState:
    run_id: str
    workspace_id: str
    contact_id: str
    started_at: datetime
    position: str | None  # the next step to run; None before the first
    executed: Mapping[str, int] = field(default_factory=dict)  # step id -> times run
    key: str = ""  # the entry key (cart id)
    test: bool = False  # a test run: no waits, no send window, no cap; mail goes to the manager


@dataclass(frozen=True)
class SendMail:
    step_id: str
    iteration: int
    message_id: str
    message: Message


@dataclass(frozen=True)
class ModifyTags:
    step_id: str
    iteration: int
    command_id: str
    add: tuple[str, ...]
    remove: tuple[str, ...]


@dataclass(frozen=True)
class AdjustScore:
    step_id: str
    iteration: int
    command_id: str
    delta: int


Effect = SendMail | ModifyTags | AdjustScore


@dataclass(frozen=True)
class StepTaken:
    """A row of run_steps: ``outcome`` is done, yes, no, or skipped:<why>."""

    step_id: str
    iteration: int
    outcome: str


@dataclass(frozen=True)
class Advance:
    effects: tuple[Effect, ...]
    steps: tuple[StepTaken, ...]
    position: str | None
    executed: Mapping[str, int]
    wake_at: datetime | None  # set while the run goes on
    end_reason: str | None  # None: the run goes on; else "completed", "exit_step", "not_repeated"


@dataclass(frozen=True)
class Program:
    """A definition with its steps indexed: step id -> (step, id of the step after it)."""

    definition: Definition
    first: str
    steps: Mapping[str, tuple[Step, str | None]]


def compile_definition(definition: Definition) -> Program:
    """Index the step tree. Step ids are unique (checked by definition.validate)."""
    index: dict[str, tuple[Step, str | None]] = {}

    def walk(steps: tuple[Step, ...], after: str | None) -> None:
        for i, step in enumerate(steps):
            nxt = steps[i + 1].id if i + 1 < len(steps) else after
            index[step.id] = (step, nxt)
            if isinstance(step, Branch):
                walk(step.then, nxt)
                walk(step.otherwise, nxt)

    walk(definition.steps, None)
    return Program(definition=definition, first=definition.steps[0].id, steps=index)


def zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def next_local_time(now: datetime, at: time, tz: tzinfo, day_offset: int = 0) -> datetime:
    """The first moment at wall-clock ``at`` in ``tz`` that is ``day_offset`` days on (0:
    today if still ahead, else tomorrow), in UTC."""
    local_now = now.astimezone(tz)
    day = local_now.date() + timedelta(days=day_offset)
    candidate = datetime.combine(day, at, tzinfo=tz)
    if day_offset == 0 and candidate <= local_now:
        candidate = datetime.combine(day + timedelta(days=1), at, tzinfo=tz)
    return candidate.astimezone(UTC)


def in_window(now: datetime, window: SendWindow, tz: tzinfo) -> bool:
    t = now.astimezone(tz).time()
    if window.start <= window.end:
        return window.start <= t < window.end
    return t >= window.start or t < window.end  # a window across midnight


def holds(condition: Condition, state: RunState, facts: Facts) -> bool:
    match condition:
        case InSegment(segment_id=segment_id):
            return segment_id in facts.segments
        case HasTag(tag=tag):
            return tag in facts.tags
        case AttributeIs():
            return _attribute_holds(condition, facts.attributes.get(condition.attribute))
        case HappenedSinceStart():
            return any(
                e.event == condition.event
                and e.occurred_at >= state.started_at
                and matches(condition.filter, e)
                and (not condition.same_key or e.key == state.key)
                for e in facts.events_since_start
            )
        case AllOf(conditions=conditions):
            return all(holds(c, state, facts) for c in conditions)
        case AnyOf(conditions=conditions):
            return any(holds(c, state, facts) for c in conditions)
        case Not(condition=inner):
            return not holds(inner, state, facts)
    raise AssertionError(f"unknown condition {condition!r}")


def _attribute_holds(condition: AttributeIs, value: str | None) -> bool:
    if condition.op == "exists":
        return bool(value)
    if value is None:
        return condition.op == "ne"
    if condition.op == "eq":
        return value.casefold() == condition.value.casefold()
    if condition.op == "ne":
        return value.casefold() != condition.value.casefold()
    if condition.op == "contains":
        return condition.value.casefold() in value.casefold()
    try:  # gt, gte, lt, lte compare numbers, else ISO dates/text
        left: float | str = float(value)
        right: float | str = float(condition.value)
    except ValueError:
        left, right = value, condition.value
    return {
        "gt": left > right,  # type: ignore[operator]
        "gte": left >= right,  # type: ignore[operator]
        "lt": left < right,  # type: ignore[operator]
        "lte": left <= right,  # type: ignore[operator]
    }[condition.op]


def effect_id(state: RunState, step_id: str, iteration: int) -> str:
    return deterministic_id(
        "workflow-step", state.workspace_id, state.run_id, step_id, str(iteration)
    )


# No definition has loops, so a walk ends within the number of steps; this guards the rest.
MAX_STEPS_PER_ADVANCE = 1_000


def advance(program: Program, state: RunState, facts: Facts, now: datetime) -> Advance:
    """Walk from ``state.position`` until the run sleeps or ends."""
    position: str | None = state.position or program.first
    executed = dict(state.executed)
    effects: list[Effect] = []
    taken: list[StepTaken] = []
    tz = zone(facts.time_zone)
    definition = program.definition

    def result(wake_at: datetime | None, end_reason: str | None, at: str | None) -> Advance:
        return Advance(tuple(effects), tuple(taken), at, executed, wake_at, end_reason)

    for _ in range(MAX_STEPS_PER_ADVANCE):
        if position is None:
            return result(None, "completed", None)
        step, nxt = program.steps[position]
        iteration = executed.get(step.id, 0)
        if not step.repeat and step.id in facts.done_in_earlier_runs and not state.test:
            taken.append(StepTaken(step.id, iteration, "skipped:not_repeated"))
            return result(None, "not_repeated", None)
        wake_at: datetime | None = None
        outcome = "done"
        match step:
            case Wait(duration=duration):
                wake_at = None if state.test else now + duration
            case WaitUntil(at=at, day_offset=day_offset):
                wake_at = None if state.test else next_local_time(now, at, tz, day_offset)
            case Branch():
                yes = holds(step.condition, state, facts)
                outcome = "yes" if yes else "no"
                chosen = step.then if yes else step.otherwise
                if chosen:
                    nxt = chosen[0].id
            case Send(message=message):
                marketing = message.kind == "marketing" and not state.test
                held = marketing and message.respect_send_window
                if held and not in_window(now, definition.send_window, tz):
                    # Hold at this step until the window opens in the contact's time zone.
                    start = next_local_time(now, definition.send_window.start, tz)
                    return result(start, None, step.id)
                if marketing and message.respect_frequency_cap and facts.frequency_capped:
                    outcome = "skipped:frequency_cap"
                else:
                    effects.append(
                        SendMail(step.id, iteration, effect_id(state, step.id, iteration), message)
                    )
            case ChangeTags(add=add, remove=remove):
                cid = effect_id(state, step.id, iteration)
                effects.append(ModifyTags(step.id, iteration, cid, add, remove))
            case ChangeScore(delta=delta):
                cid = effect_id(state, step.id, iteration)
                effects.append(AdjustScore(step.id, iteration, cid, delta))
            case ExitStep():
                taken.append(StepTaken(step.id, iteration, "done"))
                executed[step.id] = iteration + 1
                return result(None, "exit_step", None)
        taken.append(StepTaken(step.id, iteration, outcome))
        executed[step.id] = iteration + 1
        position = nxt
        if wake_at is not None:
            if position is None:  # a trailing wait: nothing after it, the run is over
                return result(None, "completed", None)
            return result(wake_at, None, position)
    raise RuntimeError(f"run {state.run_id} took more than {MAX_STEPS_PER_ADVANCE} steps")
