"""The segment rule language: a JSON document, validated into an immutable tree (:data:`Node`).

Pure (no I/O). The language is documented in docs/segment-rules.md; this module is its one
validator. A document is checked completely before anything uses it: every violation is
collected with the path of the node at fault (``rule.all[1].value``) so that a manager sees
all of them at once, and the tree it returns holds only typed, bounded values, so the SQL
compiler (:mod:`services.segmentation.adapters.rule_sql`) and the evaluator
(:mod:`services.segmentation.domain.evaluate`) never see raw input.

References to other segments are inlined here (``resolve`` gives a custom segment's
document; built-ins resolve by themselves), so a rule is evaluated as one tree at one
evaluation time, and a cycle is refused before anything runs it.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Final

# -- limits (docs/segment-rules.md, "Limits") --------------------------------------------------
MAX_TEXT_BYTES: Final = 64 * 1024
MAX_DEPTH: Final = 10
MAX_DEPTH_INLINED: Final = 20
MAX_NODES: Final = 200
MAX_NODES_INLINED: Final = 500
MAX_CHILDREN: Final = 50
MAX_STRING: Final = 500
MAX_LIST: Final = 100
MAX_INT: Final = 2**53 - 1
MAX_DECIMAL_DIGITS: Final = 15  # significant digits: a double holds them exactly (JSON, Struct)
MAX_DECIMAL_EXPONENT: Final = 30  # |value| < 1e31 and no finer than 1e-30
MAX_DURATION: Final = {"days": 36500, "months": 1200, "hours": 876000}

# -- vocabulary --------------------------------------------------------------------------------
STRING, NUMBER, BOOLEAN, TIME, DATE = "string", "number", "boolean", "time", "date"

FIELDS: Final[dict[str, str]] = {
    "email": STRING,
    "first_name": STRING,
    "last_name": STRING,
    "vip": BOOLEAN,
    "score": NUMBER,
    "suppressed": BOOLEAN,
    "signed_up_at": TIME,
    "created_at": TIME,
    "orders": NUMBER,
    "first_order_at": TIME,
    "last_order_at": TIME,
    "total_spent": NUMBER,
    "average_order_value": NUMBER,
    "last_visit_at": TIME,
    "last_open_at": TIME,
    "last_click_at": TIME,
    "cart_value": NUMBER,
    "cart_items": NUMBER,
    "cart_updated_at": TIME,
}
CURRENCY_FIELDS: Final = frozenset({"total_spent", "average_order_value", "cart_value"})

PRESENCE_OPS: Final = ("exists", "not_exists")
OPS: Final[dict[str, tuple[str, ...]]] = {
    NUMBER: ("eq", "ne", "lt", "lte", "gt", "gte", "between", "in", "not_in", *PRESENCE_OPS),
    STRING: (
        "eq",
        "ne",
        "in",
        "not_in",
        "starts_with",
        "contains",
        "ci_eq",
        "ci_contains",
        "ci_starts_with",
        *PRESENCE_OPS,
    ),
    BOOLEAN: ("eq", *PRESENCE_OPS),
    TIME: ("lt", "lte", "gt", "gte", "between", *PRESENCE_OPS),
    DATE: ("eq", "ne", "lt", "lte", "gt", "gte", "between", *PRESENCE_OPS),
}
COUNT_OPS: Final = ("eq", "ne", "lt", "lte", "gt", "gte", "between", "in", "not_in")
CONSENT_PURPOSES: Final = ("marketing", "targeted_messages", "automations", "transactional")
EVENT_WHERE: Final[dict[str, tuple[str, ...]]] = {
    "order": ("category", "min_total_minor", "currency"),
    "page_view": ("category",),
    "search": ("query",),
    "open": (),
    "click": ("url_prefix",),
}
NODE_KINDS: Final = (
    "all",
    "any",
    "not",
    "field",
    "attribute",
    "tag",
    "consent",
    "events",
    "segment",
)
NODE_KEYS: Final[dict[str, frozenset[str]]] = {
    "all": frozenset({"all"}),
    "any": frozenset({"any"}),
    "not": frozenset({"not"}),
    "field": frozenset({"field", "op", "value", "currency"}),
    "attribute": frozenset({"attribute", "op", "value"}),
    "tag": frozenset({"tag"}),
    "consent": frozenset({"consent"}),
    "events": frozenset({"events", "within", "count", "where"}),
    "segment": frozenset({"segment"}),
}

ATTRIBUTE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
TAG = re.compile(r"[a-z0-9_:-]{1,64}")
CURRENCY = re.compile(r"[A-Z]{3}")
SEGMENT_ID = re.compile(r"[A-Za-z0-9_:.-]{1,100}")
INSTANT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


# -- the tree ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Duration:
    """``{"days": N}``: days are 24 hours, months calendar months on UTC wall time."""

    unit: str  # "days" | "hours" | "months"
    n: int


@dataclass(frozen=True)
class Ago:
    """A relative instant: the evaluation time less ``duration``."""

    duration: Duration


Number = int | Decimal
Scalar = str | int | Decimal | bool | date | datetime | Ago
Value = Scalar | tuple[Scalar, ...] | None


def pair(value: Value) -> tuple[Scalar, Scalar]:
    """The (low, high) of a ``between``."""
    assert isinstance(value, tuple) and len(value) == 2
    return value[0], value[1]


def items(value: Value) -> tuple[Scalar, ...]:
    """The values of an ``in``/``not_in``."""
    assert isinstance(value, tuple)
    return value


@dataclass(frozen=True)
class AllOf:
    path: str
    children: tuple[Node, ...]


@dataclass(frozen=True)
class AnyOf:
    path: str
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    path: str
    child: Node


@dataclass(frozen=True)
class Compare:
    """A profile field (``source == "field"``) or custom attribute compared with a value.

    ``type`` is the field's type, or for an attribute the type the value's JSON type chose.
    ``value``: None (exists/not_exists), a scalar, or a tuple (between: (lo, hi); in/not_in).
    """

    path: str
    source: str  # "field" | "attribute"
    name: str
    type: str
    op: str
    value: Value
    currency: str | None = None


@dataclass(frozen=True)
class Tag:
    path: str
    tag: str


@dataclass(frozen=True)
class Consent:
    path: str
    purpose: str


@dataclass(frozen=True)
class Events:
    path: str
    kind: str  # order | page_view | search | open | click
    within: Duration | None
    count_op: str
    count_value: Number | tuple[Number, ...]
    where: tuple[tuple[str, str | int], ...] = ()  # sorted (key, value)

    def where_value(self, key: str) -> str | int | None:
        return dict(self.where).get(key)


@dataclass(frozen=True)
class SegmentRef:
    path: str
    segment_id: str
    node: Node  # the referenced segment's rule, inlined


Node = AllOf | AnyOf | Not | Compare | Tag | Consent | Events | SegmentRef


class RuleError(Exception):
    """A rule refused: ``violations`` lists (path, message), every one found."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{p}: {m}" for p, m in violations))


