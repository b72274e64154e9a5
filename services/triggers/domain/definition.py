"""Reading, checking and writing workflow definitions ("nudge.workflow/v1"): what the API calls.

:func:`parse` turns the JSON a manager sends (or a template's dict) into a
:class:`~services.triggers.domain.model.Definition`, or raises :class:`DefinitionInvalid`
with EVERY problem found, each with the path of the offending field in the form the API
reports it (``definition.steps[2].then[0].duration``), so the console can point at the step.
Shape errors come from pydantic and are translated here into words a manager understands;
limits and rules that span fields (unique step ids, which trigger field fits which event,
which run variables a message may print) are checked after the shape is right.

:func:`warnings` lists what is publishable but worth a second look (a cart flow no order
ends), and :func:`export` writes the canonical JSON (stable key order, defaults left out),
so that workflows kept in a repository diff cleanly: ``parse(export(d)) == d``.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import time, timedelta
from typing import Any

from jinja2 import nodes
from pydantic import BaseModel, TypeAdapter, ValidationError

from services.common import templating
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
    HappenedSinceStart,
    HasTag,
    InSegment,
    Message,
    Not,
    Send,
    Step,
    Trigger,
    Wait,
    WaitUntil,
)

# Limits (docs/triggers.md, "Workflow format").
MAX_JSON_BYTES = 256 * 1024
MAX_BRANCH_DEPTH = 10  # branches inside branches
MAX_CONDITION_DEPTH = 10  # not/all/any inside each other
MAX_STEPS = 200  # steps in all, branches' steps included
MAX_NAME = 200
MAX_DESCRIPTION = 2_000
MAX_TAG = 64
MAX_DURATION = timedelta(days=365)
MAX_DAY_OFFSET = 7
MAX_SUBJECT = 255
MAX_BODY = 100_000
MAX_BODY_LINES = 4  # warning only: a triggered mail reads in a glance (seed 000)
# JSON nested deeper than this is refused before the models see it: the branch and
# condition limits above need far less, and pydantic should never recurse without bound.
_MAX_JSON_NESTING = 100

STEP_TYPES = ("wait", "wait_until", "branch", "send", "tag", "score", "exit")
CONDITION_TYPES = ("in_segment", "has_tag", "attribute", "happened", "all", "any", "not")

# What a run's `vars` hold, by trigger event (filled by the runtime from the trigger event;
# every value a string). A message may print only these as {{ vars.NAME }}.
_ORDER_VARS = ("order_id", "order_items", "order_total", "categories", "first_category")
_TRACKING_VARS = ("message_id", "url")
RUN_VARS: Mapping[str, tuple[str, ...]] = {
    "signed_up": (),
    "cart_updated": ("cart_id", "cart_url", "cart_items", "cart_total", "item_count"),
    "order_placed": _ORDER_VARS,
    "order_cancelled": (),
    "order_refunded": (),
    "page_viewed": ("product_id", "category", "url"),
    "searched": ("query",),
    "login_failed": ("reset_url",),
    "message_opened": _TRACKING_VARS,
    "link_clicked": _TRACKING_VARS,
    "segment_entered": ("segment_id",),
    "segment_exited": ("segment_id",),
    "date_reached": ("date_field", "years"),
    "value_crossed": ("total_spent", "threshold"),
    "inactive": ("days",),
}
CONTACT_FIELDS = ("first_name", "last_name", "email", "locale")
LINK_NAMES = ("preferences",)  # delivery adds the preferences link to automation mail

# A transactional mail skips consent and quiet hours, so it must be one the customer asked
# for by acting: the order's details (order placed, cancelled, refunded), help after a failed
# login, the account mail after signing up. A cart reminder is marketing, however useful.
TRANSACTIONAL_TRIGGERS = (
    "order_placed",
    "order_cancelled",
    "order_refunded",
    "login_failed",
    "signed_up",
)

# Which events carry which entry key (a run per cart, a run per order), for the entry key and
# for exit rules and conditions with same_key. An order also names the cart it came from, but
# an event's key (SeenEvent.key) is one id: an order's is its order id, so an order cannot
# end "its" cart's run by key (the abandoned cart ends on any order instead).
ENTRY_KEY_EVENTS: Mapping[str, tuple[str, ...]] = {
    "cart_id": ("cart_updated",),
    "order_id": ("order_placed", "order_cancelled", "order_refunded"),
}
KEY_CARRIERS = ENTRY_KEY_EVENTS

# Which filter field fits which event (EventFilter): an event without items has no count.
_ITEM_EVENTS = ("cart_updated", "order_placed")
FILTER_EVENTS: Mapping[str, tuple[str, ...]] = {
    "min_items": _ITEM_EVENTS,
    "max_items": _ITEM_EVENTS,
    "min_total_minor": _ITEM_EVENTS,
    "category": (*_ITEM_EVENTS, "page_viewed"),
    "product_id": (*_ITEM_EVENTS, "page_viewed"),
    "query_contains": ("searched",),
    "has_product": (*_ITEM_EVENTS, "page_viewed"),
}
# Triggers where a marketing mail at once would feel like being watched (warning).
_BROWSING_TRIGGERS = ("cart_updated", "page_viewed", "searched")
_DATE_FIELD = re.compile(r"^(birthday|signed_up_at|attributes\.[A-Za-z0-9_]{1,64})$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_DURATION_HELP = (
    'write it in ISO 8601: "PT3H" for 3 hours, "PT30M" for 30 minutes, "P1D" for one day'
)


@dataclass(frozen=True)
class Violation:
    """One problem of a definition: the field's path (``definition.steps[2].duration``) and
    what is wrong, in words for the manager who wrote it."""

    field: str
    description: str


class DefinitionInvalid(Exception):
    """The definition cannot be saved or published; ``violations`` lists every problem."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


