"""The rule language compiled to PostgreSQL: a boolean expression over one ``profiles`` row.

Nothing from the rule reaches the SQL text: every value is a bind parameter with an
explicit cast (:class:`Params`), field names map to fixed SQL through :data:`_COLUMNS` and
the other tables of this module, kinds and operators to fixed fragments. The output is
safe to compose into a query.

Semantics are those of :mod:`services.segmentation.domain.evaluate` (tests run both):
every leaf is ``coalesce(<expr>, false)`` (two-valued logic: missing is false); relative
times are computed on UTC wall time (``(as_of AT TIME ZONE 'UTC') - interval``) so months
clamp as PostgreSQL does and days are 24 hours whatever the session's TimeZone.

The fast path: the order aggregates come from the profile's columns when the contact's
last completed order is not after ``as_of`` (then the columns are the aggregates at
``as_of``), and from a correlated subquery on ``orders`` otherwise: exact at any
``as_of``, and a count "now" reads no orders.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.segmentation.domain.evaluate import (
    DATE_TEXT,
    EVENT_ACTIVITY,
    NUMERIC_TEXT,
    ORDER_FIELDS,
    ActivityFact,
    Facts,
    OrderFact,
    compare_value,
)
from services.segmentation.domain.rules import (
    BOOLEAN,
    DATE,
    NUMBER,
    STRING,
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
    pair,
)

_TYPES = frozenset(
    {
        "text",
        "bigint",
        "int",
        "numeric",
        "boolean",
        "timestamptz",
        "date",
        "text[]",
        "bigint[]",
        "numeric[]",
        "date[]",
    }
)


class Params:
    """Collects bind values: ``add(value, "bigint")`` -> ``"$7::bigint"``."""

    def __init__(self, first: int = 1) -> None:
        self.first = first
        self.values: list[object] = []

    def add(self, value: object, sql_type: str) -> str:
        if sql_type not in _TYPES:
            raise ValueError(f"not a parameter type: {sql_type}")
        self.values.append(value)
        return f"${self.first + len(self.values) - 1}::{sql_type}"


# A count's clause compared with 0 reads no time (counts are numbers, never relative times).
AS_OF_UNUSED = datetime(2000, 1, 1, tzinfo=UTC)

_SYMBOL = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}

# Profile columns read as they are (current state; as_of does not apply to them).
_COLUMNS = {
    "email": "email",
    "first_name": "first_name",
    "last_name": "last_name",
    "vip": "vip",
    "score": "score",
    "suppressed": "suppressed",
    "created_at": "created_at",
    "last_visit_at": "last_visit_at",
    "last_open_at": "last_open_at",
    "last_click_at": "last_click_at",
}
_AGGREGATES = {"orders": "count(*)", "first_order_at": "min", "last_order_at": "max"}
_PROFILE_AGGREGATE = {
    "orders": "orders_count",
    "first_order_at": "first_order_at",
    "last_order_at": "last_order_at",
}


class _Compiler:
    def __init__(self, params: Params, as_of: str, alias: str, columns: bool = False) -> None:
        if not alias.isidentifier():
            raise ValueError("alias must be an SQL identifier")
        self.params = params
        self.columns = columns
        self.a = f"({as_of})::timestamptz"
        self.p = alias

    # -- building blocks ------------------------------------------------------------------
    def fast(self) -> str:
        return f"({self.p}.last_order_at IS NULL OR {self.p}.last_order_at <= {self.a})"

    def exact_aggregate(self, column: str, fallback: str) -> str:
        """The profile's aggregate ``column`` where it is exact at as_of (no completed order
        after it), else ``fallback`` (a correlated subquery on orders). In ``columns`` mode the
        caller has checked that no profile of the workspace has an order after as_of, so the
        column alone is exact: no subplan, which lets PostgreSQL count in parallel (at a
        million profiles the CASE alone cost 2.5x)."""
        if self.columns:
            return column
        return f"(CASE WHEN {self.fast()} THEN {column} ELSE {fallback} END)"

    def orders_of_contact(self) -> str:
        return (
            f"FROM orders ro WHERE ro.workspace_id = {self.p}.workspace_id"
            f" AND ro.contact_id = {self.p}.contact_id AND ro.status = 'completed'"
        )

    def before(self, d: Duration, moment: str | None = None) -> str:
        """``moment - d`` (default as_of) on UTC wall time."""
        at = moment or self.a
        if d.unit == "months":
            n = self.params.add(d.n, "int")
            # parenthesised: BETWEEN's bounds take no bare AT TIME ZONE
            wall = f"(({at}) AT TIME ZONE 'UTC')"
            return f"(({wall} - make_interval(months => {n})) AT TIME ZONE 'UTC')"
        hours = self.params.add(d.n * 24 if d.unit == "days" else d.n, "int")
        return f"(({at}) - make_interval(hours => {hours}))"

    def flip(self, x: str, d: Duration, strict: bool) -> str:
        """SQL twin of :func:`services.segmentation.domain.evaluate.flips_at`."""
        micro = " + interval '1 microsecond'" if strict else ""
        if d.unit != "months":
            hours = self.params.add(d.n * 24 if d.unit == "days" else d.n, "int")
            return f"(({x}) + make_interval(hours => {hours}){micro})"
        n = self.params.add(d.n, "int")
        wall = f"(({x}) AT TIME ZONE 'UTC')"
        moved = f"({wall} + make_interval(months => {n}))"
        return (
            f"(CASE WHEN extract(day FROM {moved}) <> extract(day FROM {wall})"
            f" THEN (date_trunc('month', {moved}) + interval '1 month') AT TIME ZONE 'UTC'"
            f" ELSE ({moved} AT TIME ZONE 'UTC'){micro} END)"
        )

    def scalar(self, value: object) -> str:
        if isinstance(value, Ago):
            return self.before(value.duration)
        if isinstance(value, bool):
            return self.params.add(value, "boolean")
        if isinstance(value, int):
            return self.params.add(value, "bigint")
        if isinstance(value, Decimal):
            return self.params.add(value, "numeric")
        if isinstance(value, str):
            return self.params.add(value, "text")
        if isinstance(value, datetime):
            return self.params.add(value, "timestamptz")
        if isinstance(value, date):
            return self.params.add(value, "date")
        raise TypeError(type(value))

    def array(self, values: tuple[object, ...], type_: str) -> str:
        if type_ == NUMBER:
            if all(isinstance(v, int) for v in values):
                return self.params.add(list(values), "bigint[]")
            return self.params.add([Decimal(v) for v in values], "numeric[]")  # type: ignore[arg-type]
        if type_ == DATE:
            return self.params.add(list(values), "date[]")
        return self.params.add(list(values), "text[]")

    def compare(self, x: str, type_: str, op: str, value: object) -> str:
        if op == "exists":
            return f"(({x}) IS NOT NULL)"
        if op == "not_exists":
            return f"(({x}) IS NULL)"
        if op == "between":
            lo, hi = pair(value)  # type: ignore[arg-type]
            return f"coalesce(({x}) BETWEEN {self.scalar(lo)} AND {self.scalar(hi)}, false)"
        if op == "in":
            return f"coalesce(({x}) = ANY({self.array(value, type_)}), false)"  # type: ignore[arg-type]
        if op == "not_in":
            return f"coalesce(NOT (({x}) = ANY({self.array(value, type_)})), false)"  # type: ignore[arg-type]
        if op in _SYMBOL:
            return f"coalesce(({x}) {_SYMBOL[op]} {self.scalar(value)}, false)"
        v = self.scalar(value)
        lx, lv = _lower(x), _lower(v)
        expr = {
            "starts_with": f"starts_with({x}, {v})",
            "contains": f"strpos({x}, {v}) > 0",
            "ci_eq": f"{lx} = {lv}",
            "ci_contains": f"strpos({lx}, {lv}) > 0",
            "ci_starts_with": f"starts_with({lx}, {lv})",
        }[op]
        return f"coalesce({expr}, false)"

    # -- fields ---------------------------------------------------------------------------
    def field(self, name: str, currency: str | None) -> str:
        p, a = self.p, self.a
        if name in _COLUMNS:
            return f"{p}.{_COLUMNS[name]}"
        if name == "signed_up_at":
            return f"(CASE WHEN {p}.signed_up_at <= {a} THEN {p}.signed_up_at END)"
        if name in _AGGREGATES:
            agg = _AGGREGATES[name]
            select = agg if agg == "count(*)" else f"{agg}(ro.placed_at)"
            return self.exact_aggregate(
                f"{p}.{_PROFILE_AGGREGATE[name]}",
                f"(SELECT {select} {self.orders_of_contact()} AND ro.placed_at <= {a})",
            )
        if name == "total_spent":
            return self.spent(currency or "", "total_minor")
        if name == "cart_value":
            c = self.params.add(currency, "text")
            return (
                f"(CASE WHEN {p}.cart ->> 'currency' = {c}"
                f" THEN ({p}.cart ->> 'total_minor')::numeric END)"
            )
        if name == "cart_items":
            return f"(({p}.cart ->> 'items')::numeric)"
        if name == "cart_updated_at":
            return f"(({p}.cart ->> 'updated_at')::timestamptz)"
        raise ValueError(f"no SQL for field {name}")

    def spent(self, currency: str, what: str) -> str:
        """The total (``what`` = total_minor) or the number of orders (``orders``) in
        ``currency`` at as_of: the profile's ``spent`` on the fast path."""
        p, a = self.p, self.a
        c = self.params.add(currency, "text")
        column = "'total_minor'" if what == "total_minor" else "'orders'"
        select = "coalesce(sum(ro.total_minor), 0)" if what == "total_minor" else "count(*)"
        return self.exact_aggregate(
            f"coalesce(({p}.spent -> {c} ->> {column})::numeric, 0)",
            f"(SELECT {select} {self.orders_of_contact()} AND ro.placed_at <= {a}"
            f" AND ro.currency = {c})",
        )

    def compare_node(self, node: Compare) -> str:
        if node.source == "attribute":
            return self.attribute(node)
        if node.name == "average_order_value":
            return self.average(node)
        return self.compare(self.field(node.name, node.currency), node.type, node.op, node.value)

    def average(self, node: Compare) -> str:
        """``total / orders OP v`` as ``total OP v * orders`` with orders > 0: exact."""
        count = self.spent(node.currency or "", "orders")
        if node.op == "exists":
            return f"({count} > 0)"
        if node.op == "not_exists":
            return f"({count} = 0)"
        total = self.spent(node.currency or "", "total_minor")
        if node.op in ("in", "not_in"):
            arr = self.array(node.value, NUMBER)  # type: ignore[arg-type]
            found = f"({total}) = ANY(ARRAY(SELECT u * {count} FROM unnest({arr}) u))"
            expr = found if node.op == "in" else f"NOT ({found})"
        elif node.op == "between":
            lo, hi = pair(node.value)
            expr = f"({total}) BETWEEN {self.scalar(lo)} * {count} AND {self.scalar(hi)} * {count}"
        else:
            expr = f"({total}) {_SYMBOL[node.op]} {self.scalar(node.value)} * {count}"
        return f"coalesce({count} > 0 AND {expr}, false)"

    def attribute(self, node: Compare) -> str:
        name = self.params.add(node.name, "text")
        raw = f"({self.p}.attributes ->> {name})"
        if node.op in ("exists", "not_exists"):
            return self.compare(raw, STRING, node.op, None)
        if node.type == NUMBER:
            x = f"(CASE WHEN {raw} ~ '{NUMERIC_TEXT}' THEN {raw}::numeric END)"
        elif node.type == DATE:
            x = (
                f"(CASE WHEN {raw} ~ '{DATE_TEXT}' AND pg_input_is_valid({raw}, 'date')"
                f" THEN {raw}::date END)"
            )
        elif node.type == BOOLEAN:
            x = f"(CASE {raw} WHEN 'true' THEN true WHEN 'false' THEN false END)"
        else:
            x = raw
        return self.compare(x, node.type, node.op, node.value)

    # -- events ---------------------------------------------------------------------------
    def events_from(self, node: Events) -> tuple[str, str]:
        """(FROM ... WHERE ... of the node's events up to any time, the time column)."""
        p = self.p
        conditions: list[str] = []
        if node.kind == "order":
            source = self.orders_of_contact() + " AND ro.placed_at IS NOT NULL"
            at = "ro.placed_at"
            category = node.where_value("category")
            if category is not None:
                conditions.append(f"{self.params.add(category, 'text')} = ANY(ro.categories)")
            currency = node.where_value("currency")
            if currency is not None:
                c = self.params.add(currency, "text")
                m = self.params.add(node.where_value("min_total_minor"), "bigint")
                conditions.append(f"ro.currency = {c} AND ro.total_minor >= {m}")
        else:
            kind = EVENT_ACTIVITY[node.kind]  # a constant of this module, not input
            source = (
                f"FROM activity ra WHERE ra.workspace_id = {p}.workspace_id"
                f" AND ra.contact_id = {p}.contact_id AND ra.kind = '{kind}'"
            )
            at = "ra.at"
            category = node.where_value("category")
            if category is not None:
                conditions.append(f"ra.subject = {self.params.add(category, 'text')}")
            query = node.where_value("query")
            if query is not None:
                q = self.params.add(query, "text")
                conditions.append(f"strpos({_lower('ra.subject')}, {_lower(q)}) > 0")
            prefix = node.where_value("url_prefix")
            if prefix is not None:
                conditions.append(f"starts_with(ra.subject, {self.params.add(prefix, 'text')})")
        return source + "".join(f" AND {c}" for c in conditions), at

    def window(self, node: Events) -> tuple[str, str]:
        source, at = self.events_from(node)
        source += f" AND {at} <= {self.a}"
        if node.within is not None:
            source += f" AND {at} > {self.before(node.within)}"
        return source, at

    def events(self, node: Events) -> str:
        source, _ = self.window(node)
        if node.count_op == "gte" and node.count_value == 1:
            counted = f"EXISTS (SELECT 1 {source})"
        else:
            counted = self.compare(
                f"(SELECT count(*) {source})", NUMBER, node.count_op, node.count_value
            )
        if node.kind != "order":
            return counted
        # A completed order in the window means the profile's first order is at or before
        # as_of and its last (the newest of all) after the window's start: a row failing
        # that has none, and the count's clause is what it says of 0, known now. So most
        # rows never run the subquery.
        p = self.p
        guard = f"{p}.first_order_at <= {self.a}"
        if node.within is not None:
            guard += f" AND {p}.last_order_at > {self.before(node.within)}"
        # "At least N" needs N completed orders of all time (orders_count counts every
        # completed order, later ones too, so it never undercounts): a row with fewer fails
        # without the subquery, as 0 does (measured at 1M profiles: 7.4 s -> 4.6 s for a
        # window of 2+ orders).
        if node.count_op in ("gte", "gt") and isinstance(node.count_value, int):
            at_least = node.count_value + (1 if node.count_op == "gt" else 0)
            if at_least >= 2:
                guard += f" AND {p}.orders_count >= {self.params.add(at_least, 'bigint')}"
        zero = (
            "true" if compare_value(0, node.count_op, node.count_value, AS_OF_UNUSED) else "false"
        )
        return f"(CASE WHEN coalesce({guard}, false) THEN {counted} ELSE {zero} END)"

    # -- the tree -------------------------------------------------------------------------
    def predicate(self, node: Node) -> str:
        match node:
            case AllOf():
                return "(" + " AND ".join(self.predicate(c) for c in node.children) + ")"
            case AnyOf():
                return "(" + " OR ".join(self.predicate(c) for c in node.children) + ")"
            case Not():
                return f"(NOT {self.predicate(node.child)})"
            case Compare():
                return self.compare_node(node)
            case Tag():
                return f"({self.params.add(node.tag, 'text')} = ANY({self.p}.tags))"
            case Consent():
                purpose = self.params.add(node.purpose, "text")
                return f"coalesce(({self.p}.consents -> {purpose}) ->> 'state' = 'granted', false)"
            case Events():
                return self.events(node)
            case SegmentRef():
                return self.predicate(node.node)
        raise AssertionError(node)

    def frozen(self, node: Node, value: bool) -> str:
        """SQL twin of :func:`services.segmentation.domain.evaluate.frozen`: whether the
        node is frozen at ``value`` (never NULL). One side at a time, so that every bound
        parameter appears in the SQL."""
        match node:
            case AllOf() | AnyOf():
                parts = [self.frozen(c, value) for c in node.children]
                # all: frozen false when any child is, true when every child is; any: dual
                return _or(parts) if isinstance(node, AllOf) != value else _and(parts)
            case Not():
                return self.frozen(node.child, not value)
            case SegmentRef():
                return self.frozen(node.node, value)
            case Compare():
                return self.frozen_compare(node, value)
            case Events():
                held = self.events(node)
                source, at = self.events_from(node)
                still = f"NOT EXISTS (SELECT 1 {source} AND {at} > {self.a})"
                if node.within is not None:
                    window, _ = self.window(node)
                    still += f" AND NOT EXISTS (SELECT 1 {window})"
                return f"({still} AND {held if value else f'NOT {held}'})"
        held = self.predicate(node)
        return held if value else f"(NOT {held})"

    def arrives(self, node: Compare) -> str | None:
        p, a = self.p, self.a
        if node.source != "field":
            return None
        if node.name in ORDER_FIELDS:
            return f"coalesce({p}.last_order_at > {a}, false)"
        if node.name == "signed_up_at":
            return f"coalesce({p}.signed_up_at > {a}, false)"
        return None

    def frozen_compare(self, node: Compare, value: bool) -> str:
        arrives = self.arrives(node)
        calm = "" if arrives is None else f"NOT {arrives} AND "
        if node.type == TIME and node.op == "between":
            lo, hi = pair(node.value)
            x = self.field(node.name, node.currency)
            if not value:
                falls = f"NOT {self.compare(x, TIME, 'gte', lo)}"
                if not isinstance(hi, Ago):
                    falls += f" OR NOT {self.compare(x, TIME, 'lte', hi)}"
                return f"({calm}({falls}))"
            if isinstance(lo, Ago):
                return "false"
            both = f"{self.compare(x, TIME, 'gte', lo)} AND {self.compare(x, TIME, 'lte', hi)}"
            return f"({calm}{both})"
        relative = node.type == TIME and isinstance(node.value, Ago)
        if relative and value != (node.op in ("lt", "lte")):
            return "false"  # gte/gt only turn false, lt/lte only turn true
        held = self.compare_node(node)
        return f"({calm}{held})" if value else f"({calm}NOT {held})"

    def next_transition(self, node: Node) -> str | None:
        match node:
            case AllOf() | AnyOf():
                moment = _least([self.next_transition(c) for c in node.children])
                if moment is None:
                    return None
                # a child frozen at the deciding value freezes the whole node
                deciding = isinstance(node, AnyOf)
                decided = _or([self.frozen(c, deciding) for c in node.children])
                return f"(CASE WHEN {decided} THEN NULL ELSE {moment} END)"
            case Not():
                return self.next_transition(node.child)
            case SegmentRef():
                return self.next_transition(node.node)
            case Compare():
                moment = self.next_compare(node)
                if moment is None:
                    return None
                ff, ft = self.frozen_compare(node, False), self.frozen_compare(node, True)
                return f"(CASE WHEN {ff} OR {ft} THEN NULL ELSE {moment} END)"
            case Events():
                return self.next_events(node)
        return None

    def next_order(self) -> str:
        return (
            f"(CASE WHEN {self.p}.last_order_at > {self.a} THEN (SELECT min(ro.placed_at)"
            f" {self.orders_of_contact()} AND ro.placed_at > {self.a}) END)"
        )

    def leaf_flip(self, x: str, op: str, value: object) -> str | None:
        if not isinstance(value, Ago):
            return None
        held = self.compare(x, TIME, op, value)
        flip = self.flip(x, value.duration, strict=op in ("gte", "lt"))
        condition = held if op in ("gte", "gt") else f"NOT {held}"
        return f"(CASE WHEN {condition} THEN {flip} END)"

    def next_compare(self, node: Compare) -> str | None:
        if node.source != "field":
            return None
        moments: list[str | None] = []
        if node.name in ORDER_FIELDS:
            moments.append(self.next_order())
        if node.name == "signed_up_at":
            moments.append(
                f"(CASE WHEN {self.p}.signed_up_at > {self.a} THEN {self.p}.signed_up_at END)"
            )
        if node.type == TIME and node.op in ("lt", "lte", "gt", "gte", "between"):
            x = self.field(node.name, node.currency)
            if node.op == "between":
                lo, hi = pair(node.value)
                moments.append(self.leaf_flip(x, "gte", lo))
                moments.append(self.leaf_flip(x, "lte", hi))
            else:
                moments.append(self.leaf_flip(x, node.op, node.value))
        return _least(moments)

    def next_events(self, node: Events) -> str | None:
        source, at = self.events_from(node)
        upcoming = f"(SELECT min({at}) {source} AND {at} > {self.a})"
        if node.within is None:
            return upcoming
        window, _ = self.window(node)
        oldest = f"(SELECT min({at}) {window})"
        return _least([upcoming, self.flip(oldest, node.within, strict=False)])


