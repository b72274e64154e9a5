"""The built-in segment rules at their boundaries, through the Python evaluator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.segmentation.domain.builtins import BUILT_IN, BY_ID
from services.segmentation.domain.evaluate import Facts, OrderFact, evaluate, field_value
from services.segmentation.domain.rules import parse_rule
from services.segmentation.domain.segments import days_before, months_before

NOW = datetime(2026, 5, 31, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
LIFECYCLE = ("promising", "loyal", "passive", "lost", "passive_loyal", "lost_loyal")


def order(at: datetime, status: str = "completed", n: int = 0) -> OrderFact:
    return OrderFact(f"o-{n}-{at.isoformat()}", at, status, 100, "EUR")


def buyer(orders: int, last: datetime, first: datetime | None = None) -> Facts:
    """``orders`` completed orders, the first at ``first`` (default 1000 days before the
    last), the last at ``last``, any others between them."""
    first = first or last - timedelta(days=1000)
    if orders == 1:
        assert first == last or first == last - timedelta(days=1000)
        return Facts(orders=(order(last),))
    middle = [order(first + (last - first) / 2, n=i) for i in range(orders - 2)]
    return Facts(orders=(order(first), *middle, order(last, n=orders)))


def contact(signed_up_at: datetime | None = None, orders: int = 0, vip: bool = False) -> Facts:
    return Facts(
        vip=vip,
        signed_up_at=signed_up_at,
        orders=tuple(order(NOW - timedelta(hours=1), n=i) for i in range(orders)),
    )


def segments_of(facts: Facts, now: datetime = NOW) -> set[str]:
    return {s.id for s in BUILT_IN if s.contains(facts, now)}


def test_the_twelve_built_in_segments_of_the_domain_brief_in_order() -> None:
    assert [s.id for s in BUILT_IN] == [
        "activation",
        "reactivation",
        "vip",
        "new_customer",
        "promising",
        "loyal",
        "passive",
        "lost",
        "passive_loyal",
        "lost_loyal",
        "first_time_buyer",
        "repeat_buyer",
    ]
    assert all(s.description for s in BUILT_IN)


def test_every_built_in_is_a_valid_rule_document() -> None:
    for segment in BUILT_IN:
        assert parse_rule(segment.rule) == segment.node
        assert BY_ID[segment.id] is segment


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 5, 31, 12, tzinfo=UTC), datetime(2026, 2, 28, 12, tzinfo=UTC)),
        (datetime(2024, 5, 31, 12, tzinfo=UTC), datetime(2024, 2, 29, 12, tzinfo=UTC)),
        (datetime(2026, 1, 15, 0, 30, tzinfo=UTC), datetime(2025, 10, 15, 0, 30, tzinfo=UTC)),
        (datetime(2026, 3, 31, tzinfo=UTC), datetime(2025, 12, 31, tzinfo=UTC)),
    ],
)
def test_three_calendar_months_clamp_to_the_end_of_a_shorter_month(
    moment: datetime, expected: datetime
) -> None:
    assert months_before(moment, 3) == expected


def test_days_are_24_hours_in_utc() -> None:
    assert days_before(NOW, 30) == NOW - timedelta(hours=720)


def test_activation_starts_exactly_three_months_back_and_ends_at_the_first_order() -> None:
    edge = months_before(NOW, 3)
    assert "activation" in segments_of(contact(signed_up_at=edge))
    assert "activation" not in segments_of(contact(signed_up_at=edge - US))
    assert "activation" not in segments_of(contact(signed_up_at=NOW, orders=1))
    assert "activation" not in segments_of(contact())


def test_reactivation_needs_the_last_order_strictly_before_three_months_back() -> None:
    edge = months_before(NOW, 3)
    assert "reactivation" not in segments_of(buyer(1, edge))
    assert "reactivation" in segments_of(buyer(1, edge - US))
    assert "reactivation" in segments_of(buyer(7, edge - US))


def test_vip_is_the_star_alone() -> None:
    assert segments_of(contact(vip=True)) == {"vip"}


def test_new_customer_is_a_first_order_within_30_days() -> None:
    edge = days_before(NOW, 30)
    assert "new_customer" in segments_of(buyer(1, edge, first=edge))
    assert "new_customer" not in segments_of(buyer(1, edge - US, first=edge - US))
    assert "new_customer" in segments_of(buyer(3, NOW, first=edge))
    assert "new_customer" not in segments_of(buyer(3, NOW, first=edge - US))


@pytest.mark.parametrize(
    ("orders", "last", "expected"),
    [
        (1, days_before(NOW, 30), {"new_customer"}),
        (1, days_before(NOW, 30) - US, {"passive"}),
        (1, days_before(NOW, 90), {"passive"}),
        (1, days_before(NOW, 90) - US, {"lost"}),
        (2, days_before(NOW, 60), {"promising"}),
        (3, days_before(NOW, 60) - US, {"passive"}),
        (3, days_before(NOW, 90), {"passive"}),
        (2, days_before(NOW, 90) - US, {"lost"}),
        (4, days_before(NOW, 90), {"loyal"}),
        (4, days_before(NOW, 90) - US, {"passive_loyal"}),
        (9, days_before(NOW, 365), {"passive_loyal"}),
        (9, days_before(NOW, 365) - US, {"lost_loyal"}),
    ],
)
def test_lifecycle_boundaries(orders: int, last: datetime, expected: set[str]) -> None:
    first = last if orders == 1 else last - timedelta(days=1000)
    assert segments_of(buyer(orders, last, first)) & {*LIFECYCLE, "new_customer"} == expected


def test_every_buyer_is_in_exactly_one_lifecycle_stage() -> None:
    """new_customer (for one order) and the RFM stages partition everyone who ordered."""
    offsets = [timedelta()] + [
        days_before(NOW, d) - NOW + e for d in (30, 60, 90, 365) for e in (-US, timedelta(), US)
    ]
    for orders in range(1, 7):
        for offset in offsets:
            facts = buyer(orders, NOW + offset, NOW + offset if orders == 1 else None)
            stages = segments_of(facts) & {*LIFECYCLE, "new_customer"}
            if orders > 1:
                stages.discard("new_customer")
            assert len(stages) == 1, (orders, offset, stages)


def test_first_time_and_repeat_buyers() -> None:
    assert "first_time_buyer" in segments_of(buyer(1, NOW))
    assert "repeat_buyer" not in segments_of(buyer(1, NOW))
    assert "repeat_buyer" in segments_of(buyer(2, NOW))
    assert not segments_of(contact()) & {"first_time_buyer", "repeat_buyer"}


def test_cancelled_refunded_and_later_orders_do_not_count() -> None:
    day = timedelta(days=1)
    facts = Facts(
        signed_up_at=NOW + day,
        orders=(
            order(NOW - 3 * day),
            order(NOW - 2 * day, "cancelled"),
            order(NOW - day, "refunded"),
            OrderFact("never-placed", None, "cancelled"),
            order(NOW),
            order(NOW + US),
        ),
    )
    # signs up after the evaluation time: not yet known then
    assert field_value(facts, "signed_up_at", NOW) is None
    assert field_value(facts, "orders", NOW) == 2
    assert field_value(facts, "first_order_at", NOW) == NOW - 3 * day
    assert field_value(facts, "last_order_at", NOW) == NOW
    assert evaluate(BY_ID["repeat_buyer"].node, facts, NOW)
    assert not evaluate(BY_ID["repeat_buyer"].node, facts, NOW - 2 * day)
