"""The read model's consumer: contacts.events.v1, shop.events.v1 and tracking.events.v1
envelopes in, read-model changes out. Decoding and checking only; what a change does is in
the handlers."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.contacts.v1 import contacts_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.ids import is_uuid
from services.segmentation import handlers
from services.segmentation.domain.readmodel import (
    CartUpdated,
    ConsentSet,
    LinkClicked,
    MessageOpened,
    OrderPlaced,
    OrderVoided,
    PageViewed,
    ProfileSnapshot,
    ReadModelChange,
    Removed,
    ScoreSet,
    Searched,
    SignedUp,
    Suppressed,
    TagsSet,
    UnusableEvent,
    Visited,
    checked_id,
    checked_text,
    order_key,
    search_subject,
)
from services.segmentation.domain.segments import OrderStatus

log = logging.getLogger(__name__)


def change_of(envelope: Envelope) -> tuple[str, ReadModelChange] | None:
    """The contact id and read-model change an envelope carries, or None when it carries
    nothing the read model keeps (machine opens, unsubscribes...). Raises
    :class:`UnusableEvent` when what it carries cannot be stored (an id too long, a NUL)."""
    decoded = _decode(envelope)
    if decoded is not None:
        checked_id("event id", envelope.event_id)
    return decoded


def _decode(envelope: Envelope) -> tuple[str, ReadModelChange] | None:
    payload = envelope.WhichOneof("payload")
    if payload in ("contact_created", "contact_updated"):
        c = getattr(envelope, payload).contact
        snapshot = ProfileSnapshot(
            contact_id=c.id,
            email=checked_text("email", c.email),
            vip=c.vip,
            tags=tuple(checked_text("tag", t) for t in c.tags),
            attributes={
                checked_text("attribute name", k): checked_text("attribute", v)
                for k, v in c.attributes.items()
            },
            signed_up_at=_time(c.signed_up_at) if c.HasField("signed_up_at") else None,
            version=c.version,
            score=c.score,
            first_name=checked_text("first name", c.first_name),
            last_name=checked_text("last name", c.last_name),
        )
        return c.id, snapshot
    if payload == "tags_changed":
        t = envelope.tags_changed
        tags = tuple(checked_text("tag", tag) for tag in t.tags)
        return t.contact_id, TagsSet(t.contact_id, t.version, tags)
    if payload == "score_changed":
        sc = envelope.score_changed
        return sc.contact_id, ScoreSet(sc.contact_id, sc.version, sc.score)
    if payload == "consent_changed":
        cc = envelope.consent_changed
        purpose = _enum_name("ConsentPurpose", cc.purpose, "CONSENT_PURPOSE_")
        state = _enum_name("ConsentStatus", cc.status, "CONSENT_STATUS_")
        if purpose == "unspecified" or state == "unspecified":
            # Nothing to record; the next event's higher version is applied all the same.
            raise UnusableEvent("a consent change without a purpose or a status")
        source = _enum_name("ConsentSource", cc.source, "CONSENT_SOURCE_")
        at = _time(envelope.occurred_at)
        return cc.contact_id, ConsentSet(cc.contact_id, cc.version, purpose, state, source, at)
    if payload == "contact_suppressed":
        cs = envelope.contact_suppressed
        reason = _enum_name("SuppressionReason", cs.reason, "SUPPRESSION_REASON_")
        return cs.contact_id, Suppressed(cs.contact_id, cs.version, reason)
    if payload in ("contact_deleted", "contact_erased"):
        gone = getattr(envelope, payload)
        erased = payload == "contact_erased"
        return gone.contact_id, Removed(gone.contact_id, gone.version, erased=erased)
    if payload == "message_opened":
        opened = envelope.message_opened
        if opened.machine_open:  # a privacy proxy or a scanner, not the person
            return None
        return opened.contact_id, MessageOpened(opened.contact_id, _time(envelope.occurred_at))
    if payload == "link_clicked":
        clicked = envelope.link_clicked
        if clicked.machine_click:  # a link scanner, not the person
            return None
        url = checked_text("url", clicked.url)
        return clicked.contact_id, LinkClicked(clicked.contact_id, _time(envelope.occurred_at), url)
    if payload != "shop_event":
        return None
    event = envelope.shop_event
    at = _time(event.occurred_at if event.HasField("occurred_at") else envelope.occurred_at)
    contact_id = event.contact_id
    match event.WhichOneof("kind"):
        case "signed_up":
            return contact_id, SignedUp(contact_id, at)
        case "order_placed":
            placed = event.order_placed
            categories = {checked_text("category", i.category) for i in placed.items}
            return contact_id, OrderPlaced(
                contact_id=contact_id,
                order_id=order_key(checked_id("order id", placed.order_id), envelope.event_id),
                placed_at=at,
                total_minor=placed.total.amount_minor,
                currency=checked_text("currency", placed.total.currency),
                categories=tuple(sorted(categories - {""})),
                cart_id=checked_text("cart id", placed.cart_id),
            )
        case "cart_updated":
            cart = event.cart_updated
            return contact_id, CartUpdated(
                contact_id=contact_id,
                at=at,
                cart_id=checked_text("cart id", cart.cart_id),
                total_minor=cart.total.amount_minor,
                currency=checked_text("currency", cart.total.currency),
                items=sum(max(0, i.quantity) for i in cart.items),
            )
        case "page_viewed":
            category = checked_text("category", event.page_viewed.category)
            return contact_id, PageViewed(contact_id, at, category)
        case "searched":
            query = search_subject(checked_text("query", event.searched.query))
            return contact_id, Searched(contact_id, at, query)
        case "order_cancelled" | "order_refunded" as kind:
            order_id = getattr(event, kind).order_id
            if not order_id:
                log.warning("ignoring %s without an order id", kind)
                return None
            status = OrderStatus.CANCELLED if kind == "order_cancelled" else OrderStatus.REFUNDED
            return contact_id, OrderVoided(contact_id, checked_id("order id", order_id), status, at)
        case None:
            return None
    # Any other kind (a failed login, a kind this build does not know): a visit all the same.
    return contact_id, Visited(contact_id, at)


async def on_event(
    writer: handlers.ReadModelWriter, envelope: Envelope, record: ConsumerRecord
) -> None:
    """Apply one record to the read model. A record no retry could apply (undecodable, or
    with values the read model cannot store) is logged and skipped, so that it does not
    block the partition; any other failure propagates and the consumer loop retries it."""
    where = f"{envelope.type} at {record.topic}[{record.partition}]@{record.offset}"
    try:
        decoded = change_of(envelope)
    except UnusableEvent as err:
        log.error("skipping %s: %s", where, err)
        return
    except (ValueError, OverflowError):
        # A time no datetime can hold will not decode on a retry either: skip, do not block.
        log.error("skipping undecodable %s", where, exc_info=True)
        return
    if decoded is None:
        return
    contact_id, change = decoded
    if not (envelope.event_id and is_uuid(envelope.workspace_id) and is_uuid(contact_id)):
        log.error("skipping %s: malformed workspace, contact or event id", where)
        return
    await writer.apply(envelope.workspace_id, envelope.event_id, change)


def _enum_name(enum: str, value: int, prefix: str) -> str:
    """``CONSENT_PURPOSE_MARKETING`` -> ``marketing`` (``enum`` names a contacts.proto enum);
    a number this build does not know (a newer contract) is kept as ``unknown_<n>``."""
    known = contacts_pb2.DESCRIPTOR.enum_types_by_name[enum].values_by_number.get(value)
    if known is None:
        return f"unknown_{value}"
    return known.name.removeprefix(prefix).lower()


def _time(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)