Resolve = Callable[[str], object | None]


# -- parsing -----------------------------------------------------------------------------------
@dataclass
class _Context:
    resolve: Resolve | None
    violations: list[tuple[str, str]] = field(default_factory=list)
    own_nodes: int = 0
    all_nodes: int = 0
    stack: tuple[str, ...] = ()  # segment ids being inlined, outermost first
    inlined: int = 0  # > 0 while inside a referenced segment

    def fail(self, path: str, message: str) -> None:
        self.violations.append((path, message))


class _Refused(Exception):
    """Stops the walk of a subtree after a violation that makes the rest meaningless."""


class _Abort(Exception):
    """Stops the whole walk: a limit of the whole rule (nodes) is passed."""


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _show(value: object) -> str:
    """A short, printable rendering of input for a message (never trusted, never long)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_string(ctx: _Context, value: object, path: str, what: str = "a string") -> str:
    if not isinstance(value, str):
        ctx.fail(path, f"must be {what}, not {_type_name(value)}")
        raise _Refused
    if len(value) > MAX_STRING:
        ctx.fail(path, f"is longer than {MAX_STRING} characters")
        raise _Refused
    if "\x00" in value:
        ctx.fail(path, "must not contain the NUL character")
        raise _Refused
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        ctx.fail(path, "must be valid Unicode (a lone surrogate is not)")
        raise _Refused from None
    return value


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _number(ctx: _Context, value: object, path: str) -> Number:
    """A JSON number as an exact int or Decimal (a bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        ctx.fail(path, f"must be a number, not {_type_name(value)}")
        raise _Refused
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            ctx.fail(path, f"must be an integer within +-{MAX_INT} (2^53-1)")
            raise _Refused
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            ctx.fail(path, "must be a finite number")
            raise _Refused
        value = Decimal(repr(value))
    if not value.is_finite():
        ctx.fail(path, "must be a finite number")
        raise _Refused
    if value == value.to_integral_value():
        as_int = int(value)
        if abs(as_int) > MAX_INT:
            ctx.fail(path, f"must be an integer within +-{MAX_INT} (2^53-1)")
            raise _Refused
        return as_int
    digits = value.normalize().as_tuple()
    exponent = int(digits.exponent)
    if len(digits.digits) > MAX_DECIMAL_DIGITS or not (
        exponent >= -MAX_DECIMAL_EXPONENT and exponent + len(digits.digits) <= MAX_DECIMAL_EXPONENT
    ):
        ctx.fail(
            path,
            f"must have at most {MAX_DECIMAL_DIGITS} significant digits, between 1e-"
            f"{MAX_DECIMAL_EXPONENT} and 1e{MAX_DECIMAL_EXPONENT}",
        )
        raise _Refused
    return value.normalize()


def _int(ctx: _Context, value: object, path: str, lo: int, hi: int) -> int:
    n = _number(ctx, value, path)
    if not isinstance(n, int):
        ctx.fail(path, "must be an integer")
        raise _Refused
    if not lo <= n <= hi:
        ctx.fail(path, f"must be between {lo} and {hi}")
        raise _Refused
    return n


def _duration(ctx: _Context, value: object, path: str) -> Duration:
    if not isinstance(value, dict) or len(value) != 1:
        ctx.fail(
            path, 'must be an object with one unit: {"days": N}, {"hours": N} or {"months": N}'
        )
        raise _Refused
    ((unit, n),) = value.items()
    if unit not in MAX_DURATION:
        ctx.fail(path, f"unknown unit {_show(unit)}{_suggest(str(unit), list(MAX_DURATION))}")
        raise _Refused
    return Duration(unit, _int(ctx, n, f"{path}.{unit}", 0, MAX_DURATION[unit]))


def _instant(ctx: _Context, value: object, path: str) -> datetime | Ago:
    if isinstance(value, dict):
        if set(value) != {"ago"}:
            ctx.fail(path, 'must be an RFC 3339 instant or {"ago": {"days": N}}')
            raise _Refused
        return Ago(_duration(ctx, value["ago"], f"{path}.ago"))
    text = _check_string(ctx, value, path, 'an RFC 3339 instant or {"ago": {...}}')
    if not INSTANT.fullmatch(text):
        ctx.fail(path, "must be an RFC 3339 instant with an offset, e.g. 2026-01-01T00:00:00Z")
        raise _Refused
    try:
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):
        ctx.fail(path, "is not a valid instant")
        raise _Refused from None


