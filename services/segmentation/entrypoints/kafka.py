"""The read model's consumer: contacts.events.v1 and shop.events.v1 envelopes in, read-model
changes out. Decoding only; what a change does is in the handlers."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import asyncpg
from aiokafka import ConsumerRecord
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.events.v1.envelope_pb2 import Envelope

from services.segmentation import handlers
from services.segmentation.domain.readmodel import (
    OrderPlaced,
    OrderVoided,
    ProfileSnapshot,
    ReadModelChange,
    SignedUp,
    order_key,
)
from services.segmentation.domain.segments import OrderStatus

log = logging.getLogger(__name__)


def change_of(envelope: Envelope) -> tuple[str, ReadModelChange] | None:
    """The contact id and read-model change an envelope carries, or None when it carries
    nothing the read model keeps (consent changes, carts, page views...)."""
    payload = envelope.WhichOneof("payload")
    if payload in ("contact_created", "contact_updated"):
        c = getattr(envelope, payload).contact
        snapshot = ProfileSnapshot(
            contact_id=c.id,
            email=c.email,
            vip=c.vip,
            tags=tuple(c.tags),
            attributes=dict(c.attributes),
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
                order_id=order_key(placed.order_id, envelope.event_id),
                placed_at=at,
                total_minor=placed.total.amount_minor,
                currency=placed.total.currency,
            )
        case "order_cancelled" | "order_refunded" as kind:
            order_id = getattr(event, kind).order_id
            if not order_id:
                log.warning("ignoring %s without an order id", kind)
                return None
            status = OrderStatus.CANCELLED if kind == "order_cancelled" else OrderStatus.REFUNDED
            return contact_id, OrderVoided(contact_id, order_id, status)
    return None


async def on_event(pool: asyncpg.Pool, envelope: Envelope, record: ConsumerRecord) -> None:
    try:
        decoded = change_of(envelope)
    except (ValueError, OverflowError):
        # A time no datetime can hold will not decode on a retry either: skip, do not block.
        log.error(
            "skipping undecodable %s at %s[%d]@%d",
            envelope.type,
            record.topic,
            record.partition,
            record.offset,
            exc_info=True,
        )
        return
    if decoded is None:
        return
    contact_id, change = decoded
    if not (envelope.event_id and _is_uuid(envelope.workspace_id) and _is_uuid(contact_id)):
        log.error(
            "skipping %s at %s[%d]@%d: malformed workspace, contact or event id",
            envelope.type,
            record.topic,
            record.partition,
            record.offset,
        )
        return
    await handlers.apply_change(pool, envelope.workspace_id, envelope.event_id, change)


def _time(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