# ---------------------------------------------------------------- parse


def parse(text: str | bytes | Mapping[str, Any]) -> Definition:
    """The definition in ``text`` (JSON text or an already decoded object), fully checked.

    Raises :class:`DefinitionInvalid` with every violation found; nothing is half-read."""
    doc = _decode(text)
    _check_nesting(doc)
    try:
        definition = Definition.model_validate(doc)
    except ValidationError as err:
        raise DefinitionInvalid(_shape_violations(err)) from None
    except RecursionError:
        raise DefinitionInvalid([Violation("definition", "nested too deeply")]) from None
    problems = validate(definition)
    if problems:
        raise DefinitionInvalid(problems)
    return definition


def _decode(text: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(text, Mapping):
        return text
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_JSON_BYTES:
        raise DefinitionInvalid(
            [Violation("definition", f"{size} bytes: a definition is at most {MAX_JSON_BYTES}")]
        )
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as err:
        raise DefinitionInvalid(
            [Violation("definition", f"the key {err.key!r} appears twice in one object")]
        ) from None
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise DefinitionInvalid(
            [Violation("definition", f"not valid JSON at {where}: {err.msg}")]
        ) from None
    except UnicodeDecodeError as err:
        raise DefinitionInvalid(
            [Violation("definition", f"not UTF-8 text (byte {err.start})")]
        ) from None
    except RecursionError:
        raise DefinitionInvalid([Violation("definition", "nested too deeply")]) from None
    if not isinstance(doc, dict):
        raise DefinitionInvalid(
            [Violation("definition", f"a JSON object is expected, not {_json_type(doc)}")]
        )
    return doc


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(key)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON allows a key twice and the last one wins: a definition edited by hand with two
    "duration"s would silently lose one, so it is refused instead."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _check_nesting(doc: object) -> None:
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > _MAX_JSON_NESTING:
            raise DefinitionInvalid(
                [Violation("definition", f"nested more than {_MAX_JSON_NESTING} levels deep")]
            )
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list | tuple):
            stack.extend((v, depth + 1) for v in value)


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else "an object"


def path(loc: Sequence[str | int]) -> str:
    """``("steps", 2, "then", 0)`` -> ``definition.steps[2].then[0]``."""
    out = "definition"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