def _lower(x: str) -> str:
    """ASCII-only lower case whatever the database's locale (evaluate.lower's twin)."""
    return f'lower(({x}) COLLATE "C")'


def _or(parts: list[str]) -> str:
    return "(" + " OR ".join(parts) + ")"


def _and(parts: list[str]) -> str:
    return "(" + " AND ".join(parts) + ")"


def _least(moments: list[str | None]) -> str | None:
    known = [m for m in moments if m is not None]
    if not known:
        return None
    return known[0] if len(known) == 1 else "least(" + ", ".join(known) + ")"


def predicate_sql(
    node: Node, params: Params, *, as_of: str, alias: str = "p", columns: bool = False
) -> str:
    """A boolean SQL expression over one ``profiles`` row named ``alias``; ``as_of`` is an
    SQL expression of type timestamptz (e.g. ``"$2"``). Values go to ``params``.

    ``columns``: read the order aggregates from the profile's columns only. Exact only when
    no profile the expression reads has a completed order after as_of (check
    :data:`ORDERS_AFTER` in the same snapshot first); the usual case for as_of = now."""
    return _Compiler(params, as_of, alias, columns).predicate(node)


# $1 workspace, $2 as_of: whether some profile has an order after as_of (then the column-only
# predicate would be wrong for it). One probe of (workspace_id, last_order_at).
ORDERS_AFTER = (
    "SELECT EXISTS (SELECT 1 FROM profiles WHERE workspace_id = $1 AND last_order_at > $2)"
)


