"""The Python evaluator: two-valued semantics, as_of, explain, and next transitions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.segmentation.domain.builtins import BUILT_IN, BY_ID
from services.segmentation.domain.evaluate import (
    ActivityFact,
    Facts,
    OrderFact,
    evaluate,
    explain,
    flips_at,
    next_transition,
)
from services.segmentation.domain.rules import Duration, Node, parse_rule

NOW = datetime(2026, 5, 31, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
DAY = timedelta(days=1)


def holds(doc: object, facts: Facts, at: datetime = NOW) -> bool:
    return evaluate(parse_rule(doc), facts, at)


def order(at: datetime, total: int = 1000, currency: str = "EUR", **kw: object) -> OrderFact:
    return OrderFact(f"o-{at.isoformat()}-{total}", at, "completed", total, currency, **kw)  # type: ignore[arg-type]


def test_a_missing_value_is_false_and_not_makes_it_true() -> None:
    never = Facts()
    lapsed = {"field": "last_order_at", "op": "lt", "value": {"ago": {"days": 90}}}
    assert not holds(lapsed, never)
    assert holds({"not": lapsed}, never)
    assert holds({"field": "last_order_at", "op": "not_exists"}, never)
    assert not holds({"field": "email", "op": "ne", "value": "a@b.c"}, never)


def test_orders_signups_and_activity_after_as_of_are_not_seen() -> None:
    facts = Facts(
        signed_up_at=NOW + US,
        orders=(order(NOW - DAY), order(NOW + US)),
        activity=(ActivityFact("page_viewed", "shoes", NOW + US),),
    )
    assert holds({"field": "orders", "op": "eq", "value": 1}, facts)
    assert holds({"field": "orders", "op": "eq", "value": 2}, facts, NOW + US)
    assert not holds({"field": "signed_up_at", "op": "exists"}, facts)
    assert not holds({"events": "page_view"}, facts)
    assert holds({"events": "page_view"}, facts, NOW + US)


def test_cancelled_and_refunded_orders_do_not_count() -> None:
    facts = Facts(
        orders=(
            order(NOW - DAY),
            OrderFact("c", NOW - DAY, "cancelled", 500, "EUR"),
            OrderFact("r", NOW - DAY, "refunded", 500, "EUR"),
        )
    )
    assert holds({"field": "orders", "op": "eq", "value": 1}, facts)
    assert holds({"field": "total_spent", "currency": "EUR", "op": "eq", "value": 1000}, facts)


def test_event_window_is_open_below_and_closed_above() -> None:
    rule = {"events": "order", "within": {"days": 60}, "count": {"op": "gte", "value": 2}}
    edge = NOW - 60 * DAY
    assert not holds(rule, Facts(orders=(order(edge), order(NOW))))
    assert holds(rule, Facts(orders=(order(edge + US), order(NOW))))
    assert not holds(rule, Facts(orders=(order(edge + US), order(NOW + US))))


def test_event_conditions() -> None:
    facts = Facts(
        orders=(order(NOW - DAY, 5000, categories=("shoes",)), order(NOW - DAY, 100, "USD")),
        activity=(
            ActivityFact("searched", "red shoes", NOW - DAY),
            ActivityFact("link_clicked", "https://shop.example/sale?x", NOW - DAY),
            ActivityFact("page_viewed", "Shoes", NOW - DAY),
        ),
    )
    assert holds({"events": "order", "where": {"category": "shoes"}}, facts)
    assert not holds({"events": "order", "where": {"category": "hats"}}, facts)
    assert holds({"events": "order", "where": {"min_total_minor": 5000, "currency": "EUR"}}, facts)
    assert not holds(
        {"events": "order", "where": {"min_total_minor": 5001, "currency": "EUR"}}, facts
    )
    assert holds({"events": "search", "where": {"query": "SHOES"}}, facts)
    assert holds({"events": "click", "where": {"url_prefix": "https://shop.example/"}}, facts)
    assert not holds({"events": "click", "where": {"url_prefix": "http://"}}, facts)
    assert not holds({"events": "page_view", "where": {"category": "shoes"}}, facts)
    assert holds({"events": "open", "count": {"op": "eq", "value": 0}}, facts)


def test_money_per_currency_and_exact_average() -> None:
    facts = Facts(orders=(order(NOW, 1000), order(NOW, 1001), order(NOW, 99, "USD")))
    aov = {"field": "average_order_value", "currency": "EUR"}
    assert holds({**aov, "op": "eq", "value": 1000.5}, facts)
    assert holds({**aov, "op": "gt", "value": 1000.49999}, facts)
    assert not holds({**aov, "op": "gt", "value": 1000.5}, facts)
    assert not holds({**aov, "op": "exists", "currency": "GBP"}, facts)
    assert holds({"field": "total_spent", "currency": "GBP", "op": "eq", "value": 0}, facts)
    assert holds({"field": "total_spent", "currency": "USD", "op": "in", "value": [99, 1]}, facts)


def test_cart_in_another_currency_is_missing() -> None:
    facts = Facts(cart={"total_minor": 5000, "currency": "USD", "items": 2})
    value = {"field": "cart_value", "op": "gte", "value": 1}
    assert holds({**value, "currency": "USD"}, facts)
    assert not holds({**value, "currency": "EUR"}, facts)
    assert holds({"not": {**value, "currency": "EUR"}}, facts)
    assert holds({"field": "cart_items", "op": "eq", "value": 2}, facts)


@pytest.mark.parametrize(
    ("raw", "rule", "expected"),
    [
        ("12.50", {"op": "gt", "value": 12}, True),
        ("1e2", {"op": "eq", "value": 100}, True),
        ("twelve", {"op": "gt", "value": 12}, False),
        ("NaN", {"op": "ne", "value": 1}, False),
        ("true", {"op": "eq", "value": True}, True),
        ("True", {"op": "eq", "value": True}, False),
        ("2026-02-28", {"op": "lt", "value": {"date": "2026-03-01"}}, True),
        ("2026-02-30", {"op": "lt", "value": {"date": "2026-03-01"}}, False),
        ("20260228", {"op": "lt", "value": {"date": "2026-03-01"}}, False),
        ("Gold", {"op": "ci_eq", "value": "gOLD"}, True),
        ("Gold", {"op": "eq", "value": "gold"}, False),
        ("ÉCLAIR", {"op": "ci_eq", "value": "éclair"}, False),  # ASCII letters only
    ],
)
def test_attribute_comparisons_by_value_type(
    raw: str, rule: dict[str, object], expected: bool
) -> None:
    assert holds({"attribute": "plan", **rule}, Facts(attributes={"plan": raw})) is expected


def test_tags_and_consent() -> None:
    facts = Facts(tags=("newsletter",), consents={"marketing": {"state": "granted"}})
    assert holds({"tag": "newsletter"}, facts)
    assert holds({"not": {"tag": "vip"}}, facts)
    assert holds({"consent": "marketing"}, facts)
    assert not holds({"consent": "automations"}, facts)
    revoked = Facts(consents={"marketing": {"state": "withdrawn"}})
    assert not holds({"consent": "marketing"}, revoked)


def test_explain_shows_the_values_each_clause_read() -> None:
    rule = parse_rule(
        {
            "all": [
                {"field": "orders", "op": "gte", "value": 2},
                {"field": "last_order_at", "op": "gte", "value": {"ago": {"days": 60}}},
                {"segment": "vip"},
            ]
        }
    )
    facts = Facts(orders=(order(datetime(2026, 5, 1, tzinfo=UTC)),), vip=True)
    root = explain(rule, facts, NOW)
    assert (root.path, root.kind, root.held) == ("rule", "all", False)
    first, second, third = root.children
    assert (first.path, first.held, first.summary) == ("rule.all[0]", False, "orders >= 2")
    assert first.observed == {"orders": "1"}
    assert second.held and second.observed == {
        "last_order_at": "2026-05-01T00:00:00Z",
        "bound": "2026-04-01T12:00:00Z",
    }
    assert second.summary == "last_order_at >= as_of - 60 days"
    assert (third.kind, third.held, third.summary) == ("segment", True, "member of segment 'vip'")
    assert third.children[0].observed == {"vip": "true"}


def test_explain_agrees_with_evaluate_for_every_built_in() -> None:
    facts = Facts(orders=(order(NOW - 100 * DAY), order(NOW - 95 * DAY)), signed_up_at=NOW)
    for segment in BUILT_IN:
        assert explain(segment.node, facts, NOW).held == evaluate(segment.node, facts, NOW)


# -- next transitions --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x", "months", "strict", "expected"),
    [
        # x + 1 month keeps the day: flips a microsecond after it (strict) or at it
        (datetime(2026, 1, 15, 10, tzinfo=UTC), 1, True, datetime(2026, 2, 15, 10, 0, 0, 1, UTC)),
        (datetime(2026, 1, 15, 10, tzinfo=UTC), 1, False, datetime(2026, 2, 15, 10, tzinfo=UTC)),
        # 31 January + 1 month is clamped to 28 February: nothing passes until 1 March
        (datetime(2026, 1, 31, 10, tzinfo=UTC), 1, True, datetime(2026, 3, 1, tzinfo=UTC)),
        (datetime(2026, 1, 31, 10, tzinfo=UTC), 1, False, datetime(2026, 3, 1, tzinfo=UTC)),
        (datetime(2024, 1, 31, 10, tzinfo=UTC), 1, True, datetime(2024, 3, 1, tzinfo=UTC)),
        (datetime(2025, 11, 30, 23, tzinfo=UTC), 3, True, datetime(2026, 3, 1, tzinfo=UTC)),
        (datetime(2026, 2, 28, 10, tzinfo=UTC), 1, True, datetime(2026, 3, 28, 10, 0, 0, 1, UTC)),
    ],
)
def test_month_flips_respect_postgresql_clamping(
    x: datetime, months: int, strict: bool, expected: datetime
) -> None:
    assert flips_at(x, Duration("months", months), strict) == expected
    op = "gte" if strict else "gt"
    rule = parse_rule({"field": "last_order_at", "op": op, "value": {"ago": {"months": months}}})
    facts = Facts(orders=(order(x),))
    assert evaluate(rule, facts, x)
    assert evaluate(rule, facts, expected - US)
    assert not evaluate(rule, facts, expected)
    assert next_transition(rule, facts, x) == expected


LEAF_RULES = [
    {"field": "last_order_at", "op": op, "value": {"ago": {unit: n}}}
    for op in ("lt", "lte", "gt", "gte")
    for unit, n in (("days", 30), ("months", 1), ("months", 3), ("hours", 5))
] + [
    {
        "field": "signed_up_at",
        "op": "between",
        "value": [{"ago": {"months": 3}}, {"ago": {"days": 2}}],
    },
    {"events": "order", "within": {"days": 60}, "count": {"op": "gte", "value": 1}},
    {"events": "order", "within": {"months": 1}},
    {"events": "page_view", "within": {"hours": 48}, "where": {"category": "shoes"}},
]
moments = st.datetimes(
    min_value=datetime(2023, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=150, deadline=None)
@given(
    rule_index=st.integers(0, len(LEAF_RULES) - 1),
    order_times=st.lists(moments, max_size=3),
    signup=st.none() | moments,
    views=st.lists(moments, max_size=3),
    as_of=moments,
)
def test_a_single_clause_changes_exactly_at_its_next_transition(
    rule_index: int,
    order_times: list[datetime],
    signup: datetime | None,
    views: list[datetime],
    as_of: datetime,
) -> None:
    rule: Node = parse_rule(LEAF_RULES[rule_index])
    facts = Facts(
        signed_up_at=signup,
        orders=tuple(order(t, n) for n, t in enumerate(order_times)),
        activity=tuple(ActivityFact("page_viewed", "shoes", t) for t in views),
    )
    now = evaluate(rule, facts, as_of)
    moment = next_transition(rule, facts, as_of)
    if moment is None:
        for later in (as_of + DAY, as_of + 400 * DAY, as_of + 4000 * DAY):
            assert evaluate(rule, facts, later) == now
        return
    assert moment > as_of
    assert evaluate(rule, facts, moment - US) == now  # not before
    samples = [as_of + (moment - as_of) * k / 7 for k in range(1, 7)]
    assert all(evaluate(rule, facts, t) == now for t in samples if t < moment)
    # The change is the rule's (not only a clause's that leaves it as it is) when nothing
    # arrives after as_of and a window holds at most one event.
    nothing_arrives = all(t <= as_of for t in [*order_times, *views, *([signup] if signup else [])])
    events = "events" in LEAF_RULES[rule_index]
    if nothing_arrives and (not events or len(order_times) + len(views) <= 1):
        assert evaluate(rule, facts, moment) != now  # ... but then


def test_built_in_transitions_at_their_boundaries() -> None:
    last = datetime(2026, 1, 31, 10, tzinfo=UTC)
    buyer = Facts(orders=(order(last - DAY), order(last)))
    promising = BY_ID["promising"].node
    moment = next_transition(promising, buyer, last)
    assert moment == last + 60 * DAY + US
    assert evaluate(promising, buyer, moment - US) and not evaluate(promising, buyer, moment)
    reactivation = BY_ID["reactivation"].node
    moment = next_transition(reactivation, buyer, last)
    assert moment == datetime(2026, 5, 1, tzinfo=UTC)  # 31 Jan + 3 months clamps to 30 Apr
    assert not evaluate(reactivation, buyer, moment - US)
    assert evaluate(reactivation, buyer, moment)
    assert next_transition(BY_ID["vip"].node, buyer, last) is None


@settings(max_examples=150, deadline=None)
@given(
    order_times=st.lists(moments, max_size=5),
    signup=st.none() | moments,
    later=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=500)),
)
def test_built_ins_change_exactly_at_their_next_transition(
    order_times: list[datetime], signup: datetime | None, later: timedelta
) -> None:
    """With nothing arriving after as_of, a built-in's next transition is the moment the
    contact enters or leaves it (clauses that can no longer matter do not wake it)."""
    as_of = max([*order_times, *([signup] if signup else []), datetime(2023, 1, 1, tzinfo=UTC)])
    as_of += later
    facts = Facts(signed_up_at=signup, orders=tuple(order(t, n) for n, t in enumerate(order_times)))
    for segment in BUILT_IN:
        now = evaluate(segment.node, facts, as_of)
        moment = next_transition(segment.node, facts, as_of)
        if moment is None:
            for t in (as_of + DAY, as_of + 400 * DAY, as_of + 4000 * DAY):
                assert evaluate(segment.node, facts, t) == now, segment.id
            continue
        assert moment > as_of
        assert evaluate(segment.node, facts, moment - US) == now, segment.id
        assert evaluate(segment.node, facts, moment) != now, segment.id
