"""What the trigger engine does with each event: start runs and queue their messages."""

from __future__ import annotations

import logging
import uuid

import asyncpg
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import clock
from services.common.events import deterministic_id, new_envelope
from services.common.idempotency import claim_event
from services.common.outbox import add_to_outbox
from services.common.topics import DELIVERY_REQUESTS
from services.triggers.domain.workflows import runs_started_by

log = logging.getLogger(__name__)

SCHEMA = "triggers"
CONSUMER = "triggers"


async def on_shop_event(pool: asyncpg.Pool, envelope: Envelope) -> int:
    """Start the runs this event triggers; returns how many started. Idempotent on event_id,
    and on the run key: the same signup reported twice welcomes once."""
    if envelope.WhichOneof("payload") != "shop_event":
        return 0
    event = envelope.shop_event
    started = 0
    async with pool.acquire() as conn, conn.transaction():
        if not await claim_event(conn, CONSUMER, envelope.event_id):
            return 0
        for run in runs_started_by(event, envelope.event_id):
            inserted = await conn.fetchval(
                "INSERT INTO workflow_runs (workspace_id, run_key, workflow_id, contact_id,"
                " cause_event_id, started_at) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                uuid.UUID(envelope.workspace_id),
                run.run_key,
                run.workflow.id,
                uuid.UUID(event.contact_id),
                envelope.event_id,
                clock.now(),
            )
            if inserted is None:
                continue
            message_id = deterministic_id(envelope.workspace_id, run.run_key, "send")
            request = delivery_pb2.DeliveryRequested(
                message_id=message_id,
                contact_id=event.contact_id,
                kind=delivery_pb2.MESSAGE_KIND_AUTOMATION,
                purpose=contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
                content=delivery_pb2.MessageContent(
                    subject=run.workflow.template.subject,
                    body_text=run.workflow.template.body_text,
                ),
                workflow_id=run.workflow.id,
            )
            await add_to_outbox(
                conn,
                SCHEMA,
                DELIVERY_REQUESTS,
                event.contact_id,
                new_envelope(envelope.workspace_id, request, event_id=message_id),
            )
            started += 1
            log.info("started %s for contact %s", run.run_key, event.contact_id)
    return started