def next_transition_sql(node: Node, params: Params, *, as_of: str, alias: str = "p") -> str:
    """A timestamptz expression: the earliest moment strictly after ``as_of`` at which a
    clause of the rule changes with time alone for this row (NULL: never); the SQL twin of
    :func:`services.segmentation.domain.evaluate.next_transition`."""
    moment = _Compiler(params, as_of, alias).next_transition(node)
    return moment if moment is not None else "NULL::timestamptz"


async def load_facts(conn: asyncpg.Connection, workspace_id: str, contact_id: str) -> Facts | None:
    """Everything the rules read about one contact (for explain and next transitions);
    None when the read model holds nothing about it."""
    ws, cid = uuid.UUID(workspace_id), uuid.UUID(contact_id)
    p = await conn.fetchrow(
        "SELECT email, first_name, last_name, vip, score, suppressed, signed_up_at, created_at,"
        " tags, consents::text AS consents, last_visit_at, last_open_at, last_click_at,"
        " cart::text AS cart,"
        " (SELECT coalesce(jsonb_object_agg(key, value), '{}'::jsonb)::text"
        "  FROM jsonb_each_text(attributes)) AS attributes"
        " FROM profiles WHERE workspace_id = $1 AND contact_id = $2",
        ws,
        cid,
    )
    # to_jsonb(o) -> 'categories': the column arrives with the read model's migration 0021;
    # reading it through the row's JSON works with and without it.
    orders = await conn.fetch(
        "SELECT order_id, placed_at, status, total_minor, currency,"
        " coalesce(to_jsonb(o) -> 'categories', '[]'::jsonb)::text AS categories"
        " FROM orders o WHERE workspace_id = $1 AND contact_id = $2 ORDER BY placed_at, order_id",
        ws,
        cid,
    )
    activity = await conn.fetch(
        "SELECT kind, subject, at FROM activity WHERE workspace_id = $1 AND contact_id = $2"
        " ORDER BY at",
        ws,
        cid,
    )
    if p is None and not orders and not activity:
        return None
    loads: Callable[[str | None], Any] = _json
    return Facts(
        contact_id=contact_id,
        email=p["email"] if p else None,
        first_name=p["first_name"] if p else None,
        last_name=p["last_name"] if p else None,
        vip=bool(p and p["vip"]),
        score=int(p["score"]) if p else 0,
        suppressed=bool(p and p["suppressed"]),
        signed_up_at=p["signed_up_at"] if p else None,
        created_at=p["created_at"] if p else None,
        tags=tuple(p["tags"]) if p else (),
        attributes=loads(p["attributes"]) if p else {},
        consents=loads(p["consents"]) if p else {},
        last_visit_at=p["last_visit_at"] if p else None,
        last_open_at=p["last_open_at"] if p else None,
        last_click_at=p["last_click_at"] if p else None,
        cart=loads(p["cart"]) if p else None,
        orders=tuple(
            OrderFact(
                o["order_id"],
                o["placed_at"],
                o["status"],
                o["total_minor"],
                o["currency"],
                tuple(loads(o["categories"]) or ()),
            )
            for o in orders
        ),
        activity=tuple(ActivityFact(a["kind"], a["subject"], a["at"]) for a in activity),
    )


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)