_TAGS = frozenset(STEP_TYPES) | frozenset(CONDITION_TYPES)


def _clean_loc(loc: Sequence[str | int]) -> tuple[str | int, ...]:
    """Drop the discriminator segments pydantic adds for tagged unions: in
    ``('steps', 0, 'branch', 'else', 0, 'wait', 'duration')`` the 'branch' and 'wait' are the
    union member chosen, not fields. They follow a list index or a ``condition`` key."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if (
            isinstance(part, str)
            and part in _TAGS
            and i > 0
            and (isinstance(loc[i - 1], int) or loc[i - 1] == "condition")
        ):
            continue
        out.append(part)
    return tuple(out)


def _shape_violations(err: ValidationError) -> list[Violation]:
    errors = err.errors(include_url=False)
    locs = [_clean_loc(e["loc"]) for e in errors]
    found: dict[tuple[str, str], None] = {}
    for e, loc in zip(errors, locs, strict=True):
        if e["type"] == "too_short" and any(
            other != loc and other[: len(loc)] == loc for other in locs
        ):
            continue  # a list whose items failed is reported "too short" too: noise
        found[(path(loc), _describe(e, loc))] = None
    return [Violation(field, description) for field, description in found]


def _describe(error: Mapping[str, Any], loc: tuple[str | int, ...]) -> str:
    """Pydantic's error in words for a manager, where its own would be jargon."""
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    last = loc[-1] if loc else ""
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        what = "condition" if last == "condition" or _in_conditions(loc) else "step"
        allowed = ", ".join(CONDITION_TYPES if what == "condition" else STEP_TYPES)
        if kind == "union_tag_not_found":
            return f'the {what} has no "type": use one of {allowed}'
        return f"unknown {what} type {ctx.get('tag')!r}: use one of {allowed}"
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return f"unknown field {last!r} (not part of nudge.workflow/v1)"
    if kind.startswith("time_delta"):
        return f"not a duration: {_DURATION_HELP}"
    if kind.startswith("time_"):
        return 'not a time of day: write "HH:MM", e.g. "10:00"'
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "string_pattern_mismatch" and last == "id":
        return "a step id is 1 to 64 letters, digits, '_', '.' or '-'"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"at least {ctx.get('min_length')} item(s)"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be a whole number"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind == "string_type":
        return "must be a string"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be an object"
    if kind in ("tuple_type", "list_type"):
        return "must be a list"
    return str(error.get("msg", kind))


def _in_conditions(loc: tuple[str | int, ...]) -> bool:
    return len(loc) >= 2 and loc[-2] == "conditions"


# ---------------------------------------------------------------- rules over fields


def validate(definition: Definition) -> list[Violation]:
    """Every limit and cross-field rule the models alone do not check (empty: valid)."""
    out = _Checker(definition)
    out.run()
    return out.violations


