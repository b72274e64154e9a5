"""Tracking use cases: a verified link was hit; say so on tracking.events.v1.

Events are keyed by contact id, so one recipient's opens, clicks and unsubscribes stay in
order. Each open, click and unsubscribe is its own event (a new id). An unsubscribe posted
twice (a provider retrying after a timeout, a reader pressing the button twice) is harmless
because contacts acts on the consent state (a withdrawn consent stays withdrawn), not because
the two posts share an id: an id derived from the message was claimed forever, so a contact
who subscribed again and then used the same mail's link was told "unsubscribed" while
nothing changed.

Opens, clicks and preference changes are *offered* to the publisher (a bounded buffer that a
background task drains into Kafka): the visitor never waits for Kafka. Unsubscribes are
published and awaited: one must not be lost silently.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Protocol

from nudge.contacts.v1 import contacts_pb2
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.tracking.v1 import events_pb2
from opentelemetry import trace

from services.common import clock
from services.common.events import new_envelope
from services.common.links import LinkClaims
from services.common.topics import TRACKING_EVENTS
from services.common.tracing import inject_headers
from services.tracking.adapters.bursts import burst_key
from services.tracking.adapters.kafka import Pending
from services.tracking.domain.machine_opens import MachineRules, machine_reason

MAX_USER_AGENT = 512
# Opens and clicks build their envelope in one constructor call (new_envelope's generic path,
# its payload-type lookup and CopyFrom, was a sixth of an open's CPU).
_OPENED = events_pb2.MessageOpened.DESCRIPTOR.full_name
_CLICKED = events_pb2.LinkClicked.DESCRIPTOR.full_name


class EventPublisher(Protocol):
    def offer(self, pending: Pending) -> None: ...

    async def publish(self, topic: str, key: str, envelope: Envelope) -> None: ...

    async def brokers(self) -> int: ...


@dataclass(frozen=True)
class Hit:
    """What the request tells about who opened or clicked."""

    user_agent: str
    client_ip: str
    at: float  # Unix seconds


def hit(user_agent: str, client_ip: str) -> Hit:
    return Hit(user_agent[:MAX_USER_AGENT], client_ip, time.time())


def record_open(publisher: EventPublisher, rules: MachineRules, claims: LinkClaims, h: Hit) -> str:
    reason = _reason(rules, claims, h)
    envelope = Envelope(
        event_id=_event_id(),
        workspace_id=claims.workspace_id,
        type=_OPENED,
        message_opened=events_pb2.MessageOpened(
            message_id=claims.message_id,
            contact_id=claims.contact_id,
            user_agent=h.user_agent,
            machine_open=bool(reason),
            machine_reason=reason,
        ),
    )
    _stamp(envelope)
    return _offer(publisher, claims, envelope, h)


def record_click(publisher: EventPublisher, rules: MachineRules, claims: LinkClaims, h: Hit) -> str:
    reason = _reason(rules, claims, h)
    envelope = Envelope(
        event_id=_event_id(),
        workspace_id=claims.workspace_id,
        type=_CLICKED,
        link_clicked=events_pb2.LinkClicked(
            message_id=claims.message_id,
            contact_id=claims.contact_id,
            url=claims.url,
            user_agent=h.user_agent,
            machine_click=bool(reason),
            machine_reason=reason,
            link_index=claims.link_index,
        ),
    )
    _stamp(envelope)
    # The link for the burst rule: its index, or its URL in a link signed without one.
    link = str(claims.link_index) if claims.link_index >= 0 else claims.url
    burst = (burst_key(claims.workspace_id, claims.message_id), link)
    return _offer(publisher, claims, envelope, h, burst)


_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (0x4000 << 64) | (0x8000 << 48)


def _event_id() -> str:
    """``str(uuid.uuid4())``, spelled out: the same random version-4 UUID text, without the
    ``UUID`` object (it cost more than the rest of the envelope)."""
    value = (int.from_bytes(os.urandom(16), "big") & _V4_CLEAR) | _V4_SET
    h = value.to_bytes(16, "big").hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _stamp(envelope: Envelope) -> None:
    """``occurred_at`` set to now (the service clock), fields set directly: protobuf's
    ``FromDatetime`` is pure Python and cost more than building the envelope."""
    now = clock.now().timestamp()
    seconds = math.floor(now)
    envelope.occurred_at.seconds = seconds
    envelope.occurred_at.nanos = int((now - seconds) * 1e6) * 1000  # microseconds, as before


def record_preferences(
    publisher: EventPublisher,
    claims: LinkClaims,
    before: contacts_pb2.Preferences,
    after: contacts_pb2.Preferences,
) -> str | None:
    """A PreferencesChanged event when the page's post changed switches; None when not."""
    subscribed, unsubscribed = [], []
    for name, purpose in _PURPOSES:
        was, now = getattr(before, name), getattr(after, name)
        if now and not was:
            subscribed.append(purpose)
        elif was and not now:
            unsubscribed.append(purpose)
    if not subscribed and not unsubscribed:
        return None
    changed = events_pb2.PreferencesChanged(
        message_id=claims.message_id,
        contact_id=claims.contact_id,
        subscribed=subscribed,
        unsubscribed=unsubscribed,
    )
    envelope = new_envelope(claims.workspace_id, changed)
    publisher.offer(Pending(TRACKING_EVENTS, claims.contact_id, envelope, inject_headers()))
    return envelope.event_id


_PURPOSES = (
    ("marketing", contacts_pb2.CONSENT_PURPOSE_MARKETING),
    ("targeted_messages", contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES),
    ("automations", contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS),
)


async def request_unsubscribe(
    publisher: EventPublisher, claims: LinkClaims, *, one_click: bool
) -> str:
    """One-click (RFC 8058) and the preference page's button alike: a new event each time."""
    requested = events_pb2.UnsubscribeRequested(
        message_id=claims.message_id, contact_id=claims.contact_id, one_click=one_click
    )
    envelope = new_envelope(claims.workspace_id, requested)
    await publisher.publish(TRACKING_EVENTS, claims.contact_id, envelope)
    return envelope.event_id


def _reason(rules: MachineRules, claims: LinkClaims, h: Hit) -> str:
    return machine_reason(
        rules, user_agent=h.user_agent, client_ip=h.client_ip, issued_at=claims.issued_at, now=h.at
    )


def _offer(
    publisher: EventPublisher,
    claims: LinkClaims,
    envelope: Envelope,
    h: Hit,
    burst: tuple[str, str] | None = None,
) -> str:
    # The request's trace context goes with the event (the drain runs outside the request);
    # most hits are not traced (sampling): nothing to carry then.
    traced = trace.get_current_span().get_span_context().is_valid
    headers = inject_headers() if traced else []
    publisher.offer(Pending(TRACKING_EVENTS, claims.contact_id, envelope, headers, burst, h.at))
    return envelope.event_id