def _date(ctx: _Context, value: object, path: str) -> date:
    if not isinstance(value, dict) or set(value) != {"date"}:
        ctx.fail(path, 'must be {"date": "YYYY-MM-DD"}')
        raise _Refused
    text = _check_string(ctx, value["date"], f"{path}.date")
    if not ISO_DATE.fullmatch(text):
        ctx.fail(f"{path}.date", "must be a date YYYY-MM-DD")
        raise _Refused
    try:
        return date.fromisoformat(text)
    except ValueError:
        ctx.fail(f"{path}.date", "is not a valid date")
        raise _Refused from None


def _scalar(ctx: _Context, type_: str, value: object, path: str) -> Scalar:
    if type_ == NUMBER:
        return _number(ctx, value, path)
    if type_ == STRING:
        return _check_string(ctx, value, path)
    if type_ == BOOLEAN:
        if not isinstance(value, bool):
            ctx.fail(path, f"must be true or false, not {_type_name(value)}")
            raise _Refused
        return value
    if type_ == TIME:
        return _instant(ctx, value, path)
    return _date(ctx, value, path)


def _operand(ctx: _Context, type_: str, op: str, value: object, path: str) -> Value:
    """The value of a comparison, shaped by its operator."""
    if op in PRESENCE_OPS:
        if value is not None:
            ctx.fail(path, f"{op!r} takes no value")
            raise _Refused
        return None
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            ctx.fail(path, "must be a list [low, high] for 'between'")
            raise _Refused
        lo = _scalar(ctx, type_, value[0], f"{path}[0]")
        hi = _scalar(ctx, type_, value[1], f"{path}[1]")
        if not isinstance(lo, Ago) and not isinstance(hi, Ago) and lo > hi:  # type: ignore[operator]
            ctx.fail(path, "low must not be above high")
            raise _Refused
        return (lo, hi)
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_LIST:
            ctx.fail(path, f"must be a list of 1 to {MAX_LIST} values for {op!r}")
            raise _Refused
        items = tuple(_scalar(ctx, type_, v, f"{path}[{i}]") for i, v in enumerate(value))
        return tuple(dict.fromkeys(items))  # duplicates change nothing
    if value is None:
        ctx.fail(path, f"is required for {op!r}")
        raise _Refused
    return _scalar(ctx, type_, value, path)


