"""What tracking saw of each mail, kept for its story (services/delivery/story.py).

A consumer of tracking.events.v1 in a group of its own (``delivery-tracking-log``): a
backlog of opens never holds up the mail, nor the mail the opens. Each open, click,
unsubscribe or preference change of a message is one ``message_tracking`` row keyed by the
event id, so a redelivered event is kept once without a claim of its own. Only what the
story shows is kept: the time, the kind, human or machine (and why), a click's URL.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC

import asyncpg
from aiokafka import ConsumerRecord
from nudge.delivery.v1 import delivery_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.ids import is_uuid

log = logging.getLogger(__name__)

CONSUMER = "delivery-tracking-log"


class TrackingLog:
    """A :class:`services.common.consumer.KafkaConsumerLoop` handler of tracking.events.v1."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def __call__(self, envelope: Envelope, record: ConsumerRecord) -> None:
        kind = envelope.WhichOneof("payload")
        machine, machine_reason, url = False, "", ""
        if kind == "message_opened":
            event_kind = delivery_pb2.TRACKING_EVENT_KIND_OPEN
            opened = envelope.message_opened
            message_id = opened.message_id
            machine, machine_reason = opened.machine_open, opened.machine_reason
        elif kind == "link_clicked":
            event_kind = delivery_pb2.TRACKING_EVENT_KIND_CLICK
            clicked = envelope.link_clicked
            message_id = clicked.message_id
            machine, machine_reason, url = (
                clicked.machine_click,
                clicked.machine_reason,
                clicked.url,
            )
        elif kind == "unsubscribe_requested":
            event_kind = delivery_pb2.TRACKING_EVENT_KIND_UNSUBSCRIBE
            message_id = envelope.unsubscribe_requested.message_id
        elif kind == "preferences_changed":
            event_kind = delivery_pb2.TRACKING_EVENT_KIND_PREFERENCES
            message_id = envelope.preferences_changed.message_id
        else:
            return
        if not (is_uuid(message_id) and is_uuid(envelope.workspace_id) and envelope.event_id):
            log.warning("not keeping a tracking event without a message: %s", envelope.event_id)
            return
        await self.pool.execute(
            "INSERT INTO message_tracking (event_id, workspace_id, message_id, at, kind, machine,"
            " machine_reason, url) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            " ON CONFLICT (event_id) DO NOTHING",
            envelope.event_id,
            uuid.UUID(envelope.workspace_id),
            uuid.UUID(message_id),
            envelope.occurred_at.ToDatetime(tzinfo=UTC),
            event_kind,
            machine,
            machine_reason[:200],
            url[:2000],
        )
