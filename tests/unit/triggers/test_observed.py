"""How envelopes become what the engine sees: keys, run vars, money, machine opens."""

from __future__ import annotations

from datetime import UTC, datetime

from nudge.segmentation.v1 import events_pb2 as segmentation_events
from nudge.shop.v1 import shop_pb2
from nudge.tracking.v1 import events_pb2 as tracking_events

from services.common.events import new_envelope
from services.triggers.runtime.observed import entry_key, money, observe

AT = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def item(name: str, category: str, quantity: int, cents: int) -> shop_pb2.LineItem:
    return shop_pb2.LineItem(
        product_id=name.lower(),
        name=name,
        category=category,
        quantity=quantity,
        unit_price=shop_pb2.Money(amount_minor=cents, currency="EUR"),
    )


def test_money_is_shown_with_two_decimals_and_thousands() -> None:
    assert money(100_000, "EUR") == "1,000.00 EUR"
    assert money(1205, "EUR") == "12.05 EUR"
    assert money(-50, "USD") == "-0.50 USD"


def test_a_cart_carries_its_items_total_and_url_as_run_vars() -> None:
    event = shop_pb2.ShopEvent(
        contact_id="c1",
        cart_updated=shop_pb2.CartUpdated(
            cart_id="cart-1",
            items=[item("Blue mug", "mugs", 2, 1200), item("Tea", "tea", 1, 500)],
            total=shop_pb2.Money(amount_minor=2900, currency="EUR"),
            cart_url="https://shop.example/c/1",
        ),
    )
    event.occurred_at.FromDatetime(AT)
    obs = observe(new_envelope("ws", event))
    assert obs is not None
    assert obs.seen.occurred_at == AT  # the shop's own time, not the envelope's
    assert (obs.seen.key, obs.seen.items, obs.seen.total_minor) == ("cart-1", 3, 2900)
    assert obs.vars == {
        "cart_id": "cart-1",
        "cart_url": "https://shop.example/c/1",
        "cart_items": "2 x Blue mug (12.00 EUR)\n1 x Tea (5.00 EUR)",
        "cart_total": "29.00 EUR",
        "item_count": "3",
    }


def test_an_order_is_keyed_by_its_cart_and_counts_as_money_spent() -> None:
    event = shop_pb2.ShopEvent(
        contact_id="c1",
        order_placed=shop_pb2.OrderPlaced(
            order_id="o-1",
            cart_id="cart-1",
            items=[
                item("Tea", "tea", 1, 500),
                item("Mug", "mugs", 1, 700),
                item("Oolong", "tea", 1, 1),
            ],
            total=shop_pb2.Money(amount_minor=1201, currency="EUR"),
        ),
    )
    obs = observe(new_envelope("ws", event))
    assert obs is not None
    assert obs.seen.key == "cart-1"  # so that same_key exit rules end that cart's run
    assert (obs.spent_minor, obs.currency, obs.activity) == (1201, "EUR", True)
    assert obs.vars["categories"] == "tea, mugs"
    assert obs.vars["first_category"] == "tea"
    assert entry_key(None, obs) == "o-1"
    assert entry_key("cart_id", obs) == "cart-1"


def test_machine_opens_are_not_the_customer() -> None:
    machine = tracking_events.MessageOpened(message_id="m", contact_id="c1", machine_open=True)
    human = tracking_events.MessageOpened(message_id="m", contact_id="c1")
    assert observe(new_envelope("ws", machine)) is None
    obs = observe(new_envelope("ws", human))
    assert obs is not None and obs.seen.event == "message_opened" and obs.activity


def test_a_segment_exit_names_the_segment_it_left() -> None:
    change = segmentation_events.SegmentMembershipChanged(
        segment_id="vip",
        contact_id="c1",
        change=segmentation_events.MEMBERSHIP_CHANGE_EXITED,
    )
    obs = observe(new_envelope("ws", change))
    assert obs is not None
    assert (obs.seen.event, obs.seen.segment_id) == ("segment_exited", "vip")
    assert (obs.segment_entered, obs.segment_exited) == ("", "vip")
