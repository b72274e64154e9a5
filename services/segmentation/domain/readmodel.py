"""What the contact read model learns from other services' events: pure values, no I/O.

The Kafka entrypoint turns ``contacts.events.v1``, ``shop.events.v1`` and
``tracking.events.v1`` envelopes into these; the handlers apply them to ``profiles``,
``orders`` and ``activity``. Contact changes carry the contact's ``version`` (every committed
change in contacts increments it once): the read model applies one only when it is above the
version it holds, which makes replays no-ops and keeps an older event from undoing a newer
one. Shop and tracking events carry no version: they are applied once per event id and by
event time (a late event never moves a "last ... at" back). Strings from another service are
checked on the way in (:func:`checked_id`, :func:`checked_text`): a value PostgreSQL refuses
would fail on every retry, and the consumer retries a failing record before the ones after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from services.segmentation.domain.segments import OrderStatus

# A search query is kept lower-cased and cut to this many characters (rules compare at most
# 500-character strings: a longer query adds nothing a rule can match).
MAX_QUERY = 500

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
    first_name: str = ""
    last_name: str = ""


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
    categories: tuple[str, ...] = ()  # of its line items, distinct, sorted
    cart_id: str = ""  # the cart it was placed from ("": not said)


@dataclass(frozen=True)
class OrderVoided:
    """An order cancelled or refunded: it no longer counts as completed."""

    contact_id: str
    order_id: str
    status: OrderStatus
    at: datetime | None = None  # when the shop reported it (a visit); None: not known


@dataclass(frozen=True)
class CartUpdated:
    """The contact's cart as it is at ``at`` (a newer one replaces it, an order clears it)."""

    contact_id: str
    at: datetime
    cart_id: str
    total_minor: int
    currency: str
    items: int  # the quantities of its line items, summed


@dataclass(frozen=True)
class PageViewed:
    contact_id: str
    at: datetime
    category: str  # "" when the page has none


@dataclass(frozen=True)
class Searched:
    contact_id: str
    at: datetime
    query: str  # lower-cased, at most MAX_QUERY characters (:func:`search_subject`)


@dataclass(frozen=True)
class Visited:
    """Any other shop event (a failed login...): the contact was on the shop at ``at``."""

    contact_id: str
    at: datetime


@dataclass(frozen=True)
class MessageOpened:
    """tracking.events.v1: a person opened a message (machine opens are not kept)."""

    contact_id: str
    at: datetime


@dataclass(frozen=True)
class LinkClicked:
    contact_id: str
    at: datetime
    url: str


ShopChange = SignedUp | OrderPlaced | OrderVoided | CartUpdated | PageViewed | Searched | Visited
TrackingChange = MessageOpened | LinkClicked
# Changes without a version. Those whose statement alone cannot tell a repeat (an order may
# be placed again with other values; a visit has no row of its own) are claimed once per event
# id in processed_events; activity rows and carts are idempotent by themselves (the activity
# key holds the event id; a cart replaces only an older one), so they skip the claim.
UNVERSIONED = (
    SignedUp,
    OrderPlaced,
    OrderVoided,
    CartUpdated,
    PageViewed,
    Searched,
    Visited,
    MessageOpened,
    LinkClicked,
)
CLAIMED = (SignedUp, OrderPlaced, OrderVoided, Visited)
ReadModelChange = ContactChange | ShopChange | TrackingChange


def search_subject(query: str) -> str:
    """What a search is kept as: lower-cased, at most :data:`MAX_QUERY` characters."""
    return query.lower()[:MAX_QUERY]


def visit_at(change: ReadModelChange) -> datetime | None:
    """The time a shop event shows the contact on the shop (``last_visit_at``), or None."""
    if isinstance(change, OrderPlaced):
        return change.placed_at
    if isinstance(change, SignedUp | CartUpdated | PageViewed | Searched | Visited):
        return change.at
    if isinstance(change, OrderVoided):
        return change.at
    return None


def order_key(order_id: str, event_id: str) -> str:
    """The key an order is stored under. A platform that sends no order id still placed an
    order; it is kept under its event's id (it just cannot be cancelled later)."""
    return order_id or f"event:{event_id}"