def _keys(ctx: _Context, doc: dict[str, object], kind: str, path: str) -> None:
    extra = sorted(set(doc) - NODE_KEYS[kind])
    for key in extra:
        ctx.fail(
            f"{path}.{key}",
            f"unknown key {_show(key)} in a {kind!r} node{_suggest(key, sorted(NODE_KEYS[kind]))}",
        )
    if extra:
        raise _Refused


def _op(ctx: _Context, doc: dict[str, object], type_: str, path: str) -> str:
    op = doc.get("op")
    if op is None:
        ctx.fail(f"{path}.op", "is required")
        raise _Refused
    if not isinstance(op, str) or op not in OPS[type_]:
        shown = _show(op) if isinstance(op, str) else _type_name(op)
        ctx.fail(
            f"{path}.op",
            f"unknown operator {shown} for a {type_} (one of {', '.join(OPS[type_])})"
            + (_suggest(op, OPS[type_]) if isinstance(op, str) else ""),
        )
        raise _Refused
    return op


def _walk(ctx: _Context, doc: object, path: str, depth: int) -> Node:
    limit = MAX_DEPTH_INLINED if ctx.inlined else MAX_DEPTH
    if depth > limit:
        ctx.fail(path, f"the rule is nested deeper than {limit} levels")
        raise _Refused
    ctx.all_nodes += 1
    if not ctx.inlined:
        ctx.own_nodes += 1
        if ctx.own_nodes > MAX_NODES:
            ctx.fail(path, f"the rule has more than {MAX_NODES} nodes")
            raise _Abort
    if ctx.all_nodes > MAX_NODES_INLINED:
        ctx.fail(path, f"the rule has more than {MAX_NODES_INLINED} nodes with its segments")
        raise _Abort
    if not isinstance(doc, dict):
        ctx.fail(path, f"must be an object (a rule node), not {_type_name(doc)}")
        raise _Refused
    kinds = [k for k in NODE_KINDS if k in doc]
    if len(kinds) != 1:
        if kinds:
            ctx.fail(path, f"has more than one node kind: {', '.join(kinds)}")
        else:
            keys = [str(k) for k in doc]
            hint = _suggest(keys[0], NODE_KINDS) if len(keys) == 1 else ""
            ctx.fail(path, f"must have one of the keys {', '.join(NODE_KINDS)}{hint}")
        raise _Refused
    kind = kinds[0]
    _keys(ctx, doc, kind, path)
    here = f"{path}.{kind}"
    if kind in ("all", "any"):
        entries = doc[kind]
        if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_CHILDREN:
            ctx.fail(here, f"must be a list of 1 to {MAX_CHILDREN} rule nodes")
            raise _Refused
        children: list[Node] = []
        for i, item in enumerate(entries):
            with contextlib.suppress(_Refused):
                children.append(_walk(ctx, item, f"{here}[{i}]", depth + 1))
        if len(children) != len(entries):
            raise _Refused
        return (AllOf if kind == "all" else AnyOf)(path, tuple(children))
    if kind == "not":
        return Not(path, _walk(ctx, doc["not"], here, depth + 1))
    if kind == "field":
        name = doc["field"]
        if not isinstance(name, str) or name not in FIELDS:
            shown = _show(name) if isinstance(name, str) else _type_name(name)
            hint = _suggest(name, list(FIELDS)) if isinstance(name, str) else ""
            ctx.fail(here, f"unknown field {shown}{hint}")
            raise _Refused
        type_ = FIELDS[name]
        currency = None
        if name in CURRENCY_FIELDS:
            if "currency" not in doc:
                ctx.fail(f"{path}.currency", f"is required for {name!r} (ISO 4217, e.g. 'EUR')")
                raise _Refused
            currency = _currency(ctx, doc["currency"], f"{path}.currency")
        elif "currency" in doc:
            ctx.fail(f"{path}.currency", f"only money fields take a currency, not {name!r}")
            raise _Refused
        op = _op(ctx, doc, type_, path)
        value = _operand(ctx, type_, op, doc.get("value"), f"{path}.value")
        return Compare(path, "field", name, type_, op, value, currency)
    if kind == "attribute":
        name = _check_string(ctx, doc["attribute"], here)
        if not ATTRIBUTE_NAME.fullmatch(name):
            ctx.fail(here, "must be an attribute name: a-z first, then a-z, 0-9 or _ (1-64)")
            raise _Refused
        raw = doc.get("value")
        op_name = doc.get("op")
        if op_name in PRESENCE_OPS:
            type_ = STRING
        elif isinstance(raw, bool):
            type_ = BOOLEAN
        elif isinstance(raw, int | float | Decimal):
            type_ = NUMBER
        elif isinstance(raw, str):
            type_ = STRING
        elif isinstance(raw, dict) and "date" in raw:
            type_ = DATE
        elif isinstance(raw, list) and raw:
            first = raw[0]
            type_ = (
                BOOLEAN
                if isinstance(first, bool)
                else NUMBER
                if isinstance(first, int | float | Decimal)
                else DATE
                if isinstance(first, dict)
                else STRING
            )
        else:
            ctx.fail(
                f"{path}.value",
                'must be a string, number, boolean or {"date": "YYYY-MM-DD"}'
                f" (or a list of them), not {_type_name(raw)}",
            )
            raise _Refused
        op = _op(ctx, doc, type_, path)
        value = _operand(ctx, type_, op, raw, f"{path}.value")
        return Compare(path, "attribute", name, type_, op, value)
    if kind == "tag":
        tag = _check_string(ctx, doc["tag"], here)
        if not TAG.fullmatch(tag):
            ctx.fail(here, "must be a tag: 1-64 of a-z, 0-9, _, : and -")
            raise _Refused
        return Tag(path, tag)
    if kind == "consent":
        purpose = doc["consent"]
        if not isinstance(purpose, str) or purpose not in CONSENT_PURPOSES:
            shown = _show(purpose) if isinstance(purpose, str) else _type_name(purpose)
            hint = _suggest(purpose, CONSENT_PURPOSES) if isinstance(purpose, str) else ""
            ctx.fail(here, f"unknown purpose {shown} (one of {', '.join(CONSENT_PURPOSES)}){hint}")
            raise _Refused
        return Consent(path, purpose)
    if kind == "events":
        return _events(ctx, doc, path)
    return _segment(ctx, doc["segment"], path, depth)


