"""The report's pure rules: what an event becomes, how aggregates fold into a report (rates
0 without a denominator, variants, hold-out lift, final), the A/B winner, the call list's page
tokens and the CSV cells a spreadsheet must not run."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from nudge.campaigns.v1 import campaigns_pb2
from nudge.delivery.v1 import events_pb2 as delivery_events
from nudge.shop.v1 import shop_pb2
from nudge.tracking.v1 import events_pb2 as tracking_events

from services.campaigns import ab, report, stats
from services.common.events import new_envelope
from services.gateway.entrypoints.campaign_report import csv_cell

WS = str(uuid.uuid4())
MID = str(uuid.uuid4())
CONTACT = str(uuid.uuid4())
AT = datetime(2026, 5, 1, 12, tzinfo=UTC)


def mark(payload: Any, ws: str = WS) -> report.Observation | None:
    return report.observation_of(new_envelope(ws, payload, occurred_at=AT))


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (tracking_events.MessageOpened(message_id=MID, contact_id=CONTACT), "open_human"),
        (
            tracking_events.MessageOpened(message_id=MID, contact_id=CONTACT, machine_open=True),
            "open_machine",
        ),
        (tracking_events.LinkClicked(message_id=MID, contact_id=CONTACT), "click_human"),
        (
            tracking_events.LinkClicked(message_id=MID, contact_id=CONTACT, machine_click=True),
            "click_machine",
        ),
        (tracking_events.UnsubscribeRequested(message_id=MID, contact_id=CONTACT), "unsubscribed"),
        (delivery_events.MessageSent(message_id=MID, contact_id=CONTACT), "delivered"),
        (delivery_events.MessageDeferred(message_id=MID, contact_id=CONTACT), "deferred"),
        (delivery_events.MessageComplained(message_id=MID, contact_id=CONTACT), "complained"),
        (delivery_events.MessageUnknown(message_id=MID, contact_id=CONTACT), "unknown"),
    ],
)
def test_message_events_become_marks_of_their_kind(payload: Any, kind: str) -> None:
    observed = mark(payload)
    assert isinstance(observed, report.MessageMark)
    assert (observed.kind, str(observed.message_id), observed.at) == (kind, MID, AT)
    assert str(observed.contact_id) == CONTACT


@pytest.mark.parametrize(
    "payload",
    [
        tracking_events.MessageOpened(message_id="welcome-1", contact_id=CONTACT),  # not a uuid
        tracking_events.MessageOpened(message_id=MID),  # no contact: not a campaign's mail
        delivery_events.MessageUnknown(
            message_id=MID, contact_id=CONTACT, resent=True
        ),  # its outcome follows
        tracking_events.PreferencesChanged(message_id=MID, contact_id=CONTACT),
    ],
)
def test_what_the_report_does_not_keep_is_dropped(payload: Any) -> None:
    assert mark(payload) is None


def test_an_event_without_a_workspace_uuid_is_dropped() -> None:
    assert mark(tracking_events.MessageOpened(message_id=MID), ws="acme") is None


def test_an_order_is_named_by_its_id_or_else_by_its_event() -> None:
    event = shop_pb2.ShopEvent(
        contact_id=CONTACT,
        order_placed=shop_pb2.OrderPlaced(
            order_id="A-1", total=shop_pb2.Money(amount_minor=990, currency="eur")
        ),
    )
    observed = mark(event)
    assert observed == report.OrderPlaced(uuid.UUID(WS), "A-1", uuid.UUID(CONTACT), AT, 990, "EUR")
    event.order_placed.order_id = "x" * 500
    event.order_placed.total.currency = "eu\x00r-very-long-currency"
    env = new_envelope(WS, event, event_id="ev-1", occurred_at=AT)
    placed = report.observation_of(env)
    assert isinstance(placed, report.OrderPlaced) and placed.order_id == "event:ev-1"
    assert placed.currency == "EUR-VERY"  # no NUL, at most 8 characters
    voided = mark(shop_pb2.ShopEvent(order_refunded=shop_pb2.OrderRefunded(order_id="A-1")))
    assert voided == report.OrderVoided(uuid.UUID(WS), "A-1", AT)


def group(**values: int | str | None) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(stats._COUNTERS, 0)
    row.update(variant=0, excluded=None)
    row.update(values)
    return row


def test_an_empty_report_has_zero_rates_and_is_final_only_when_sent() -> None:
    r = stats.build_report("c", campaigns_pb2.CAMPAIGN_STATUS_SENT, None, 0, [], [], AT)
    assert (r.delivery_rate, r.bounce_rate, r.click_to_open_rate) == (0.0, 0.0, 0.0)
    assert r.opened.unique_human_rate == 0.0 and r.final
    assert not r.HasField("holdout") and not r.variants
    sending = stats.build_report("c", campaigns_pb2.CAMPAIGN_STATUS_SENDING, None, 0, [], [], AT)
    assert not sending.final


def test_rows_waiting_for_an_outcome_keep_a_sent_campaign_from_being_final() -> None:
    rows = [group(contacts=2, sent=2, delivered=1, waiting=1)]
    r = stats.build_report("c", campaigns_pb2.CAMPAIGN_STATUS_SENT, None, 0, rows, [], AT)
    assert not r.final and r.delivery_rate == 0.5


def test_variants_holdout_and_lift() -> None:
    ab_test = {"subjects": ["A", "B"], "winner": 1}
    rows = [
        group(variant=0, contacts=10, sent=10, delivered=10, clicked_unique_human=1),
        group(variant=1, contacts=10, sent=10, delivered=10, clicked_unique_human=4),
        group(variant=-1, contacts=80, sent=80, delivered=80),
        group(variant=0, excluded="holdout", contacts=20),
    ]
    orders = [
        {"variant": 1, "holdout": False, "currency": "EUR", "orders": 10, "revenue": 100},
        {"variant": 0, "holdout": True, "currency": "EUR", "orders": 1, "revenue": 7},
    ]
    r = stats.build_report("c", 3, ab_test, 20, rows, orders, AT)
    assert [(v.variant, v.subject, v.sent) for v in r.variants] == [
        (-1, "B", 80),
        (0, "A", 10),
        (1, "B", 10),
    ]
    assert r.variants[2].orders.orders == 10 and r.variants[2].clicked.unique_human_rate == 0.4
    assert r.audience == 120 and r.sent == 100
    assert (r.holdout.contacts, r.holdout.orders.orders) == (20, 1)
    assert r.holdout.order_rate == pytest.approx(0.05)
    assert r.holdout.lift == pytest.approx((10 / 100) / 0.05 - 1)
    no_orders = stats.build_report("c", 3, None, 20, rows, orders[:1], AT)
    assert no_orders.holdout.lift == 0.0


def test_the_winner_is_the_best_score_and_the_lowest_variant_on_a_tie() -> None:
    assert ab.pick_winner({0: 1, 1: 5, 2: 3}, 3) == 1
    assert ab.pick_winner({1: 2, 2: 2}, 3) == 1
    assert ab.pick_winner({}, 2) == 0
    rows = [
        {"variant": 0, "currency": "EUR", "score": 50},
        {"variant": 1, "currency": "USD", "score": 90},
        {"variant": 1, "currency": "EUR", "score": 40},
    ]
    assert ab.revenue_scores(rows) == {0: 50, 1: 40}


def test_page_tokens_round_trip_and_foreign_tokens_are_refused() -> None:
    after = uuid.uuid4()
    assert stats.decode_page_token(stats.encode_page_token(after)) == after
    for bad in ("", "bogus", "x" * 200, "djEuMTIz"):
        assert stats.decode_page_token(bad) is None


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+31 6", "'+31 6"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("Ada", "Ada"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_csv_cells_that_would_start_a_formula_are_quoted(value: str, cell: str) -> None:
    assert csv_cell(value) == cell