class _Checker:
    def __init__(self, definition: Definition) -> None:
        self.d = definition
        self.violations: list[Violation] = []
        self.seen_ids: dict[str, str] = {}
        self.step_count = 0
        self.vars = RUN_VARS.get(definition.trigger.event, ())

    def bad(self, loc: Sequence[str | int], description: str) -> None:
        self.violations.append(Violation(path(loc), description))

    def run(self) -> None:
        d = self.d
        if not d.name.strip():
            self.bad(("name",), "must not be blank")
        if len(d.description) > MAX_DESCRIPTION:
            self.bad(("description",), f"at most {MAX_DESCRIPTION} characters")
        self.trigger(d.trigger)
        self.entry()
        for i, rule in enumerate(d.exit_on):
            self.event_filter(("exit_on", i, "filter"), rule.event, rule.filter)
            if rule.same_key:
                self.same_key(("exit_on", i, "same_key"), rule.event)
        if d.send_window.start == d.send_window.end:
            self.bad(("send_window",), "start and end are the same: the window would be empty")
        self.steps(("steps",), d.steps, depth=0)
        if self.step_count > MAX_STEPS:
            self.bad(("steps",), f"{self.step_count} steps in all: at most {MAX_STEPS}")

    # -- trigger and entry

    def trigger(self, t: Trigger) -> None:
        loc = ("trigger",)
        event = t.event
        default = Trigger(event=event)
        if event in ("segment_entered", "segment_exited"):
            if not (t.segment_id or "").strip():
                self.bad((*loc, "segment_id"), f"required for {event}: which segment")
        elif t.segment_id is not None:
            self.bad((*loc, "segment_id"), "only for segment_entered and segment_exited")
        if event == "date_reached":
            if t.date_field is None:
                self.bad(
                    (*loc, "date_field"),
                    'required for date_reached: "birthday", "signed_up_at" or "attributes.<name>"',
                )
            elif not _DATE_FIELD.match(t.date_field):
                self.bad(
                    (*loc, "date_field"),
                    f'{t.date_field!r} is not a date field: "birthday", "signed_up_at" or '
                    '"attributes.<name>"',
                )
        else:
            if t.date_field is not None:
                self.bad((*loc, "date_field"), "only for date_reached")
            if t.at != default.at:
                self.bad((*loc, "at"), "only for date_reached (the time of day it fires)")
        if event == "value_crossed":
            if t.threshold_minor is None or t.threshold_minor <= 0:
                self.bad(
                    (*loc, "threshold_minor"),
                    "required for value_crossed: a positive amount in minor units "
                    "(100000 is 1,000.00)",
                )
            if t.currency is None or not _CURRENCY.match(t.currency):
                self.bad((*loc, "currency"), 'a 3-letter ISO 4217 code in capitals, e.g. "EUR"')
        else:
            if t.threshold_minor is not None:
                self.bad((*loc, "threshold_minor"), "only for value_crossed")
            if t.currency is not None:
                self.bad((*loc, "currency"), "only for value_crossed")
        if event == "inactive":
            if t.inactive_for is None:
                self.bad((*loc, "inactive_for"), f"required for inactive: {_DURATION_HELP}")
            else:
                self.duration((*loc, "inactive_for"), t.inactive_for)
            if not t.activities:
                self.bad((*loc, "activities"), "at least one event that counts as activity")
        else:
            if t.inactive_for is not None:
                self.bad((*loc, "inactive_for"), "only for inactive")
            if t.activities != default.activities:
                self.bad((*loc, "activities"), "only for inactive")
        self.event_filter((*loc, "filter"), event, t.filter)

    def entry(self) -> None:
        e = self.d.entry
        loc = ("entry",)
        if e.concurrency == "per_key":
            if e.key is None:
                self.bad((*loc, "key"), 'required with concurrency "per_key": cart_id or order_id')
            elif self.d.trigger.event not in ENTRY_KEY_EVENTS[e.key]:
                events = " or ".join(ENTRY_KEY_EVENTS[e.key])
                self.bad(
                    (*loc, "key"),
                    f"{self.d.trigger.event} carries no {e.key}: only {events} does",
                )
        elif e.key is not None:
            self.bad((*loc, "key"), 'only with concurrency "per_key"')
        if e.concurrency == "unlimited" and e.on_retrigger == "restart":
            self.bad(
                (*loc, "on_retrigger"),
                'with concurrency "unlimited" every trigger starts its own run: nothing to restart',
            )
        if e.reentry_after is not None:
            self.duration((*loc, "reentry_after"), e.reentry_after)
            if e.reentry == "once":
                self.bad((*loc, "reentry_after"), 'not with reentry "once" (never again)')

    def same_key(self, loc: Sequence[str | int], event: str) -> None:
        key = self.d.entry.key if self.d.entry.concurrency == "per_key" else None
        if key is None:
            self.bad(loc, 'needs an entry key (entry.concurrency "per_key" with entry.key)')
        elif event not in KEY_CARRIERS[key]:
            self.bad(loc, f"{event} carries no {key}")

    def event_filter(self, loc: Sequence[str | int], event: str, flt: EventFilter) -> None:
        for name, events in FILTER_EVENTS.items():
            value = getattr(flt, name)
            if value is None or value is False:
                continue
            if event not in events:
                self.bad((*loc, name), f"not for {event}: only for {', '.join(events)}")
            elif isinstance(value, int) and not isinstance(value, bool) and value < 0:
                self.bad((*loc, name), "must not be negative")
            elif isinstance(value, str) and not value.strip():
                self.bad((*loc, name), "must not be blank")
        if (
            flt.min_items is not None
            and flt.max_items is not None
            and flt.min_items > flt.max_items
        ):
            self.bad((*loc, "max_items"), "smaller than min_items: nothing would match")

    def duration(self, loc: Sequence[str | int], value: timedelta) -> None:
        if value <= timedelta(0):
            self.bad(loc, f"must be longer than zero: {_DURATION_HELP}")
        elif value > MAX_DURATION:
            self.bad(loc, 'at most 365 days ("P365D")')

    # -- steps

    def steps(self, loc: tuple[str | int, ...], steps: Sequence[Step], depth: int) -> None:
        for i, step in enumerate(steps):
            self.step((*loc, i), step, depth)

    def step(self, loc: tuple[str | int, ...], step: Step, depth: int) -> None:
        self.step_count += 1
        where = path((*loc, "id"))
        first = self.seen_ids.setdefault(step.id, where)
        if first != where:
            self.bad((*loc, "id"), f"step id {step.id!r} is used twice (also at {first})")
        if len(step.name) > MAX_NAME:
            self.bad((*loc, "name"), f"at most {MAX_NAME} characters")
        match step:
            case Wait(duration=duration):
                self.duration((*loc, "duration"), duration)
            case WaitUntil(day_offset=day_offset):
                if not 0 <= day_offset <= MAX_DAY_OFFSET:
                    self.bad(
                        (*loc, "day_offset"),
                        f"0 (today, or tomorrow if the time has passed) to {MAX_DAY_OFFSET}",
                    )
            case Branch():
                if depth + 1 > MAX_BRANCH_DEPTH:
                    self.bad(loc, f"branches nested more than {MAX_BRANCH_DEPTH} deep")
                self.condition((*loc, "condition"), step.condition, 1)
                self.steps((*loc, "then"), step.then, depth + 1)
                self.steps((*loc, "else"), step.otherwise, depth + 1)
            case Send(message=message):
                self.message((*loc, "message"), message)
            case ChangeTags(add=add, remove=remove):
                if not add and not remove:
                    self.bad(loc, 'nothing to do: give "add" or "remove" (or both)')
                for field, tags in (("add", add), ("remove", remove)):
                    for j, tag in enumerate(tags):
                        self.tag((*loc, field, j), tag)
                for tag in sorted(set(add) & set(remove)):
                    self.bad((*loc, "remove"), f"{tag!r} is both added and removed")
            case ChangeScore(delta=delta):
                if delta == 0:
                    self.bad((*loc, "delta"), "must not be 0")

    def tag(self, loc: Sequence[str | int], tag: str) -> None:
        if not 1 <= len(tag) <= MAX_TAG or not tag.strip():
            self.bad(loc, f"a tag is 1 to {MAX_TAG} characters")

    def condition(self, loc: tuple[str | int, ...], condition: Condition, depth: int) -> None:
        if depth > MAX_CONDITION_DEPTH:
            self.bad(loc, f"conditions nested more than {MAX_CONDITION_DEPTH} deep")
            return
        match condition:
            case InSegment(segment_id=segment_id):
                if not segment_id.strip():
                    self.bad((*loc, "segment_id"), "must not be blank")
            case HasTag(tag=tag):
                self.tag((*loc, "tag"), tag)
            case AttributeIs(attribute=attribute, op=op, value=value):
                if not attribute.strip():
                    self.bad((*loc, "attribute"), "must not be blank")
                if op != "exists" and not value.strip():
                    self.bad((*loc, "value"), f'required with op "{op}": what to compare with')
            case HappenedSinceStart():
                self.event_filter((*loc, "filter"), condition.event, condition.filter)
                if condition.same_key:
                    self.same_key((*loc, "same_key"), condition.event)
            case AllOf(conditions=conditions) | AnyOf(conditions=conditions):
                if not conditions:
                    self.bad((*loc, "conditions"), "at least one condition")
                for i, inner in enumerate(conditions):
                    self.condition((*loc, "conditions", i), inner, depth + 1)
            case Not(condition=inner):
                self.condition((*loc, "condition"), inner, depth + 1)

    def message(self, loc: tuple[str | int, ...], m: Message) -> None:
        event = self.d.trigger.event
        if m.kind == "transactional" and event not in TRANSACTIONAL_TRIGGERS:
            self.bad(
                (*loc, "kind"),
                f"a mail started by {event} is marketing: transactional mail (which skips "
                "consent and quiet hours) is only for what the customer asked for, started "
                f"by {', '.join(TRANSACTIONAL_TRIGGERS)}",
            )
        if not m.subject.strip():
            self.bad((*loc, "subject"), "must not be empty")
        elif len(m.subject) > MAX_SUBJECT:
            self.bad((*loc, "subject"), f"at most {MAX_SUBJECT} characters")
        else:
            self.template((*loc, "subject"), m.subject, html=False)
        if not m.body_text.strip():
            self.bad((*loc, "body_text"), "must not be empty: every mail has a text body")
        elif len(m.body_text) > MAX_BODY:
            self.bad((*loc, "body_text"), f"at most {MAX_BODY:,} characters")
        else:
            self.template((*loc, "body_text"), m.body_text, html=False)
        if len(m.body_html) > MAX_BODY:
            self.bad((*loc, "body_html"), f"at most {MAX_BODY:,} characters")
        elif m.body_html:
            self.template((*loc, "body_html"), m.body_html, html=True)

    def template(self, loc: tuple[str | int, ...], source: str, *, html: bool) -> None:
        problem = template_problem(source, html=html, run_vars=self.vars)
        if problem:
            self.bad(loc, problem)


