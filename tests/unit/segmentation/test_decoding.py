"""How contacts and shop events become read-model changes, and which records are skipped."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from aiokafka import ConsumerRecord
from nudge.contacts.v1 import contacts_pb2, events_pb2
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.shop.v1 import shop_pb2
from nudge.tracking.v1 import events_pb2 as tracking_pb2

from services.common.events import new_envelope
from services.common.topics import SHOP_EVENTS
from services.segmentation.adapters.postgres import Pending, rounds
from services.segmentation.domain.readmodel import (
    MAX_ID,
    ConsentSet,
    OrderPlaced,
    OrderVoided,
    ProfileSnapshot,
    Removed,
    ScoreSet,
    Searched,
    SignedUp,
    Suppressed,
    TagsSet,
    UnusableEvent,
)
from services.segmentation.domain.segments import OrderStatus
from services.segmentation.entrypoints import kafka as kafka_entrypoint
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
    contact.version = 3
    contact.score = 40
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
            version=3,
            score=40,
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
        OrderVoided(CONTACT, "o-1", OrderStatus.CANCELLED, AT),
    )
    assert change_of(new_envelope(WS, refunded)) == (
        CONTACT,
        OrderVoided(CONTACT, "o-2", OrderStatus.REFUNDED, AT),
    )
    assert change_of(new_envelope(WS, shop(order_cancelled=shop_pb2.OrderCancelled()))) is None


def test_signups_count_and_searches_are_kept_lower_cased() -> None:
    assert change_of(new_envelope(WS, shop(signed_up=shop_pb2.SignedUp()))) == (
        CONTACT,
        SignedUp(CONTACT, AT),
    )
    assert change_of(new_envelope(WS, shop(searched=shop_pb2.Searched(query="Tea")))) == (
        CONTACT,
        Searched(CONTACT, AT, "tea"),
    )


def placed_envelope(
    order_id: str = "o-1", currency: str = "EUR", event_id: str | None = None
) -> Envelope:
    placed = shop(
        order_placed=shop_pb2.OrderPlaced(
            order_id=order_id, total=shop_pb2.Money(amount_minor=100, currency=currency)
        )
    )
    return new_envelope(WS, placed, event_id=event_id)


def test_ids_up_to_200_characters_are_kept() -> None:
    decoded = change_of(placed_envelope("o" * MAX_ID, event_id="e" * MAX_ID))
    assert decoded is not None and isinstance(decoded[1], OrderPlaced)
    assert decoded[1].order_id == "o" * MAX_ID


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        (placed_envelope("o" * (MAX_ID + 1)), "order id is longer than 200"),
        (placed_envelope("o-\x00"), "order id contains a NUL"),
        (placed_envelope(currency="EU\x00"), "currency contains a NUL"),
        (placed_envelope(event_id="e" * (MAX_ID + 1)), "event id is longer than 200"),
        (placed_envelope(event_id="ev-\x00"), "event id contains a NUL"),
        (
            new_envelope(WS, shop(order_refunded=shop_pb2.OrderRefunded(order_id="x" * 5000))),
            "order id is longer than 200",
        ),
        (
            new_envelope(
                WS,
                events_pb2.ContactUpdated(
                    contact=contacts_pb2.Contact(id=CONTACT, email="a@example.com", tags=["\x00"])
                ),
            ),
            "tag contains a NUL",
        ),
    ],
)
def test_values_postgresql_cannot_store_make_the_event_unusable(
    envelope: Envelope, reason: str
) -> None:
    with pytest.raises(UnusableEvent, match=reason):
        change_of(envelope)


def test_an_event_the_read_model_does_not_keep_is_not_checked() -> None:
    opened = tracking_pb2.MessageOpened(contact_id=CONTACT, machine_open=True)
    assert change_of(new_envelope(WS, opened, event_id="e" * 999)) is None


class Applied:
    """Stands in for the read-model writer: records what the entrypoint passed on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []

    async def apply(self, workspace_id: str, event_id: str, change: object) -> bool:
        self.calls.append((workspace_id, event_id, change))
        return True


@pytest.fixture
def applied() -> Applied:
    return Applied()


def record() -> ConsumerRecord:
    return SimpleNamespace(topic=SHOP_EVENTS, partition=0, offset=7)  # type: ignore[return-value]


async def test_a_poison_record_is_logged_and_skipped_not_retried(
    applied: Applied, caplog: pytest.LogCaptureFixture
) -> None:
    await kafka_entrypoint.on_event(applied, placed_envelope("o-\x00"), record())  # type: ignore[arg-type]
    assert applied.calls == []
    assert "order id contains a NUL character" in caplog.text
    assert f"{SHOP_EVENTS}[0]@7" in caplog.text


