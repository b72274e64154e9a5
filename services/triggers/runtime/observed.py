"""What an envelope tells the engine about a contact: pure translation, no I/O.

An envelope from shop.events.v1, segments.membership.v1 or tracking.events.v1 becomes an
:class:`Observation`: the :class:`~services.triggers.domain.engine.SeenEvent` that triggers,
exit rules and ``happened`` conditions look at, the run vars a run it starts carries
(docs/triggers.md, "How the engine runs"), and how it moves the contact's facts (money
spent, last activity, segments). Contacts' own events change facts only and are applied by
:mod:`services.triggers.runtime.store`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nudge.events.v1.envelope_pb2 import Envelope
from nudge.segmentation.v1 import events_pb2 as segmentation_events
from nudge.shop.v1 import shop_pb2

from services.triggers.domain.engine import SeenEvent


@dataclass(frozen=True)
class Observation:
    workspace_id: str
    contact_id: str
    event_id: str
    seen: SeenEvent
    vars: Mapping[str, str] = field(default_factory=dict)
    spent_minor: int = 0  # added to the contact's total spent (orders)
    currency: str = ""
    activity: bool = False  # counts as activity for silence triggers (last_activity_at)
    segment_entered: str = ""
    segment_exited: str = ""


def money(amount_minor: int, currency: str) -> str:
    """``"1,000.00 EUR"``: minor units shown with two decimals (run vars are for people)."""
    sign = "-" if amount_minor < 0 else ""
    units, cents = divmod(abs(amount_minor), 100)
    return f"{sign}{units:,}.{cents:02d} {currency}".strip()


def item_lines(items: Iterable[shop_pb2.LineItem]) -> str:
    """One line per item: ``2 x Blue mug (12.00 EUR)`` (the unit price)."""
    return "\n".join(
        f"{i.quantity} x {i.name or i.product_id} "
        f"({money(i.unit_price.amount_minor, i.unit_price.currency)})"
        for i in items
    )


def distinct_categories(items: Iterable[shop_pb2.LineItem]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        if item.category:
            seen.setdefault(item.category, None)
    return tuple(seen)


def event_time(envelope: Envelope, inner: datetime | None = None) -> datetime:
    """When it happened: the payload's own time when it has one, else the envelope's."""
    if inner is not None:
        return inner
    if envelope.HasField("occurred_at"):
        return envelope.occurred_at.ToDatetime(tzinfo=UTC)
    return datetime.fromtimestamp(0, UTC)


def observe(envelope: Envelope) -> Observation | None:
    """The observation an envelope carries, or None when it is nothing the engine watches
    (a machine open, a delivery event, an unknown payload)."""
    kind = envelope.WhichOneof("payload")
    if kind == "shop_event":
        return _shop(envelope)
    if kind == "segment_membership_changed":
        return _segment(envelope, envelope.segment_membership_changed)
    if kind == "message_opened":
        opened = envelope.message_opened
        if opened.machine_open:  # privacy proxies open everything: not the customer
            return None
        seen = SeenEvent(event="message_opened", occurred_at=event_time(envelope))
        return Observation(
            envelope.workspace_id,
            opened.contact_id,
            envelope.event_id,
            seen,
            {"message_id": opened.message_id, "url": ""},
            activity=True,
        )
    if kind == "link_clicked":
        clicked = envelope.link_clicked
        if clicked.machine_click:
            return None
        seen = SeenEvent(event="link_clicked", occurred_at=event_time(envelope))
        return Observation(
            envelope.workspace_id,
            clicked.contact_id,
            envelope.event_id,
            seen,
            {"message_id": clicked.message_id, "url": clicked.url},
            activity=True,
        )
    return None


def _shop(envelope: Envelope) -> Observation | None:
    event = envelope.shop_event
    kind = event.WhichOneof("kind")
    if kind is None or not event.contact_id:
        return None
    at = event_time(
        envelope,
        event.occurred_at.ToDatetime(tzinfo=UTC) if event.HasField("occurred_at") else None,
    )
    ws, contact, eid = envelope.workspace_id, event.contact_id, envelope.event_id
    if kind == "cart_updated":
        cart = event.cart_updated
        count = sum(i.quantity for i in cart.items)
        seen = SeenEvent(
            event=kind,
            occurred_at=at,
            key=cart.cart_id,
            items=count,
            total_minor=cart.total.amount_minor,
            categories=distinct_categories(cart.items),
            product_ids=tuple(i.product_id for i in cart.items),
        )
        return Observation(
            ws,
            contact,
            eid,
            seen,
            {
                "cart_id": cart.cart_id,
                "cart_url": cart.cart_url,
                "cart_items": item_lines(cart.items),
                "cart_total": money(cart.total.amount_minor, cart.total.currency),
                "item_count": str(count),
            },
        )
    if kind == "order_placed":
        order = event.order_placed
        categories = distinct_categories(order.items)
        # The key is the cart the order came from, so that an exit rule with same_key ends
        # that cart's run (an order ends the abandoned-cart run); the order id otherwise.
        seen = SeenEvent(
            event=kind,
            occurred_at=at,
            key=order.cart_id or order.order_id,
            items=sum(i.quantity for i in order.items),
            total_minor=order.total.amount_minor,
            categories=categories,
            product_ids=tuple(i.product_id for i in order.items),
        )
        return Observation(
            ws,
            contact,
            eid,
            seen,
            {
                "order_id": order.order_id,
                "cart_id": order.cart_id,
                "order_items": item_lines(order.items),
                "order_total": money(order.total.amount_minor, order.total.currency),
                "categories": ", ".join(categories),
                "first_category": categories[0] if categories else "",
            },
            spent_minor=order.total.amount_minor,
            currency=order.total.currency,
            activity=True,
        )
    if kind == "page_viewed":
        page = event.page_viewed
        seen = SeenEvent(
            event=kind,
            occurred_at=at,
            categories=(page.category,) if page.category else (),
            product_ids=(page.product_id,) if page.product_id else (),
        )
        vars_ = {"product_id": page.product_id, "category": page.category, "url": page.url}
        return Observation(ws, contact, eid, seen, vars_, activity=True)
    if kind == "searched":
        seen = SeenEvent(event=kind, occurred_at=at, query=event.searched.query)
        return Observation(ws, contact, eid, seen, {"query": event.searched.query})
    if kind == "order_cancelled":
        seen = SeenEvent(event=kind, occurred_at=at, key=event.order_cancelled.order_id)
        return Observation(ws, contact, eid, seen, {"order_id": event.order_cancelled.order_id})
    if kind == "order_refunded":
        seen = SeenEvent(event=kind, occurred_at=at, key=event.order_refunded.order_id)
        return Observation(ws, contact, eid, seen, {"order_id": event.order_refunded.order_id})
    if kind == "login_failed":
        seen = SeenEvent(event=kind, occurred_at=at)
        return Observation(ws, contact, eid, seen, {"reset_url": event.login_failed.reset_url})
    # signed_up: nothing but the fact.
    return Observation(ws, contact, eid, SeenEvent(event=kind, occurred_at=at))


def _segment(
    envelope: Envelope, change: segmentation_events.SegmentMembershipChanged
) -> Observation | None:
    if change.change == segmentation_events.MEMBERSHIP_CHANGE_ENTERED:
        name = "segment_entered"
    elif change.change == segmentation_events.MEMBERSHIP_CHANGE_EXITED:
        name = "segment_exited"
    else:
        return None
    at = event_time(
        envelope,
        change.effective_at.ToDatetime(tzinfo=UTC) if change.HasField("effective_at") else None,
    )
    seen = SeenEvent(event=name, occurred_at=at, segment_id=change.segment_id)
    entered = name == "segment_entered"
    return Observation(
        envelope.workspace_id,
        change.contact_id,
        envelope.event_id,
        seen,
        {"segment_id": change.segment_id},
        segment_entered=change.segment_id if entered else "",
        segment_exited="" if entered else change.segment_id,
    )


def entry_key(configured: str | None, obs: Observation) -> str:
    """The key a run started by ``obs`` is kept under: the event field the entry rules name
    (``cart_id``, ``order_id``), else the order id for orders and the event's key."""
    if configured:
        return obs.vars.get(configured, "")
    return obs.vars.get("order_id") or obs.seen.key


def seen_to_json(seen: SeenEvent) -> dict[str, object]:
    """``contact_events.data``: the SeenEvent fields beyond the row's own columns."""
    return {
        "items": seen.items,
        "total_minor": seen.total_minor,
        "categories": list(seen.categories),
        "product_ids": list(seen.product_ids),
        "query": seen.query,
        "segment_id": seen.segment_id,
    }


def seen_from_row(
    event: str, occurred_at: datetime, key: str, data: Mapping[str, object]
) -> SeenEvent:
    def ints(name: str) -> int:
        value = data.get(name, 0)
        return int(value) if isinstance(value, int | str) else 0

    def strs(name: str) -> tuple[str, ...]:
        value = data.get(name, [])
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    return SeenEvent(
        event=event,
        occurred_at=occurred_at,
        key=key,
        items=ints("items"),
        total_minor=ints("total_minor"),
        categories=strs("categories"),
        product_ids=strs("product_ids"),
        query=str(data.get("query", "")),
        segment_id=str(data.get("segment_id", "")),
    )
