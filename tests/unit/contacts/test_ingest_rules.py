"""When two events sent with one idempotency key are the same event, and what one event
must hold: pure rules of ingestion, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from nudge.contacts.v1 import contacts_pb2
from nudge.shop.v1 import shop_pb2

from services.contacts.handlers import check_event, event_fingerprint

ADA, BOB = uuid.uuid4(), uuid.uuid4()
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def order(order_id: str, **event: object) -> shop_pb2.ShopEvent:
    return shop_pb2.ShopEvent(
        order_placed=shop_pb2.OrderPlaced(order_id=order_id),
        **event,  # type: ignore[arg-type]
    )


def test_the_same_event_of_the_same_contact_has_the_same_fingerprint() -> None:
    assert event_fingerprint(ADA, order("o-1")) == event_fingerprint(ADA, order("o-1"))
    # The contact_id inside the event is ignored by ingestion, so by the fingerprint too.
    assert event_fingerprint(ADA, order("o-1", contact_id="x")) == event_fingerprint(
        ADA, order("o-1")
    )


def test_another_contact_type_data_or_time_is_another_event() -> None:
    first = event_fingerprint(ADA, order("o-1"))
    assert event_fingerprint(BOB, order("o-1")) != first
    assert event_fingerprint(ADA, order("o-2")) != first
    assert event_fingerprint(ADA, shop_pb2.ShopEvent(signed_up=shop_pb2.SignedUp())) != first
    assert event_fingerprint(ADA, order("o-1", occurred_at=Timestamp(seconds=1))) != first


def test_an_event_without_time_occurs_now_and_one_in_the_future_is_refused() -> None:
    request = shop_pb2.TrackEventRequest(
        idempotency_key="k",
        contact=contacts_pb2.ContactRef(email="ada@example.com"),
        event=order("o-1"),
    )
    assert check_event(request, NOW) == ([], NOW)
    request.event.occurred_at.FromDatetime(NOW + timedelta(hours=1))
    violations, _ = check_event(request, NOW)
    assert [v.field for v in violations] == ["event.occurred_at"]
    violations, _ = check_event(shop_pb2.TrackEventRequest(), NOW)
    assert [v.field for v in violations] == ["idempotency_key", "contact", "event.kind"]