@pytest.mark.parametrize(
    "envelope",
    [
        new_envelope("not-a-workspace", shop(signed_up=shop_pb2.SignedUp())),
        new_envelope(WS, shop_pb2.ShopEvent(contact_id="nope", signed_up=shop_pb2.SignedUp())),
    ],
)
async def test_records_with_malformed_ids_are_skipped(applied: Applied, envelope: Envelope) -> None:
    await kafka_entrypoint.on_event(applied, envelope, record())  # type: ignore[arg-type]
    assert applied.calls == []


async def test_a_good_record_is_applied_under_its_event_id(applied: Applied) -> None:
    envelope = placed_envelope(event_id="ev-9")
    await kafka_entrypoint.on_event(applied, envelope, record())  # type: ignore[arg-type]
    assert applied.calls == [(WS, "ev-9", OrderPlaced(CONTACT, "o-1", AT, 100, "EUR"))]


def test_every_contact_event_becomes_a_versioned_change() -> None:
    tags = events_pb2.TagsChanged(contact_id=CONTACT, added=["b"], tags=["a", "b"], version=4)
    score = events_pb2.ScoreChanged(contact_id=CONTACT, delta=-5, score=35, version=5)
    consent = events_pb2.ConsentChanged(
        contact_id=CONTACT,
        purpose=contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
        status=contacts_pb2.CONSENT_STATUS_WITHDRAWN,
        source=contacts_pb2.CONSENT_SOURCE_PREFERENCE_PAGE,
        version=6,
    )
    suppressed = events_pb2.ContactSuppressed(
        contact_id=CONTACT, reason=contacts_pb2.SUPPRESSION_REASON_HARD_BOUNCE, version=7
    )
    deleted = events_pb2.ContactDeleted(contact_id=CONTACT, version=8)
    erased = events_pb2.ContactErased(contact_id=CONTACT, version=9)
    assert change_of(new_envelope(WS, tags)) == (CONTACT, TagsSet(CONTACT, 4, ("a", "b")))
    assert change_of(new_envelope(WS, score)) == (CONTACT, ScoreSet(CONTACT, 5, 35))
    assert change_of(new_envelope(WS, consent, occurred_at=AT)) == (
        CONTACT,
        ConsentSet(CONTACT, 6, "targeted_messages", "withdrawn", "preference_page", AT),
    )
    assert change_of(new_envelope(WS, suppressed)) == (
        CONTACT,
        Suppressed(CONTACT, 7, "hard_bounce"),
    )
    assert change_of(new_envelope(WS, deleted)) == (CONTACT, Removed(CONTACT, 8, erased=False))
    assert change_of(new_envelope(WS, erased)) == (CONTACT, Removed(CONTACT, 9, erased=True))


def test_a_consent_change_without_a_purpose_is_unusable_and_an_unknown_source_is_kept() -> None:
    with pytest.raises(UnusableEvent, match="without a purpose"):
        change_of(new_envelope(WS, events_pb2.ConsentChanged(contact_id=CONTACT, version=2)))
    newer = events_pb2.ConsentChanged(
        contact_id=CONTACT,
        purpose=contacts_pb2.CONSENT_PURPOSE_MARKETING,
        status=contacts_pb2.CONSENT_STATUS_GRANTED,
        source=99,  # type: ignore[arg-type]  # a source a newer contract added
        version=2,
    )
    decoded = change_of(new_envelope(WS, newer))
    assert decoded is not None and isinstance(decoded[1], ConsentSet)
    assert decoded[1].source == "unknown_99"


def pending(contact: str, event_id: str) -> Pending:
    return Pending(WS, event_id, ScoreSet(contact, 1, 0))


def test_a_batch_is_cut_where_a_contact_comes_again_so_its_changes_keep_their_order() -> None:
    other = "00000000-0000-4000-8000-0000000000c2"
    third = "00000000-0000-4000-8000-0000000000c3"
    items = [
        pending(CONTACT, "1"),
        pending(other, "2"),
        pending(CONTACT, "3"),
        pending(third, "4"),
        pending(CONTACT, "5"),
    ]
    assert rounds(items) == [[0, 1], [2, 3], [4]]
    assert rounds([]) == []
    # The same contact id in another workspace is another contact.
    assert rounds([pending(CONTACT, "1"), Pending(other, "2", ScoreSet(CONTACT, 1, 0))]) == [[0, 1]]
