"""The rule language evaluated in Python, over everything known about ONE contact.

Pure. This is the reference semantics: the SQL compiler
(:mod:`services.segmentation.adapters.rule_sql`) must pick exactly the contacts this picks
(tests run both over the same rows). It reads the contact's orders and activity themselves,
never the profile's order aggregates, so that it also checks the SQL's fast path.

Evaluation time ``as_of``: completed orders placed after it, activity after it and a signup
after it are not seen; every other profile field is current (the read model keeps no history
of them). Months are calendar months as PostgreSQL's ``timestamp - interval 'N months'``
computes them on UTC wall time (the day clamped to the month's last); days are 24 hours.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from services.segmentation.domain.rules import (
    BOOLEAN,
    DATE,
    NUMBER,
    TIME,
    Ago,
    AllOf,
    AnyOf,
    Compare,
    Consent,
    Duration,
    Events,
    Node,
    Not,
    SegmentRef,
    Tag,
    format_instant,
    pair,
)

US = timedelta(microseconds=1)

# An attribute that is a number: what both evaluators accept (no NaN, no Infinity, ASCII
# digits only, a bounded exponent so PostgreSQL's numeric cast cannot overflow).
NUMERIC_TEXT = r"^[+-]?([0-9]{1,100}(\.[0-9]{0,100})?|\.[0-9]{1,100})([eE][+-]?[0-9]{1,3})?$"
DATE_TEXT = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_NUMERIC = re.compile(NUMERIC_TEXT.removesuffix("$") + r"\Z")
_DATE = re.compile(DATE_TEXT.removesuffix("$") + r"\Z")

EVENT_ACTIVITY = {
    "page_view": "page_viewed",
    "search": "searched",
    "open": "message_opened",
    "click": "link_clicked",
}


def months_before(moment: datetime, months: int) -> datetime:
    """``moment - interval 'N months'`` as PostgreSQL computes it on UTC wall time."""
    utc = moment.astimezone(UTC)
    year, month0 = divmod(utc.year * 12 + utc.month - 1 - months, 12)
    day = min(utc.day, calendar.monthrange(year, month0 + 1)[1])
    return utc.replace(year=year, month=month0 + 1, day=day)


def days_before(moment: datetime, days: int) -> datetime:
    return moment.astimezone(UTC) - timedelta(days=days)


def before(moment: datetime, d: Duration) -> datetime:
    """``moment - d``: the lower bound of a window, or what ``{"ago": d}`` means."""
    if d.unit == "months":
        return months_before(moment, d.n)
    if d.unit == "days":
        return days_before(moment, d.n)
    return moment.astimezone(UTC) - timedelta(hours=d.n)


def flips_at(x: datetime, d: Duration, strict: bool) -> datetime:
    """The first moment t at which ``t - d`` passes ``x`` (``t - d > x``; with ``strict``
    False, ``t - d >= x``). For months ``t - d`` stands still at month ends (PostgreSQL
    clamps the day), so when ``x + d`` had to be clamped nothing passes ``x`` until the
    first instant of the next month."""
    x = x.astimezone(UTC)
    if d.unit != "months":
        y = x + (timedelta(days=d.n) if d.unit == "days" else timedelta(hours=d.n))
        return y + US if strict else y
    y = months_before(x, -d.n)
    if y.day != x.day:  # clamped: x + d is a month's last day, which stands for later days
        year, month0 = divmod(y.year * 12 + y.month, 12)
        return datetime(year, month0 + 1, 1, tzinfo=UTC)
    return y + US if strict else y


@dataclass(frozen=True)
class OrderFact:
    order_id: str
    placed_at: datetime | None
    status: str  # completed | cancelled | refunded
    total_minor: int | None = None
    currency: str | None = None
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class ActivityFact:
    kind: str  # page_viewed | searched | message_opened | link_clicked (the table's kinds)
    subject: str
    at: datetime


@dataclass(frozen=True)
class Facts:
    """Everything a rule reads about one contact, unfiltered (as_of filters when reading)."""

    contact_id: str = ""
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    vip: bool = False
    score: int = 0
    suppressed: bool = False
    signed_up_at: datetime | None = None
    created_at: datetime | None = None
    tags: tuple[str, ...] = ()
    attributes: Mapping[str, str] = field(default_factory=dict)  # text values, as ->> reads
    consents: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    last_visit_at: datetime | None = None
    last_open_at: datetime | None = None
    last_click_at: datetime | None = None
    cart: Mapping[str, object] | None = None
    orders: tuple[OrderFact, ...] = ()
    activity: tuple[ActivityFact, ...] = ()


@dataclass(frozen=True)
class Explanation:
    """One node evaluated for a contact (maps 1:1 to RuleNodeResult)."""

    path: str
    kind: str
    held: bool
    summary: str
    observed: dict[str, str]
    children: tuple[Explanation, ...] = ()


# -- reading one field at as_of ----------------------------------------------------------------
def _completed(facts: Facts, as_of: datetime) -> list[OrderFact]:
    return [
        o
        for o in facts.orders
        if o.status == "completed" and o.placed_at is not None and o.placed_at <= as_of
    ]


def _time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _num(value: object) -> int | Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | Decimal):
        return value
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str) and _NUMERIC.match(value):
        return Decimal(value)
    return None


def spent(facts: Facts, as_of: datetime, currency: str) -> tuple[int, int]:
    """(total in minor units, orders with a total) of completed orders in ``currency``."""
    rows = [
        o.total_minor
        for o in _completed(facts, as_of)
        if o.currency == currency and o.total_minor is not None
    ]
    return sum(rows), len(rows)


def field_value(facts: Facts, name: str, as_of: datetime, currency: str | None = None) -> object:
    """The value of profile field ``name`` at ``as_of`` (None: missing)."""
    if name in ("orders", "first_order_at", "last_order_at"):
        placed = sorted(o.placed_at for o in _completed(facts, as_of) if o.placed_at)
        if name == "orders":
            return len(placed)
        if not placed:
            return None
        return placed[0] if name == "first_order_at" else placed[-1]
    if name == "total_spent":
        return spent(facts, as_of, currency or "")[0]
    if name == "signed_up_at":
        s = facts.signed_up_at
        return s if s is not None and s <= as_of else None
    cart = facts.cart
    if name == "cart_value":
        if cart is None or cart.get("currency") != currency:
            return None
        return _num(cart.get("total_minor"))
    if name == "cart_items":
        return None if cart is None else _num(cart.get("items"))
    if name == "cart_updated_at":
        return None if cart is None else _time(cart.get("updated_at"))
    return getattr(facts, name)


def _attribute(facts: Facts, name: str, type_: str) -> object:
    raw = facts.attributes.get(name)
    if raw is None:
        return None
    if type_ == NUMBER:
        return Decimal(raw) if _NUMERIC.match(raw) else None
    if type_ == BOOLEAN:
        return {"true": True, "false": False}.get(raw)
    if type_ == DATE:
        if not _DATE.match(raw):
            return None
        try:
            return date.fromisoformat(raw)
        except ValueError:
            return None
    return raw


def resolved(value: object, as_of: datetime) -> object:
    return before(as_of, value.duration) if isinstance(value, Ago) else value


def _compare(x: object, op: str, value: object, as_of: datetime) -> bool:
    if op == "exists":
        return x is not None
    if op == "not_exists":
        return x is None
    if x is None:
        return False
    if op == "between":
        lo, hi = (resolved(v, as_of) for v in pair(value))  # type: ignore[arg-type]
        return bool(lo <= x <= hi)  # type: ignore[operator]
    if op in ("in", "not_in"):
        found = x in value  # type: ignore[operator]
        return found if op == "in" else not found
    v = resolved(value, as_of)
    match op:
        case "eq":
            return bool(x == v)
        case "ne":
            return bool(x != v)
        case "lt":
            return bool(x < v)  # type: ignore[operator]
        case "lte":
            return bool(x <= v)  # type: ignore[operator]
        case "gt":
            return bool(x > v)  # type: ignore[operator]
        case "gte":
            return bool(x >= v)  # type: ignore[operator]
        case "starts_with":
            return str(x).startswith(str(v))
        case "contains":
            return str(v) in str(x)
        case "ci_eq":
            return lower(str(x)) == lower(str(v))
        case "ci_contains":
            return lower(str(v)) in lower(str(x))
        case "ci_starts_with":
            return lower(str(x)).startswith(lower(str(v)))
    raise AssertionError(op)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def lower(text: str) -> str:
    """ASCII letters lower-cased, every other character as it is: what PostgreSQL's
    ``lower(x COLLATE "C")`` does, whatever the database's locale (so both evaluators
    agree; docs/segment-rules.md, 'ci_' operators)."""
    return text.translate(_ASCII_LOWER)


def _compare_node(node: Compare, facts: Facts, as_of: datetime) -> tuple[bool, dict[str, str]]:
    if node.source == "attribute":
        x = _attribute(facts, node.name, node.type)
        return _compare(x, node.op, node.value, as_of), {node.name: _text(x)}
    if node.name == "average_order_value":
        total, n = spent(facts, as_of, node.currency or "")
        observed = {"total_minor": str(total), "orders": str(n)}
        if node.op == "exists":
            return n > 0, observed
        if node.op == "not_exists":
            return n == 0, observed
        if n == 0:
            return False, observed
        # exact: total / n OP v  <=>  total OP v * n (n > 0), as the SQL compares
        scaled: object
        if isinstance(node.value, tuple):
            scaled = tuple(Decimal(v) * n for v in node.value)  # type: ignore[arg-type]
        else:
            scaled = Decimal(node.value) * n  # type: ignore[arg-type]
        return _compare(Decimal(total), node.op, scaled, as_of), observed
    x = field_value(facts, node.name, as_of, node.currency)
    if node.name == "vip" or node.name == "suppressed":
        x = bool(x)
    return _compare(x, node.op, node.value, as_of), {node.name: _text(x)}


def _text(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_instant(value)
    return str(value)


def event_times(node: Events, facts: Facts, as_of: datetime | None) -> list[datetime]:
    """The times of the contact's events of ``node``'s kind matching its ``where``, every
    one (``as_of`` None) or up to ``as_of``."""
    times: list[datetime] = []
    if node.kind == "order":
        category = node.where_value("category")
        currency = node.where_value("currency")
        minimum = node.where_value("min_total_minor")
        for o in facts.orders:
            if o.status != "completed" or o.placed_at is None:
                continue
            if category is not None and category not in o.categories:
                continue
            if currency is not None and (
                o.currency != currency or o.total_minor is None or o.total_minor < int(minimum or 0)
            ):
                continue
            times.append(o.placed_at)
    else:
        kind = EVENT_ACTIVITY[node.kind]
        for a in facts.activity:
            if a.kind != kind:
                continue
            category = node.where_value("category")
            if category is not None and a.subject != category:
                continue
            query = node.where_value("query")
            if query is not None and lower(str(query)) not in lower(a.subject):
                continue
            prefix = node.where_value("url_prefix")
            if prefix is not None and not a.subject.startswith(str(prefix)):
                continue
            times.append(a.at)
    if as_of is not None:
        times = [t for t in times if t <= as_of]
    return sorted(times)


def _window(node: Events, facts: Facts, as_of: datetime) -> list[datetime]:
    times = event_times(node, facts, as_of)
    if node.within is not None:
        low = before(as_of, node.within)
        times = [t for t in times if t > low]
    return times


def _events_node(node: Events, facts: Facts, as_of: datetime) -> tuple[bool, dict[str, str]]:
    count = len(_window(node, facts, as_of))
    return _compare(count, node.count_op, node.count_value, as_of), {"count": str(count)}


def evaluate(node: Node, facts: Facts, as_of: datetime) -> bool:
    """Whether the contact satisfies the rule at ``as_of``."""
    match node:
        case AllOf():
            return all(evaluate(c, facts, as_of) for c in node.children)
        case AnyOf():
            return any(evaluate(c, facts, as_of) for c in node.children)
        case Not():
            return not evaluate(node.child, facts, as_of)
        case Compare():
            return _compare_node(node, facts, as_of)[0]
        case Tag():
            return node.tag in facts.tags
        case Consent():
            return _granted(facts, node.purpose)
        case Events():
            return _events_node(node, facts, as_of)[0]
        case SegmentRef():
            return evaluate(node.node, facts, as_of)
    raise AssertionError(node)


def _granted(facts: Facts, purpose: str) -> bool:
    consent = facts.consents.get(purpose)
    return isinstance(consent, Mapping) and consent.get("state") == "granted"


# -- explain -----------------------------------------------------------------------------------
_SYMBOL = {"eq": "=", "ne": "!=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def _duration_text(d: Duration) -> str:
    unit = d.unit if d.n != 1 else d.unit[:-1]
    return f"{d.n} {unit}"


def _value_text(value: object) -> str:
    if isinstance(value, Ago):
        return f"as_of - {_duration_text(value.duration)}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return _text(value)


def summary(node: Node) -> str:
    """The clause in words, e.g. ``orders >= 2``."""
    match node:
        case AllOf():
            return f"all of {len(node.children)}"
        case AnyOf():
            return f"any of {len(node.children)}"
        case Not():
            return "not"
        case Compare():
            name = node.name if node.source == "field" else f"attribute {node.name}"
            if node.currency:
                name = f"{name} ({node.currency})"
            if node.op in ("exists", "not_exists"):
                return f"{name} {node.op.replace('_', ' ')}"
            op = _SYMBOL.get(node.op, node.op.replace("_", " "))
            return f"{name} {op} {_value_text(node.value)}"
        case Tag():
            return f"has tag {node.tag!r}"
        case Consent():
            return f"consent granted for {node.purpose}"
        case Events():
            window = f" in the last {_duration_text(node.within)}" if node.within else ""
            where = "".join(f", {k} {_value_text(v)}" for k, v in node.where)
            op = _SYMBOL.get(node.count_op, node.count_op.replace("_", " "))
            return f"{node.kind} events{window}{where}: count {op} {_value_text(node.count_value)}"
        case SegmentRef():
            return f"member of segment {node.segment_id!r}"
    raise AssertionError(node)


def _kind(node: Node) -> str:
    return {
        AllOf: "all",
        AnyOf: "any",
        Not: "not",
        Tag: "tag",
        Consent: "consent",
        Events: "events",
        SegmentRef: "segment",
    }.get(type(node), node.source if isinstance(node, Compare) else "")


def explain(node: Node, facts: Facts, as_of: datetime) -> Explanation:
    """The rule evaluated node by node, with the values each leaf looked at."""
    observed: dict[str, str] = {}
    children: tuple[Explanation, ...] = ()
    match node:
        case AllOf() | AnyOf():
            children = tuple(explain(c, facts, as_of) for c in node.children)
            held = (all if isinstance(node, AllOf) else any)(c.held for c in children)
        case Not():
            children = (explain(node.child, facts, as_of),)
            held = not children[0].held
        case Compare():
            held, observed = _compare_node(node, facts, as_of)
            for i, v in enumerate(node.value if isinstance(node.value, tuple) else [node.value]):
                if isinstance(v, Ago):
                    observed["bound" if not isinstance(node.value, tuple) else f"bound{i}"] = (
                        format_instant(before(as_of, v.duration))
                    )
        case Tag():
            held = node.tag in facts.tags
            observed = {"tags": ",".join(facts.tags)}
        case Consent():
            held = _granted(facts, node.purpose)
            state = facts.consents.get(node.purpose)
            observed = {
                node.purpose: str(state.get("state")) if isinstance(state, Mapping) else "(none)"
            }
        case Events():
            held, observed = _events_node(node, facts, as_of)
            if node.within is not None:
                observed["since"] = format_instant(before(as_of, node.within))
        case SegmentRef():
            children = (explain(node.node, facts, as_of),)
            held = children[0].held
        case _:
            raise AssertionError(node)
    return Explanation(node.path, _kind(node), held, summary(node), observed, children)


# -- next transition ---------------------------------------------------------------------------
ORDER_FIELDS = frozenset(
    {"orders", "first_order_at", "last_order_at", "total_spent", "average_order_value"}
)


def _earliest(*moments: datetime | None) -> datetime | None:
    known = [m for m in moments if m is not None]
    return min(known) if known else None


def _next_order(facts: Facts, as_of: datetime) -> datetime | None:
    """The first completed order placed after ``as_of``: it changes the order aggregates."""
    return _earliest(
        *(
            o.placed_at
            for o in facts.orders
            if o.status == "completed" and o.placed_at is not None and o.placed_at > as_of
        )
    )


def _leaf_flip(x: datetime | None, op: str, value: object, held: bool) -> datetime | None:
    """When ``x OP as_of - d`` flips, if it still can (``t - d`` only grows with t: a
    gte/gt leaf can only turn false, a lt/lte leaf only true)."""
    if x is None or not isinstance(value, Ago):
        return None
    if op in ("gte", "gt"):
        return flips_at(x, value.duration, strict=op == "gte") if held else None
    if op in ("lt", "lte"):
        return None if held else flips_at(x, value.duration, strict=op == "lt")
    return None


def next_transition(node: Node, facts: Facts, as_of: datetime) -> datetime | None:
    """The earliest moment strictly after ``as_of`` at which a clause of the rule changes
    value with time alone (None: never). A clause's change may leave the whole rule as it
    is (the sweeper then finds nothing to publish and asks again); it is never late.

    A time comparison with ``{"ago": ...}`` flips when ``as_of - d`` passes the value; an
    event window changes when its oldest event leaves it; a completed order or a signup
    after ``as_of`` changes what the clauses reading them see. The SQL twin
    (:func:`services.segmentation.adapters.rule_sql.next_transition_sql`) computes the same.
    """
    match node:
        case AllOf() | AnyOf():
            return _earliest(*(next_transition(c, facts, as_of) for c in node.children))
        case Not():
            return next_transition(node.child, facts, as_of)
        case SegmentRef():
            return next_transition(node.node, facts, as_of)
        case Compare():
            return _next_compare(node, facts, as_of)
        case Events():
            return _next_events(node, facts, as_of)
    return None


def _next_compare(node: Compare, facts: Facts, as_of: datetime) -> datetime | None:
    if node.source != "field":
        return None
    moments: list[datetime | None] = []
    if node.name in ORDER_FIELDS:
        moments.append(_next_order(facts, as_of))
    if node.name == "signed_up_at" and facts.signed_up_at and facts.signed_up_at > as_of:
        moments.append(facts.signed_up_at)
    if node.type == TIME and node.op in ("lt", "lte", "gt", "gte", "between"):
        x = field_value(facts, node.name, as_of, node.currency)
        assert x is None or isinstance(x, datetime)
        if node.op == "between":
            lo, hi = pair(node.value)
            held_lo = x is not None and x >= resolved(lo, as_of)  # type: ignore[operator]
            held_hi = x is not None and x <= resolved(hi, as_of)  # type: ignore[operator]
            moments.append(_leaf_flip(x, "gte", lo, held_lo))
            moments.append(_leaf_flip(x, "lte", hi, held_hi))
        else:
            held = _compare(x, node.op, node.value, as_of)
            moments.append(_leaf_flip(x, node.op, node.value, held))
    return _earliest(*moments)


def _next_events(node: Events, facts: Facts, as_of: datetime) -> datetime | None:
    every = event_times(node, facts, None)
    upcoming = _earliest(*(t for t in every if t > as_of))
    if node.within is None:
        return upcoming
    inside = _window(node, facts, as_of)
    leaves = flips_at(inside[0], node.within, strict=False) if inside else None
    return _earliest(upcoming, leaves)


Evaluator = Callable[[Node, Facts, datetime], bool]
