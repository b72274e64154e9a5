"""Tracking use cases: a verified link was hit; say so on tracking.events.v1.

Events are keyed by contact id, so one recipient's opens, clicks and unsubscribes stay in
order. Each open, click and unsubscribe is its own event (a new id). An unsubscribe posted
twice (a provider retrying after a timeout, a reader pressing the button twice) is harmless
because contacts acts on the consent state (a withdrawn consent stays withdrawn), not because
the two posts share an id: an id derived from the message was claimed forever, so a contact
who subscribed again and then used the same mail's link was told "unsubscribed" while
nothing changed.
"""

from __future__ import annotations

from typing import Protocol

from nudge.events.v1.envelope_pb2 import Envelope
from nudge.tracking.v1 import events_pb2

from services.common.events import new_envelope
from services.common.links import LinkClaims
from services.common.topics import TRACKING_EVENTS
from services.tracking.domain.machine_opens import is_machine_open

MAX_USER_AGENT = 512


class EventPublisher(Protocol):
    async def publish(self, topic: str, key: str, envelope: Envelope) -> None: ...

    async def brokers(self) -> int: ...


async def record_open(publisher: EventPublisher, claims: LinkClaims, user_agent: str) -> str:
    opened = events_pb2.MessageOpened(
        message_id=claims.message_id,
        contact_id=claims.contact_id,
        user_agent=user_agent[:MAX_USER_AGENT],
        machine_open=is_machine_open(user_agent),
    )
    return await _publish(publisher, claims, new_envelope(claims.workspace_id, opened))


async def record_click(publisher: EventPublisher, claims: LinkClaims, user_agent: str) -> str:
    clicked = events_pb2.LinkClicked(
        message_id=claims.message_id,
        contact_id=claims.contact_id,
        url=claims.url,
        user_agent=user_agent[:MAX_USER_AGENT],
    )
    return await _publish(publisher, claims, new_envelope(claims.workspace_id, clicked))


async def request_unsubscribe(
    publisher: EventPublisher, claims: LinkClaims, *, one_click: bool
) -> str:
    """One-click (RFC 8058) and the preference page's button alike: a new event each time."""
    requested = events_pb2.UnsubscribeRequested(
        message_id=claims.message_id, contact_id=claims.contact_id, one_click=one_click
    )
    return await _publish(publisher, claims, new_envelope(claims.workspace_id, requested))


async def _publish(publisher: EventPublisher, claims: LinkClaims, envelope: Envelope) -> str:
    await publisher.publish(TRACKING_EVENTS, claims.contact_id, envelope)
    return envelope.event_id