# ---------------------------------------------------------------- message templates


def referenced(tree: nodes.Template) -> list[tuple[str, str | None]]:
    """(root, attribute) of every name a parsed template reads that it does not define
    itself (``{{ vars.cart_url }}`` -> ("vars", "cart_url"); ``{{ x }}`` -> ("x", None))."""
    defined = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    defined |= {m.name for m in tree.find_all(nodes.Macro)}
    found: dict[tuple[str, str | None], None] = {}
    attribute_roots: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        root = getattr(node, "node", None)
        if not isinstance(root, nodes.Name) or root.name in defined:
            continue
        if isinstance(node, nodes.Getattr):
            found[(root.name, node.attr)] = None
        elif (
            isinstance(node, nodes.Getitem)
            and isinstance(node.arg, nodes.Const)
            and isinstance(node.arg.value, str)
        ):
            found[(root.name, node.arg.value)] = None
        else:
            continue  # vars[some_expression]: the name is only known when rendering
        attribute_roots.add(id(root))
    for name in tree.find_all(nodes.Name):
        if name.ctx == "load" and name.name not in defined and id(name) not in attribute_roots:
            found[(name.name, None)] = None
    return list(found)


def template_problem(source: str, *, html: bool, run_vars: Sequence[str]) -> str | None:
    """Why a message field cannot be sent by a workflow with these run vars, or None: it
    must compile in the delivery sandbox, name only what the mail will have, and render."""
    env = templating.environment(html)
    try:
        tree = env.parse(source)
        compiled = templating.compiled(source, html)
    except templating.TEMPLATE_ERRORS as err:
        return f"not a valid template: {_template_error(err)}"
    unknown: list[str] = []
    for root, attribute in referenced(tree):
        if root in env.globals:
            continue
        allowed = {
            "contact": CONTACT_FIELDS,
            "workspace": ("name",),
            "links": LINK_NAMES,
            "vars": tuple(run_vars),
        }.get(root)
        if allowed is None:
            unknown.append(f"{root!r} does not exist: use contact, workspace or vars")
        elif attribute is None:
            continue  # {{ contact }} alone, or the root of a subscript seen on its own
        elif attribute not in allowed:
            if root == "vars":
                have = ", ".join(f"vars.{v}" for v in run_vars) or "none"
                unknown.append(f"vars.{attribute} is not set by this trigger (it sets {have})")
            else:
                names = ", ".join(f"{root}.{a}" for a in allowed)
                unknown.append(f"{root}.{attribute} does not exist (there is {names})")
    if unknown:
        return "; ".join(unknown)
    try:
        templating.render(compiled, sample_context(run_vars))
    except templating.TEMPLATE_ERRORS as err:
        return f"fails to render: {_template_error(err)}"
    return None


