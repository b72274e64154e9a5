"""The contacts service's Kafka consumer: what recipients did with their mail."""

from __future__ import annotations

import asyncpg
from aiokafka import ConsumerRecord
from nudge.events.v1.envelope_pb2 import Envelope

from services.contacts import consent


class TrackingConsumer:
    """Turns tracking.events.v1 into consent changes (unsubscribes) and delivery.events.v1's
    permanent bounces and complaints into the suppression list; ignores everything else."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def __call__(self, envelope: Envelope, record: ConsumerRecord) -> None:
        if envelope.WhichOneof("payload") == "unsubscribe_requested":
            await consent.unsubscribe(
                self.pool, envelope.workspace_id, envelope.event_id, envelope.unsubscribe_requested
            )
        elif envelope.WhichOneof("payload") == "message_bounced":
            await consent.on_bounce(
                self.pool, envelope.workspace_id, envelope.event_id, envelope.message_bounced
            )
        elif envelope.WhichOneof("payload") == "message_complained":
            await consent.on_complaint(
                self.pool, envelope.workspace_id, envelope.event_id, envelope.message_complained
            )
