"""The built-in segments of domain.md, as pure predicates over one contact's facts.

A segment is evaluated at a moment ``now`` (the evaluation time, ``as_of``). Its facts are
what is known today, less what happened after ``now``: completed orders placed at or before
``now`` (orders cancelled or refunded, even later, do not count), and the signup time if it
is not after ``now``. The VIP star is the current state (the read model keeps no history of
it). So an ``as_of`` in the past is not a snapshot of the past (the package docstring).

Months are calendar months, as PostgreSQL's ``interval '3 months'`` computes them (the same
day of the month, clamped to the month's last day); days are 24-hour days; all times are UTC.

The same rules are written once in SQL in :mod:`services.segmentation.adapters.segment_sql`;
a test runs both over edge-case contacts and requires that they agree.
"""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum


class OrderStatus(StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    REFUNDED = "refunded"


@dataclass(frozen=True)
class Order:
    placed_at: datetime | None  # None when a cancellation arrived before the placement
    status: OrderStatus


@dataclass(frozen=True)
class ContactFacts:
    """What the rules look at: one contact's order aggregates and profile, at ``now``."""

    vip: bool = False
    signed_up_at: datetime | None = None
    orders: int = 0  # completed orders
    first_order_at: datetime | None = None
    last_order_at: datetime | None = None


def facts_at(
    now: datetime, *, vip: bool, signed_up_at: datetime | None, orders: Iterable[Order]
) -> ContactFacts:
    """A contact's facts for an evaluation at ``now`` (see the module docstring)."""
    placed = sorted(
        o.placed_at
        for o in orders
        if o.status == OrderStatus.COMPLETED and o.placed_at is not None and o.placed_at <= now
    )
    return ContactFacts(
        vip=vip,
        signed_up_at=signed_up_at if signed_up_at is not None and signed_up_at <= now else None,
        orders=len(placed),
        first_order_at=placed[0] if placed else None,
        last_order_at=placed[-1] if placed else None,
    )


def months_before(moment: datetime, months: int) -> datetime:
    """``moment - interval 'N months'`` as PostgreSQL computes it on UTC wall time."""
    utc = moment.astimezone(UTC)
    year, month0 = divmod(utc.year * 12 + utc.month - 1 - months, 12)
    day = min(utc.day, calendar.monthrange(year, month0 + 1)[1])
    return utc.replace(year=year, month=month0 + 1, day=day)


def days_before(moment: datetime, days: int) -> datetime:
    return moment.astimezone(UTC) - timedelta(days=days)


def _last_order_on_or_after(f: ContactFacts, since: datetime) -> bool:
    return f.last_order_at is not None and f.last_order_at >= since


def _last_order_before(f: ContactFacts, until: datetime) -> bool:
    return f.last_order_at is not None and f.last_order_at < until


def activation(f: ContactFacts, now: datetime) -> bool:
    return f.signed_up_at is not None and f.signed_up_at >= months_before(now, 3) and f.orders == 0


def reactivation(f: ContactFacts, now: datetime) -> bool:
    return f.orders >= 1 and _last_order_before(f, months_before(now, 3))


def vip(f: ContactFacts, now: datetime) -> bool:
    return f.vip


def new_customer(f: ContactFacts, now: datetime) -> bool:
    return f.first_order_at is not None and f.first_order_at >= days_before(now, 30)


def promising(f: ContactFacts, now: datetime) -> bool:
    return 2 <= f.orders <= 3 and _last_order_on_or_after(f, days_before(now, 60))


def loyal(f: ContactFacts, now: datetime) -> bool:
    return f.orders >= 4 and _last_order_on_or_after(f, days_before(now, 90))


def passive(f: ContactFacts, now: datetime) -> bool:
    lapsed = (f.orders == 1 and _last_order_before(f, days_before(now, 30))) or (
        2 <= f.orders <= 3 and _last_order_before(f, days_before(now, 60))
    )
    return lapsed and _last_order_on_or_after(f, days_before(now, 90))


def lost(f: ContactFacts, now: datetime) -> bool:
    return 1 <= f.orders <= 3 and _last_order_before(f, days_before(now, 90))


def passive_loyal(f: ContactFacts, now: datetime) -> bool:
    return (
        f.orders >= 4
        and _last_order_before(f, days_before(now, 90))
        and _last_order_on_or_after(f, days_before(now, 365))
    )


def lost_loyal(f: ContactFacts, now: datetime) -> bool:
    return f.orders >= 4 and _last_order_before(f, days_before(now, 365))


def first_time_buyer(f: ContactFacts, now: datetime) -> bool:
    return f.orders == 1


def repeat_buyer(f: ContactFacts, now: datetime) -> bool:
    return f.orders >= 2


Rule = Callable[[ContactFacts, datetime], bool]


@dataclass(frozen=True)
class BuiltInSegment:
    id: str  # also its name in the API: built-in segments are named by their id
    name: str
    description: str
    rule: Rule

    def contains(self, facts: ContactFacts, now: datetime) -> bool:
        return self.rule(facts, now)


BUILT_IN: tuple[BuiltInSegment, ...] = (
    BuiltInSegment(
        "activation",
        "Activation",
        "Signed up in the last 3 months and has not ordered yet.",
        activation,
    ),
    BuiltInSegment(
        "reactivation",
        "Reactivation",
        "Has ordered, but not in the last 3 months.",
        reactivation,
    ),
    BuiltInSegment("vip", "VIP", "Starred by the manager.", vip),
    BuiltInSegment(
        "new_customer",
        "New customer",
        "First order in the last 30 days.",
        new_customer,
    ),
    BuiltInSegment(
        "promising",
        "Promising",
        "2-3 orders, the last one in the last 60 days.",
        promising,
    ),
    BuiltInSegment(
        "loyal",
        "Loyal",
        "4 or more orders, the last one in the last 90 days.",
        loyal,
    ),
    BuiltInSegment(
        "passive",
        "Passive",
        "1 order more than 30 days ago, or 2-3 orders with the last more than 60 days ago;"
        " in both cases the last order in the last 90 days.",
        passive,
    ),
    BuiltInSegment(
        "lost",
        "Lost",
        "1-3 orders, the last one more than 90 days ago.",
        lost,
    ),
    BuiltInSegment(
        "passive_loyal",
        "Passive loyal",
        "4 or more orders, the last one between 90 and 365 days ago.",
        passive_loyal,
    ),
    BuiltInSegment(
        "lost_loyal",
        "Lost loyal",
        "4 or more orders, the last one more than 365 days ago.",
        lost_loyal,
    ),
    BuiltInSegment(
        "first_time_buyer",
        "First-time buyer",
        "Exactly 1 order.",
        first_time_buyer,
    ),
    BuiltInSegment(
        "repeat_buyer",
        "Repeat buyer",
        "2 or more orders.",
        repeat_buyer,
    ),
)

BY_ID: dict[str, BuiltInSegment] = {s.id: s for s in BUILT_IN}