def sample_context(run_vars: Sequence[str]) -> dict[str, Any]:
    """A context as delivery builds it, every value filled, for a trial render."""
    return {
        "contact": {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "email": "ada@example.com",
            "locale": "en",
        },
        "workspace": {"name": "Workspace"},
        "vars": {name: "1" for name in run_vars},
        "links": {"preferences": "https://example.com/preferences"},
    }


def _template_error(err: BaseException) -> str:
    if isinstance(err, RecursionError):
        return "too deeply nested or recursive"
    return f"{type(err).__name__}: {err}"[:300]


# ---------------------------------------------------------------- warnings


def warnings(definition: Definition) -> list[Violation]:
    """What is publishable but worth a look before publishing (domain advice)."""
    found: list[Violation] = []
    event = definition.trigger.event
    if event == "cart_updated" and not any(r.event == "order_placed" for r in definition.exit_on):
        found.append(
            Violation(
                path(("exit_on",)),
                "no exit rule on order_placed: a customer who orders would still get the "
                "cart reminders",
            )
        )
    if event in _BROWSING_TRIGGERS:
        for loc, step in _before_first_wait(("steps",), definition.steps):
            if isinstance(step, Send) and step.message.kind == "marketing":
                found.append(
                    Violation(
                        path(loc),
                        f"a marketing mail at once after {event} feels like being watched: "
                        'add a wait before it (e.g. "PT3H")',
                    )
                )
    for loc, step in _walk(("steps",), definition.steps):
        if not isinstance(step, Send):
            continue
        m = step.message
        if ("workspace", "name") not in _references(m.subject):
            found.append(
                Violation(
                    path((*loc, "message", "subject")),
                    "the subject does not name the shop: add {{ workspace.name }} so the "
                    "customer knows who writes",
                )
            )
        lines = [line for line in m.body_text.splitlines() if line.strip()]
        if len(lines) > MAX_BODY_LINES:
            found.append(
                Violation(
                    path((*loc, "message", "body_text")),
                    f"{len(lines)} lines of text: a triggered mail reads best in at most "
                    f"{MAX_BODY_LINES}",
                )
            )
    found.extend(_tags_read_late(definition))
    return found


