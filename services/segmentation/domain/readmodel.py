"""What the contact read model learns from other services' events: pure values, no I/O.

The Kafka entrypoint turns ``contacts.events.v1`` and ``shop.events.v1`` envelopes into these;
the handlers apply them to ``profiles`` and ``orders``. Contact changes carry the contact's
``version`` (every committed change in contacts increments it once): the read model applies
one only when it is above the version it holds, which makes replays no-ops and keeps an
older event from undoing a newer one. Strings from another service are
checked on the way in (:func:`checked_id`, :func:`checked_text`): a value PostgreSQL refuses
would fail on every retry, and the consumer retries a failing record before the ones after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from services.segmentation.domain.segments import OrderStatus

# Ids are keys of btree indexes (order_id, processed_events.event_id): an entry over about
# 2.7 kB is refused. Real ids are far shorter; the limit leaves room.
MAX_ID = 200


class UnusableEvent(ValueError):
    """An event the read model cannot keep, however often it is retried: it is skipped (and
    logged) so that it does not hold up the events after it."""


def checked_text(what: str, value: str) -> str:
    """``value``, unless PostgreSQL's text cannot hold it (U+0000)."""
    if "\x00" in value:
        raise UnusableEvent(f"{what} contains a NUL character")
    return value


def checked_id(what: str, value: str) -> str:
    """``value``, if it can be a key: at most :data:`MAX_ID` characters, no NUL."""
    if len(value) > MAX_ID:
        raise UnusableEvent(f"{what} is longer than {MAX_ID} characters")
    return checked_text(what, value)


@dataclass(frozen=True)
class ProfileSnapshot:
    """The whole contact as contacts published it (ContactCreated, ContactUpdated)."""

    contact_id: str
    email: str
    vip: bool
    tags: tuple[str, ...] = ()
    attributes: dict[str, str] = field(default_factory=dict)
    signed_up_at: datetime | None = None
    version: int = 0  # 0: published before contacts had versions
    score: int = 0


@dataclass(frozen=True)
class TagsSet:
    """TagsChanged: every tag the contact has after the change."""

    contact_id: str
    version: int
    tags: tuple[str, ...]


@dataclass(frozen=True)
class ScoreSet:
    """ScoreChanged: the score after the change (not the delta: applying it twice is the
    same as once)."""

    contact_id: str
    version: int
    score: int


@dataclass(frozen=True)
class ConsentSet:
    """ConsentChanged: the current state of one purpose, since ``at``."""

    contact_id: str
    version: int
    purpose: str  # "marketing", "targeted_messages", "automations", "transactional"
    state: str  # "granted", "withdrawn", "pending"
    source: str
    at: datetime


@dataclass(frozen=True)
class Suppressed:
    """ContactSuppressed: nothing but transactional mail may reach the contact."""

    contact_id: str
    version: int
    reason: str


@dataclass(frozen=True)
class Removed:
    """ContactDeleted or ContactErased: the profile, its orders and memberships go; a
    tombstone (no personal data) keeps later events from bringing the contact back."""

    contact_id: str
    version: int
    erased: bool


ContactChange = ProfileSnapshot | TagsSet | ScoreSet | ConsentSet | Suppressed | Removed


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


ShopChange = SignedUp | OrderPlaced | OrderVoided
ReadModelChange = ContactChange | ShopChange


def order_key(order_id: str, event_id: str) -> str:
    """The key an order is stored under. A platform that sends no order id still placed an
    order; it is kept under its event's id (it just cannot be cancelled later)."""
    return order_id or f"event:{event_id}"
