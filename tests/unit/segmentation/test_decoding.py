"""How contacts and shop events become read-model changes."""

from __future__ import annotations

from datetime import UTC, datetime

from nudge.contacts.v1 import contacts_pb2, events_pb2
from nudge.shop.v1 import shop_pb2

from services.common.events import new_envelope
from services.segmentation.domain.readmodel import (
    OrderPlaced,
    OrderVoided,
    ProfileSnapshot,
    SignedUp,
)
from services.segmentation.domain.segments import OrderStatus
from services.segmentation.entrypoints.kafka import change_of

WS = "00000000-0000-4000-8000-000000000001"
CONTACT = "00000000-0000-4000-8000-0000000000c1"
AT = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def shop(**kind: object) -> shop_pb2.ShopEvent:
    event = shop_pb2.ShopEvent(contact_id=CONTACT, **kind)  # type: ignore[arg-type]
    event.occurred_at.FromDatetime(AT)
    return event


def test_a_created_contact_becomes_a_profile_snapshot() -> None:
    contact = contacts_pb2.Contact(
        id=CONTACT, email="ada@example.com", vip=True, tags=["a", "b"], attributes={"k": "v"}
    )
    contact.signed_up_at.FromDatetime(AT)
    contact.updated_at.FromDatetime(AT)
    env = new_envelope(WS, events_pb2.ContactCreated(contact=contact))
    assert change_of(env) == (
        CONTACT,
        ProfileSnapshot(
            contact_id=CONTACT,
            email="ada@example.com",
            vip=True,
            tags=("a", "b"),
            attributes={"k": "v"},
            signed_up_at=AT,
            updated_at=AT,
        ),
    )


def test_orders_are_placed_at_the_time_the_shop_reported() -> None:
    placed = shop(
        order_placed=shop_pb2.OrderPlaced(
            order_id="o-1", total=shop_pb2.Money(amount_minor=1250, currency="EUR")
        )
    )
    assert change_of(new_envelope(WS, placed)) == (
        CONTACT,
        OrderPlaced(CONTACT, "o-1", AT, 1250, "EUR"),
    )


def test_an_order_without_an_id_is_kept_under_its_event_id() -> None:
    env = new_envelope(WS, shop(order_placed=shop_pb2.OrderPlaced()), event_id="ev-1")
    decoded = change_of(env)
    assert decoded is not None
    assert isinstance(decoded[1], OrderPlaced)
    assert decoded[1].order_id == "event:ev-1"


def test_cancellations_and_refunds_void_the_order() -> None:
    cancelled = shop(order_cancelled=shop_pb2.OrderCancelled(order_id="o-1"))
    refunded = shop(order_refunded=shop_pb2.OrderRefunded(order_id="o-2"))
    assert change_of(new_envelope(WS, cancelled)) == (
        CONTACT,
        OrderVoided(CONTACT, "o-1", OrderStatus.CANCELLED),
    )
    assert change_of(new_envelope(WS, refunded)) == (
        CONTACT,
        OrderVoided(CONTACT, "o-2", OrderStatus.REFUNDED),
    )
    assert change_of(new_envelope(WS, shop(order_cancelled=shop_pb2.OrderCancelled()))) is None


def test_signups_count_and_browsing_is_not_kept_yet() -> None:
    assert change_of(new_envelope(WS, shop(signed_up=shop_pb2.SignedUp()))) == (
        CONTACT,
        SignedUp(CONTACT, AT),
    )
    assert change_of(new_envelope(WS, shop(searched=shop_pb2.Searched(query="tea")))) is None
    consent = events_pb2.ConsentChanged(contact_id=CONTACT)
    assert change_of(new_envelope(WS, consent)) is None
