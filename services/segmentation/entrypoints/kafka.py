"""The read model's consumer: contacts.events.v1 and shop.events.v1 envelopes in, read-model
changes out. Decoding and checking only; what a change does is in the handlers."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import asyncpg
from aiokafka import ConsumerRecord
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.ids import is_uuid
from services.segmentation import handlers
from services.segmentation.domain.readmodel import (
    OrderPlaced,
    OrderVoided,
    ProfileSnapshot,
    ReadModelChange,
    SignedUp,
    UnusableEvent,
    checked_id,
    checked_text,
    order_key,
)
from services.segmentation.domain.segments import OrderStatus

log = logging.getLogger(__name__)


def change_of(envelope: Envelope) -> tuple[str, ReadModelChange] | None:
    """The contact id and read-model change an envelope carries, or None when it carries
    nothing the read model keeps (consent changes, carts, page views...). Raises
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
            updated_at=_time(c.updated_at) if c.HasField("updated_at") else None,
        )
        return c.id, snapshot
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
            return contact_id, OrderPlaced(
                contact_id=contact_id,
                order_id=order_key(checked_id("order id", placed.order_id), envelope.event_id),
                placed_at=at,
                total_minor=placed.total.amount_minor,
                currency=checked_text("currency", placed.total.currency),
            )
        case "order_cancelled" | "order_refunded" as kind:
            order_id = getattr(event, kind).order_id
            if not order_id:
                log.warning("ignoring %s without an order id", kind)
                return None
            status = OrderStatus.CANCELLED if kind == "order_cancelled" else OrderStatus.REFUNDED
            return contact_id, OrderVoided(contact_id, checked_id("order id", order_id), status)
    return None


async def on_event(pool: asyncpg.Pool, envelope: Envelope, record: ConsumerRecord) -> None:
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
    await handlers.apply_change(pool, envelope.workspace_id, envelope.event_id, change)


def _time(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)
