"""The built-in segment rules at their boundaries, as pure predicates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.segmentation.adapters.segment_sql import PREDICATES
from services.segmentation.domain.segments import (
    BUILT_IN,
    BY_ID,
    ContactFacts,
    Order,
    OrderStatus,
    days_before,
    facts_at,
    months_before,
)

NOW = datetime(2026, 5, 31, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
LIFECYCLE = ("promising", "loyal", "passive", "lost", "passive_loyal", "lost_loyal")


def buyer(orders: int, last: datetime, first: datetime | None = None) -> ContactFacts:
    return ContactFacts(
        orders=orders, first_order_at=first or last - timedelta(days=1000), last_order_at=last
    )


def segments_of(facts: ContactFacts, now: datetime = NOW) -> set[str]:
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


def test_every_rule_has_exactly_one_sql_twin() -> None:
    assert set(PREDICATES) == set(BY_ID)


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
    assert "activation" in segments_of(ContactFacts(signed_up_at=edge))
    assert "activation" not in segments_of(ContactFacts(signed_up_at=edge - US))
    assert "activation" not in segments_of(ContactFacts(signed_up_at=NOW, orders=1))
    assert "activation" not in segments_of(ContactFacts())


def test_reactivation_needs_the_last_order_strictly_before_three_months_back() -> None:
    edge = months_before(NOW, 3)
    assert "reactivation" not in segments_of(buyer(1, edge))
    assert "reactivation" in segments_of(buyer(1, edge - US))
    assert "reactivation" in segments_of(buyer(7, edge - US))


def test_vip_is_the_star_alone() -> None:
    assert segments_of(ContactFacts(vip=True)) == {"vip"}


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
    assert not segments_of(ContactFacts()) & {"first_time_buyer", "repeat_buyer"}


def test_cancelled_refunded_and_later_orders_do_not_count() -> None:
    day = timedelta(days=1)
    facts = facts_at(
        NOW,
        vip=False,
        signed_up_at=NOW + day,
        orders=[
            Order(NOW - 3 * day, OrderStatus.COMPLETED),
            Order(NOW - 2 * day, OrderStatus.CANCELLED),
            Order(NOW - day, OrderStatus.REFUNDED),
            Order(None, OrderStatus.CANCELLED),
            Order(NOW, OrderStatus.COMPLETED),
            Order(NOW + US, OrderStatus.COMPLETED),
        ],
    )
    assert facts == ContactFacts(
        vip=False,
        signed_up_at=None,  # signs up after the evaluation time: not yet known then
        orders=2,
        first_order_at=NOW - 3 * day,
        last_order_at=NOW,
    )