def _tags_read_late(definition: Definition) -> Iterator[Violation]:
    """A tag step after a marketing mail changes the tag only once that mail went out, and
    the mail may wait for the send window (all night). Meanwhile another run of the same
    workflow (the customer's next order at 23:00) reads the old tags in its conditions and
    takes the wrong branch: seed 002's first/second/later purchases did, until its
    template changed the tags before the thank-you."""
    window = definition.send_window
    read = {c.tag for c in _conditions(definition.steps) if isinstance(c, HasTag)}
    if not read:
        return

    def walk(
        loc: tuple[str | int, ...], steps: Sequence[Step], after: bool
    ) -> Iterator[tuple[tuple[str | int, ...], ChangeTags]]:
        for i, step in enumerate(steps):
            if isinstance(step, ChangeTags) and after:
                yield (*loc, i), step
            elif isinstance(step, Branch):
                yield from walk((*loc, i, "then"), step.then, after)
                yield from walk((*loc, i, "else"), step.otherwise, after)
            after = after or any(_waits_for_window(s) for _, s in _walk((), [step]))

    for loc, step in walk(("steps",), definition.steps, False):
        late = sorted(read & {*step.add, *step.remove})
        if late:
            names = ", ".join(f"'{t}'" for t in late)
            yield Violation(
                path(loc),
                f"changes {names}, which this workflow's conditions read, only after a "
                "marketing mail that may wait for the send window (until "
                f"{window.start:%H:%M}): a run started meanwhile (the next order) reads the "
                "old tags. Change the tags before the send",
            )


