"""What the contact read model learns from other services' events: pure values, no I/O.

The Kafka entrypoint turns ``contacts.events.v1`` and ``shop.events.v1`` envelopes into these;
the handlers apply them to ``profiles`` and ``orders``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from services.segmentation.domain.segments import OrderStatus


@dataclass(frozen=True)
class ProfileSnapshot:
    """The contact as contacts last published it (ContactCreated, ContactUpdated)."""

    contact_id: str
    email: str
    vip: bool
    tags: tuple[str, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)
    signed_up_at: datetime | None = None
    updated_at: datetime | None = None  # the contact's version: an older snapshot never wins


@dataclass(frozen=True)
class SignedUp:
    contact_id: str
    at: datetime


@dataclass(frozen=True)
class OrderPlaced:
    contact_id: str
    order_id: str
    placed_at: datetime
    total_minor: int
    currency: str


@dataclass(frozen=True)
class OrderVoided:
    """An order cancelled or refunded: it no longer counts as completed."""

    contact_id: str
    order_id: str
    status: OrderStatus


ReadModelChange = ProfileSnapshot | SignedUp | OrderPlaced | OrderVoided


def order_key(order_id: str, event_id: str) -> str:
    """The key an order is stored under. A platform that sends no order id still placed an
    order; it is kept under its event's id (it just cannot be cancelled later)."""
    return order_id or f"event:{event_id}"