def _currency(ctx: _Context, value: object, path: str) -> str:
    text = _check_string(ctx, value, path)
    if not CURRENCY.fullmatch(text):
        ctx.fail(path, "must be an ISO 4217 code in upper case, e.g. 'EUR'")
        raise _Refused
    return text


def _events(ctx: _Context, doc: dict[str, object], path: str) -> Events:
    kind = doc["events"]
    if not isinstance(kind, str) or kind not in EVENT_WHERE:
        shown = _show(kind) if isinstance(kind, str) else _type_name(kind)
        hint = _suggest(kind, list(EVENT_WHERE)) if isinstance(kind, str) else ""
        ctx.fail(
            f"{path}.events", f"unknown event kind {shown} (one of {', '.join(EVENT_WHERE)}){hint}"
        )
        raise _Refused
    within = _duration(ctx, doc["within"], f"{path}.within") if "within" in doc else None
    count_op, count_value = "gte", 1
    if "count" in doc:
        count = doc["count"]
        if not isinstance(count, dict) or set(count) - {"op", "value"} or "op" not in count:
            ctx.fail(f"{path}.count", 'must be {"op": OP, "value": N}')
            raise _Refused
        op = count["op"]
        if not isinstance(op, str) or op not in COUNT_OPS:
            ctx.fail(f"{path}.count.op", f"must be one of {', '.join(COUNT_OPS)}")
            raise _Refused
        raw = _operand(ctx, NUMBER, op, count.get("value"), f"{path}.count.value")
        count_op = op
        count_value = raw  # type: ignore[assignment]
    where: list[tuple[str, str | int]] = []
    if "where" in doc:
        w = doc["where"]
        allowed = EVENT_WHERE[kind]
        if not isinstance(w, dict):
            ctx.fail(f"{path}.where", "must be an object")
            raise _Refused
        bad = [k for k in w if k not in allowed]
        for k in bad:
            ctx.fail(
                f"{path}.where.{k}",
                f"unknown condition {_show(k)} for {kind!r} events"
                + (f" (one of {', '.join(allowed)})" if allowed else " (they take none)")
                + _suggest(str(k), allowed),
            )
        if bad:
            raise _Refused
        for k, v in sorted(w.items()):
            at = f"{path}.where.{k}"
            if k == "min_total_minor":
                where.append((k, _int(ctx, v, at, 0, MAX_INT)))
            elif k == "currency":
                where.append((k, _currency(ctx, v, at)))
            else:
                where.append((k, _check_string(ctx, v, at)))
        keys = {k for k, _ in where}
        if ("min_total_minor" in keys) != ("currency" in keys):
            ctx.fail(f"{path}.where", "min_total_minor and currency go together")
            raise _Refused
    return Events(path, kind, within, count_op, count_value, tuple(where))