def _waits_for_window(step: Step) -> bool:
    if not isinstance(step, Send):
        return False
    return step.message.kind == "marketing" and step.message.respect_send_window


def _conditions(steps: Sequence[Step]) -> Iterator[Condition]:
    """Every condition of every branch, nested conditions included."""
    for _, step in _walk((), steps):
        if isinstance(step, Branch):
            pending: list[Condition] = [step.condition]
            while pending:
                cond = pending.pop()
                yield cond
                if isinstance(cond, AllOf | AnyOf):
                    pending.extend(cond.conditions)
                elif isinstance(cond, Not):
                    pending.append(cond.condition)


def _references(source: str) -> set[tuple[str, str | None]]:
    try:
        return set(referenced(templating.environment(False).parse(source)))
    except templating.TEMPLATE_ERRORS:
        return set()


def _walk(
    loc: tuple[str | int, ...], steps: Sequence[Step]
) -> Iterator[tuple[tuple[str | int, ...], Step]]:
    for i, step in enumerate(steps):
        yield (*loc, i), step
        if isinstance(step, Branch):
            yield from _walk((*loc, i, "then"), step.then)
            yield from _walk((*loc, i, "else"), step.otherwise)


def _before_first_wait(
    loc: tuple[str | int, ...], steps: Sequence[Step]
) -> Iterator[tuple[tuple[str | int, ...], Step]]:
    """Steps a run can reach at once, before any wait (branches' arms included). Stops at
    the first wait of this list, or after a branch both of whose arms wait."""
    for i, step in enumerate(steps):
        if isinstance(step, Wait | WaitUntil):
            return
        yield (*loc, i), step
        if isinstance(step, Branch):
            arms = [((*loc, i, "then"), step.then), ((*loc, i, "else"), step.otherwise)]
            waits = True
            for arm_loc, arm in arms:
                yield from _before_first_wait(arm_loc, arm)
                waits = waits and any(isinstance(s, Wait | WaitUntil) for s in arm)
            if waits:
                return


# ---------------------------------------------------------------- export


_TIMEDELTA = TypeAdapter(timedelta)


def export(definition: Definition) -> str:
    """The canonical JSON of ``definition``: "format" first, then the fields in the order of
    the format; a step's "id" and "type" first; fields at their default left out (except
    "format" and "type", which say what the object is); durations in ISO 8601 ("PT3H"),
    times "HH:MM"; two-space indent and a trailing newline. Two exports of equal
    definitions are equal texts, so a repository's diff shows only real changes."""
    return json.dumps(_canonical(definition), indent=2, ensure_ascii=False) + "\n"


def _canonical(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = type(model).model_fields
    order = [n for n in ("id", "type") if n in fields]
    order += [n for n in fields if n not in order]
    for name in order:
        info = fields[name]
        value = getattr(model, name)
        at_default = not info.is_required() and value == info.get_default(call_default_factory=True)
        if at_default and name not in ("format", "type"):
            continue
        out[info.alias or name] = _value(value)
    return out


def _value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _canonical(value)
    if isinstance(value, tuple | list):
        return [_value(v) for v in value]
    if isinstance(value, timedelta):
        return _TIMEDELTA.dump_python(value, mode="json")
    if isinstance(value, time):
        return (
            value.strftime("%H:%M")
            if value == value.replace(second=0, microsecond=0)
            else value.isoformat()
        )
    return value


__all__ = [
    "MAX_JSON_BYTES",
    "RUN_VARS",
    "TRANSACTIONAL_TRIGGERS",
    "DefinitionInvalid",
    "Violation",
    "export",
    "parse",
    "path",
    "template_problem",
    "validate",
    "warnings",
]
