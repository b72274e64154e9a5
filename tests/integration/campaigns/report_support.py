"""Helpers of the report's tests: a campaign and its recipients rows written straight into
PostgreSQL (as the fan-out would), real envelopes on real Kafka topics, and waiting until the
report's consumer group has committed past them."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import RecordMetadata, TopicPartition
from google.protobuf.message import Message
from nudge.events.v1.envelope_pb2 import Envelope

from services.campaigns.audience import message_id
from services.campaigns.report import CONSUMER
from services.common.events import new_envelope
from tests.support import eventually


@dataclass
class Row:
    contact_id: str
    excluded: str | None = None
    variant: int = 0
    requested: bool = True

    def message_id(self, campaign_id: str) -> str:
        return message_id(campaign_id, self.contact_id)


async def insert_campaign(
    pool: asyncpg.Pool,
    ws: str,
    rows: list[Row],
    *,
    status: int = 3,
    started_at: datetime,
    ab_test: dict[str, Any] | None = None,
    holdout_percent: int = 0,
    subject: str = "Spring",
) -> str:
    campaign_id = str(uuid.uuid4())
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO campaigns (workspace_id, id, name, segment_ids, subject, body_text,"
            " status, created_at, updated_at, started_at, ab_test, holdout_percent)"
            " VALUES ($1, $2, 'Report test', '{vip}', $3, 'Hello', $4, $5, $5, $5, $6, $7)",
            uuid.UUID(ws),
            uuid.UUID(campaign_id),
            subject,
            status,
            started_at,
            json.dumps(ab_test) if ab_test is not None else None,
            holdout_percent,
        )
        await conn.executemany(
            "INSERT INTO recipients (workspace_id, campaign_id, contact_id, message_id, variant,"
            " excluded, requested_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [
                (
                    uuid.UUID(ws),
                    uuid.UUID(campaign_id),
                    uuid.UUID(r.contact_id),
                    uuid.UUID(r.message_id(campaign_id)),
                    r.variant,
                    r.excluded,
                    started_at if r.excluded is None and r.requested else None,
                )
                for r in rows
            ],
        )
    return campaign_id


@dataclass(frozen=True)
class Published:
    topic: str
    key: str
    envelope: Envelope


def envelope(ws: str, payload: Message, at: datetime, event_id: str | None = None) -> Envelope:
    return new_envelope(ws, payload, event_id=event_id or str(uuid.uuid4()), occurred_at=at)


async def publish(producer: AIOKafkaProducer, events: list[Published]) -> list[RecordMetadata]:
    return [
        await producer.send_and_wait(e.topic, e.envelope.SerializeToString(), key=e.key.encode())
        for e in events
    ]


async def consumed(admin: AIOKafkaAdminClient, records: list[RecordMetadata]) -> None:
    """Until the report's group committed past every one of ``records``: each was applied
    (or found to be nobody's campaign) and its transaction committed."""
    last: dict[TopicPartition, int] = {}
    for md in records:
        tp = TopicPartition(md.topic, md.partition)
        last[tp] = max(last.get(tp, -1), md.offset)

    async def probe() -> bool:
        offsets = await admin.list_consumer_group_offsets(CONSUMER)
        for tp, offset in last.items():
            committed = offsets.get(tp)
            assert committed is not None and committed.offset > offset, (tp, committed)
        return True

    await eventually(probe, timeout=120, interval=0.25)
