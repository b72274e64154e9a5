"""Driving the trigger engine in tests.

How to drive the engine:

- Publish a workflow: ``workflow_id = await publish(dsn_or_pool, workspace_id, definition)``
  inserts ``workflows`` + ``workflow_versions`` (version 1, status ``active``) exactly as the
  API's publish leaves them; ``definition`` is a ``nudge.workflow/v1`` dict, validated with
  ``Definition.model_validate`` first. ``set_status(..., "paused")`` pauses it. The engine
  sees a publish or a pause within ``TRIGGERS_LIVE_WORKFLOWS_TTL_S`` (2 s by default).
- The clock: every component reads ``services.common.clock``. With ``NUDGE_CLOCK_FILE`` set
  (in the environment of a child process, or ``clock.set_clock(FileOffsetClock(path))``
  in-process) the clock is the wall clock plus the number of seconds in that file, re-read
  when the file changes. ``MovableClock(path).advance(hours=3)`` moves every process at
  once; it only ever moves forward. The ``engine_clock`` fixture (conftest.py) installs it
  in-process and exports ``NUDGE_CLOCK_FILE`` for child processes started afterwards.
- Events: ``await producer.shop(ws, contact, shop_pb2.ShopEvent(...))`` (or ``.send``
  with any envelope) puts it on its topic keyed by contact, as contacts, segmentation and
  tracking would; no other service needs to run. ``occurred_at`` defaults to the clock.
- The worker: ``triggers_engine`` (conftest.py) runs ``services.triggers`` in-process on real
  PostgreSQL and Kafka (``python -m services.triggers`` is the same start-up in a child
  process, for kill tests). Wait on database state with ``eventually``: ``run_rows``,
  ``run_steps``, and ``delivery_requests`` (what reached delivery.requests.v1).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from google.protobuf.message import Message
from nudge.delivery.v1 import delivery_pb2
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.shop.v1 import shop_pb2

from services.common import clock
from services.common.events import new_envelope
from services.common.topics import (
    CONTACTS_EVENTS,
    DELIVERY_REQUESTS,
    SEGMENT_MEMBERSHIP,
    SHOP_EVENTS,
    TOPICS,
    TRACKING_EVENTS,
)
from services.triggers.domain.model import Definition

# The welcome letter the skeleton hard-coded, as a published workflow: a signup mails it once
# per contact, at any hour (the window is open all day but a microsecond), uncapped.
WELCOME: dict[str, Any] = {
    "format": "nudge.workflow/v1",
    "name": "Welcome letter",
    "trigger": {"event": "signed_up"},
    "entry": {"concurrency": "single", "reentry": "once"},
    "send_window": {"start": "12:00:00", "end": "11:59:59.999999"},
    "steps": [
        {
            "id": "welcome",
            "type": "send",
            "message": {
                "kind": "marketing",
                "subject": "Welcome to {{ workspace.name }}",
                "body_text": (
                    "Hi {{ contact.first_name or 'there' }},\n\n"
                    "thank you for signing up at {{ workspace.name }}. We are glad you are here.\n"
                ),
                "respect_frequency_cap": False,
            },
        }
    ],
}

TOPIC_OF_PAYLOAD = {
    "shop_event": SHOP_EVENTS,
    "segment_membership_changed": SEGMENT_MEMBERSHIP,
    "message_opened": TRACKING_EVENTS,
    "link_clicked": TRACKING_EVENTS,
}


async def _with_conn(pool_or_dsn: asyncpg.Pool | str, query: str, *args: object) -> Any:
    if isinstance(pool_or_dsn, str):
        conn = await asyncpg.connect(pool_or_dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()
    async with pool_or_dsn.acquire() as conn:
        return await conn.fetch(query, *args)


async def publish(
    pool_or_dsn: asyncpg.Pool | str,
    workspace_id: str,
    definition: dict[str, Any],
    *,
    status: str = "active",
) -> str:
    """Insert a workflow and its version 1 as published (``status`` 'active' by default);
    returns the workflow id. Queries name the ``triggers`` schema, so any pool works."""
    parsed = Definition.model_validate(definition)
    doc = json.dumps(parsed.model_dump(mode="json", by_alias=True))
    workflow_id = str(uuid.uuid4())
    now = clock.now()
    await _with_conn(
        pool_or_dsn,
        "WITH w AS (INSERT INTO triggers.workflows (workspace_id, id, name, status, draft,"
        " published_version, trigger_event, created_at, updated_at, published_at)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, 1, $6, $7, $7, $7) RETURNING 1)"
        " INSERT INTO triggers.workflow_versions (workspace_id, workflow_id, version,"
        " definition, published_at, published_by) VALUES ($1, $2, 1, $5::jsonb, $7, 'test')",
        uuid.UUID(workspace_id),
        uuid.UUID(workflow_id),
        parsed.name,
        status,
        doc,
        parsed.trigger.event,
        now,
    )
    return workflow_id


async def publish_welcome(pool_or_dsn: asyncpg.Pool | str, workspace_id: str) -> str:
    """Publish :data:`WELCOME` for the workspace (what the skeleton's signups expected)."""
    return await publish(pool_or_dsn, workspace_id, WELCOME)


async def set_status(
    pool_or_dsn: asyncpg.Pool | str, workspace_id: str, workflow_id: str, status: str
) -> None:
    await _with_conn(
        pool_or_dsn,
        "UPDATE triggers.workflows SET status = $3, updated_at = now()"
        " WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace_id),
        uuid.UUID(workflow_id),
        status,
    )


async def run_rows(dsn: str, workspace_id: str) -> list[asyncpg.Record]:
    """The workspace's runs, oldest first."""
    return list(
        await _with_conn(
            dsn,
            "SELECT * FROM triggers.runs WHERE workspace_id = $1 ORDER BY started_at, id",
            uuid.UUID(workspace_id),
        )
    )


async def run_steps(dsn: str, workspace_id: str, run_id: object) -> list[tuple[str, str]]:
    rows = await _with_conn(
        dsn,
        "SELECT step_id, outcome FROM triggers.run_steps WHERE workspace_id = $1"
        " AND run_id = $2 ORDER BY at, step_id",
        uuid.UUID(workspace_id),
        uuid.UUID(str(run_id)),
    )
    return [(r["step_id"], r["outcome"]) for r in rows]


async def timer_of(dsn: str, run_id: object) -> datetime | None:
    rows = await _with_conn(
        dsn, "SELECT due_at FROM triggers.timers WHERE timer_key = $1", f"run/{run_id}"
    )
    return rows[0]["due_at"] if rows else None


class MovableClock:
    """The offset file of :class:`services.common.clock.FileOffsetClock`: move every
    process's clock at once. Forward only (timers and claims assume time does not go back)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_s = 0.0
        clock.write_offset(path, 0.0)

    def advance(self, *, hours: float = 0, minutes: float = 0, seconds: float = 0) -> None:
        delta = hours * 3600 + minutes * 60 + seconds
        assert delta >= 0, "the clock only moves forward"
        self.offset_s += delta
        clock.write_offset(self.path, self.offset_s)

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset_s)


class EventProducer:
    """Puts envelopes on the engine's topics keyed by contact, as the services would."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, contact_id: str, envelope: Envelope, topic: str | None = None) -> str:
        topic = topic or TOPIC_OF_PAYLOAD.get(str(envelope.WhichOneof("payload")), CONTACTS_EVENTS)
        await self._producer.send_and_wait(
            topic, envelope.SerializeToString(), key=contact_id.encode()
        )
        return envelope.event_id

    async def shop(
        self,
        workspace_id: str,
        contact_id: str,
        event: shop_pb2.ShopEvent,
        *,
        occurred_at: datetime | None = None,
    ) -> str:
        """Report a shop event for the contact; returns its event id."""
        at = occurred_at or clock.now()
        event.contact_id = contact_id
        event.occurred_at.FromDatetime(at)
        return await self.send(contact_id, envelope(workspace_id, event, at))


def envelope(workspace_id: str, payload: Message, at: datetime | None = None) -> Envelope:
    return new_envelope(workspace_id, payload, occurred_at=at or clock.now())


def cart(
    cart_id: str, *items: tuple[str, str, int, int], currency: str = "EUR"
) -> shop_pb2.ShopEvent:
    """A cart_updated: items as (product id, name, quantity, unit price in cents)."""
    lines = [
        shop_pb2.LineItem(
            product_id=p,
            name=n,
            quantity=q,
            category="mugs",
            unit_price=shop_pb2.Money(amount_minor=c, currency=currency),
        )
        for p, n, q, c in items
    ]
    total = sum(q * c for _, _, q, c in items)
    return shop_pb2.ShopEvent(
        cart_updated=shop_pb2.CartUpdated(
            cart_id=cart_id,
            items=lines,
            total=shop_pb2.Money(amount_minor=total, currency=currency),
            cart_url=f"https://shop.example/cart/{cart_id}",
        )
    )


def order(order_id: str, cart_id: str = "", total_minor: int = 2400) -> shop_pb2.ShopEvent:
    return shop_pb2.ShopEvent(
        order_placed=shop_pb2.OrderPlaced(
            order_id=order_id,
            cart_id=cart_id,
            total=shop_pb2.Money(amount_minor=total_minor, currency="EUR"),
        )
    )


async def delivery_requests(
    bootstrap: str, workspace_id: str, timeout: float = 30.0
) -> list[delivery_pb2.DeliveryRequested]:
    """Every DeliveryRequested of the workspace on delivery.requests.v1 so far: the topic read
    from its start to its end offsets (at the time of the call)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[delivery_pb2.DeliveryRequested] = []
    try:
        partitions = [
            TopicPartition(DELIVERY_REQUESTS, p) for p in range(TOPICS[DELIVERY_REQUESTS])
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        async with asyncio.timeout(timeout):
            while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
                batches = await consumer.getmany(*partitions, timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        env = Envelope.FromString(record.value)
                        if env.workspace_id == workspace_id and env.HasField("delivery_requested"):
                            found.append(env.delivery_requested)
    finally:
        await consumer.stop()
    return found


def new_ids() -> tuple[str, str]:
    """A fresh workspace id and contact id (the engine needs neither to exist elsewhere)."""
    return str(uuid.uuid4()), str(uuid.uuid4())


def database_url() -> str:
    return os.environ["DATABASE_URL"]


def bootstrap_servers() -> str:
    return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