def _segment(ctx: _Context, value: object, path: str, depth: int) -> SegmentRef:
    here = f"{path}.segment"
    segment_id = _check_string(ctx, value, here)
    if not SEGMENT_ID.fullmatch(segment_id):
        ctx.fail(here, "must be a segment id")
        raise _Refused
    if segment_id in ctx.stack:
        cycle = " -> ".join([*ctx.stack[ctx.stack.index(segment_id) :], segment_id])
        ctx.fail(here, f"segment references form a cycle: {cycle}")
        raise _Refused
    from services.segmentation.domain.builtins import BY_ID  # builtins parse through here

    builtin = BY_ID.get(segment_id)
    target: object | None
    if builtin is not None:
        target = builtin.rule
    else:
        target = ctx.resolve(segment_id) if ctx.resolve is not None else None
    if target is None:
        ctx.fail(here, f"unknown segment {_show(segment_id)}")
        raise _Refused
    inner = _Context(
        ctx.resolve, [], ctx.own_nodes, ctx.all_nodes, (*ctx.stack, segment_id), ctx.inlined + 1
    )
    aborted = False
    try:
        node = _walk(inner, target, here, depth + 1)
    except _Refused:
        node = None
    except _Abort:
        node, aborted = None, True
    ctx.all_nodes = inner.all_nodes
    for sub_path, message in inner.violations:
        if "cycle" in message or "nodes with its segments" in message or "deeper" in message:
            ctx.fail(here, message)
        else:
            ctx.fail(here, f"segment {segment_id!r} has an invalid rule: {sub_path}: {message}")
    if aborted:
        raise _Abort
    if node is None:
        raise _Refused
    return SegmentRef(path, segment_id, node)


def parse_rule(doc: object, *, resolve: Resolve | None = None, path: str = "rule") -> Node:
    """Validate ``doc`` (already decoded JSON) into a tree, inlining segment references.

    ``resolve(segment_id)`` returns a custom segment's rule document, or None when the
    workspace has no such segment. Raises :class:`RuleError` with every violation found.
    """
    ctx = _Context(resolve)
    try:
        node = _walk(ctx, _plain(doc), path, 1)
    except (_Refused, _Abort):
        node = None
    except RecursionError:
        ctx.fail(path, f"the rule is nested deeper than {MAX_DEPTH} levels")
        node = None
    if ctx.violations or node is None:
        raise RuleError(ctx.violations or [(path, "is not a valid rule")])
    return node


def _plain(doc: object) -> object:
    """Protobuf Struct values arrive as Python dict/list already; nothing else to undo."""
    return doc


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_show(key)}")
        out[key] = value
    return out


def loads(text: str) -> object:
    """Strict JSON: no NaN/Infinity, no duplicate keys, decimals kept exact; RuleError else."""
    if len(text) > MAX_TEXT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise RuleError([("rule", f"the rule text is larger than {MAX_TEXT_BYTES // 1024} KiB")])
    try:
        return json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=Decimal,
            object_pairs_hook=_pairs,
        )
    except RecursionError:
        raise RuleError([("rule", f"the rule is nested deeper than {MAX_DEPTH} levels")]) from None
    except (ValueError, InvalidOperation) as err:
        reason = str(err)
        if len(reason) > 200:
            reason = reason[:200] + "..."
        raise RuleError([("rule", f"is not valid JSON: {reason}")]) from None


def parse_rule_text(text: str, *, resolve: Resolve | None = None) -> tuple[Node, object]:
    """JSON text -> (tree, normalized document to store)."""
    doc = loads(text)
    node = parse_rule(doc, resolve=resolve)
    return node, normalized(doc)


def referenced_segments(doc: object) -> set[str]:
    """The segment ids ``doc`` references directly (not those of its references)."""
    found: set[str] = set()
    for node in _objects(doc):
        ref = node.get("segment")
        if isinstance(ref, str) and not ({"all", "any", "not"} & set(node)):
            found.add(ref)
    return found


def _objects(doc: object) -> Iterator[dict[str, object]]:
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            for key in ("all", "any"):
                if isinstance(item.get(key), list):
                    stack.extend(item[key])
            if "not" in item:
                stack.append(item["not"])


def normalized(doc: object) -> object:
    """The canonical form to store: keys sorted, integral numbers as int, other numbers as
    float (a valid rule's decimals have at most 15 significant digits, which a double holds
    exactly). Strings are kept as given (an attribute's string is compared as it is)."""
    if isinstance(doc, dict):
        return {k: normalized(doc[k]) for k in sorted(doc)}
    if isinstance(doc, list | tuple):
        return [normalized(v) for v in doc]
    if isinstance(doc, float):
        doc = Decimal(repr(doc))
    if isinstance(doc, Decimal):
        if doc.is_finite() and doc == doc.to_integral_value():
            return int(doc)
        return float(doc)
    return doc


def format_instant(at: datetime) -> str:
    """RFC 3339 in UTC with a Z, microseconds only when there are some."""
    text = at.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")
