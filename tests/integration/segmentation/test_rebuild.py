"""Rebuilding the read model from the topics (docs/segmentation-read-model.md, "Rebuilding"):
a second segmentation instance with an empty schema and a new consumer group replays
contacts.events.v1, shop.events.v1 and tracking.events.v1 from the earliest offset and ends
with the same profiles, orders, activity, tombstones (and memberships, when there are any)
as the instance that applied them live: late, repeated and out-of-order events included."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import RecordMetadata
from google.protobuf.message import Message
from nudge.contacts.v1 import contacts_pb2, events_pb2
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.shop.v1 import shop_pb2
from nudge.tracking.v1 import events_pb2 as tracking_pb2

from services.common.events import new_envelope
from services.common.topics import CONTACTS_EVENTS, SHOP_EVENTS, TRACKING_EVENTS
from services.segmentation.adapters.postgres import CONSUMER, SCHEMA
from tests.integration.conftest import RunningService, run_in_process
from tests.support import eventually, free_port

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"], acks="all")
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def admin(infra: dict[str, str]) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await client.start()
    yield client
    await client.close()


def stream(ws: str) -> list[tuple[str, str, Envelope]]:
    """A shop's day in one workspace: (topic, key, envelope), in publishing order. Repeats
    are the same envelope twice (a relay's redelivery); "late" events carry an older time
    than events published before them; a cancellation precedes its order; one contact is
    deleted and then named by late events."""
    rng = random.Random(13)
    out: list[tuple[str, str, Envelope]] = []
    contacts = [str(uuid.uuid4()) for _ in range(8)]

    def contact(cid: str, version: int, payload: Message) -> None:
        out.append((CONTACTS_EVENTS, cid, new_envelope(ws, payload)))

    def shop(cid: str, at: datetime, **kind: Message) -> Envelope:
        event = shop_pb2.ShopEvent(contact_id=cid, **kind)
        event.occurred_at.FromDatetime(at)
        env = new_envelope(ws, event, occurred_at=at)
        out.append((SHOP_EVENTS, cid, env))
        return env

    def track(cid: str, at: datetime, payload: Message) -> Envelope:
        env = new_envelope(ws, payload, occurred_at=at)
        out.append((TRACKING_EVENTS, cid, env))
        return env

    for n, cid in enumerate(contacts):
        c = contacts_pb2.Contact(
            id=cid,
            workspace_id=ws,
            email=f"r{n}@example.com",
            first_name=f"Ada{n}",
            vip=n % 3 == 0,
            tags=["newsletter"] if n % 2 else [],
            version=1,
        )
        c.signed_up_at.FromDatetime(NOW - (100 + n) * DAY)
        contact(cid, 1, events_pb2.ContactCreated(contact=c))
    for n, cid in enumerate(contacts):
        money = shop_pb2.Money(amount_minor=1000 + n, currency="EUR" if n % 4 else "USD")
        item = shop_pb2.LineItem(product_id="p", category=["shoes", "bags"][n % 2], quantity=2)
        for k in range(n % 5):
            at = NOW - rng.randrange(1, 400) * DAY
            placed = shop(
                cid,
                at,
                order_placed=shop_pb2.OrderPlaced(
                    order_id=f"o{n}-{k}", cart_id=f"c{n}", items=[item], total=money
                ),
            )
            if k == 1:
                out.append((SHOP_EVENTS, cid, placed))  # delivered twice
        if n % 5 >= 2:
            shop(cid, NOW - DAY, order_cancelled=shop_pb2.OrderCancelled(order_id=f"o{n}-0"))
        # A cancellation ahead of its order, which arrives afterwards.
        shop(cid, NOW - 2 * DAY, order_refunded=shop_pb2.OrderRefunded(order_id=f"o{n}-late"))
        shop(
            cid,
            NOW - 3 * DAY,
            order_placed=shop_pb2.OrderPlaced(order_id=f"o{n}-late", total=money),
        )
        cart = shop_pb2.CartUpdated(cart_id=f"k{n}", items=[item])
        shop(cid, NOW - timedelta(hours=12), cart_updated=cart)  # newer than every order
        # An older cart update, published after the newer one.
        shop(cid, NOW - 6 * DAY, cart_updated=shop_pb2.CartUpdated(cart_id=f"k{n}", total=money))
        for v in range(3):
            shop(
                cid,
                NOW - rng.randrange(0, 90) * DAY,
                page_viewed=shop_pb2.PageViewed(url=f"/x/{v}", category=["", "shoes"][v % 2]),
            )
        shop(cid, NOW - rng.randrange(0, 30) * DAY, searched=shop_pb2.Searched(query="Red Shoes"))
        opened = track(cid, NOW - n * DAY, tracking_pb2.MessageOpened(contact_id=cid))
        out.append((TRACKING_EVENTS, cid, opened))  # twice
        track(cid, NOW, tracking_pb2.MessageOpened(contact_id=cid, machine_open=True))
        track(cid, NOW - 2 * n * DAY, tracking_pb2.LinkClicked(contact_id=cid, url="https://s/x"))
        c = contacts_pb2.Contact(
            id=cid, workspace_id=ws, email=f"r{n}@example.com", last_name="L", version=2
        )
        contact(cid, 2, events_pb2.ContactUpdated(contact=c))
        contact(cid, 3, events_pb2.TagsChanged(contact_id=cid, version=3, tags=["vip", "x"]))
        contact(
            cid,
            4,
            events_pb2.ConsentChanged(
                contact_id=cid,
                version=4,
                purpose=contacts_pb2.CONSENT_PURPOSE_MARKETING,
                status=contacts_pb2.CONSENT_STATUS_GRANTED,
                source=contacts_pb2.CONSENT_SOURCE_API,
            ),
        )
    gone = contacts[-1]
    contact(gone, 5, events_pb2.ContactDeleted(contact_id=gone, version=5))
    shop(gone, NOW, page_viewed=shop_pb2.PageViewed(url="/late"))  # after its deletion
    return out


async def publish(
    producer: AIOKafkaProducer, events: list[tuple[str, str, Envelope]]
) -> list[RecordMetadata]:
    return [
        await producer.send_and_wait(topic, env.SerializeToString(), key=key.encode())
        for topic, key, env in events
    ]


async def consumed(admin: AIOKafkaAdminClient, group: str, records: list[RecordMetadata]) -> None:
    """Until ``group`` committed past every one of ``records`` (each applied or skipped)."""
    last: dict[TopicPartition, int] = {}
    for md in records:
        tp = TopicPartition(md.topic, md.partition)
        last[tp] = max(last.get(tp, -1), md.offset)

    async def probe() -> bool:
        offsets = await admin.list_consumer_group_offsets(group)
        for tp, offset in last.items():
            committed = offsets.get(tp)
            assert committed is not None and committed.offset > offset, (group, tp)
        return True

    await eventually(probe, timeout=120, interval=0.25)


async def snapshot(schema: str, ws: str) -> dict[str, Any]:
    """The workspace's read model, without the columns that say when it was written
    (created_at, updated_at, removed_at, a membership's since: the rebuild writes later)."""
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    w = uuid.UUID(ws)
    try:
        profiles = await conn.fetch(
            f"SELECT contact_id, email, first_name, last_name, vip, tags, attributes,"
            f" signed_up_at, score, consents, suppressed, suppression_reason, version,"
            f" orders_count, first_order_at, last_order_at, spent, last_visit_at,"
            f" last_open_at, last_click_at, cart"
            f" FROM {schema}.profiles WHERE workspace_id = $1 ORDER BY contact_id",
            w,
        )
        orders = await conn.fetch(
            f"SELECT order_id, contact_id, placed_at, total_minor, currency, status, categories,"
            f" cart_id FROM {schema}.orders WHERE workspace_id = $1 ORDER BY order_id",
            w,
        )
        activity = await conn.fetch(
            f"SELECT contact_id, kind, subject, at, event_id FROM {schema}.activity"
            f" WHERE workspace_id = $1 ORDER BY contact_id, kind, at, event_id",
            w,
        )
        tombstones = await conn.fetch(
            f"SELECT contact_id, version, reason FROM {schema}.contact_tombstones"
            f" WHERE workspace_id = $1 ORDER BY contact_id",
            w,
        )
        memberships = await conn.fetch(
            f"SELECT segment_id, contact_id FROM {schema}.memberships"
            f" WHERE workspace_id = $1 ORDER BY segment_id, contact_id",
            w,
        )
    finally:
        await conn.close()
    return {
        "profiles": [dict(r) for r in profiles],
        "orders": [dict(r) for r in orders],
        "activity": [dict(r) for r in activity],
        "tombstones": [dict(r) for r in tombstones],
        "memberships": [dict(r) for r in memberships],
    }


async def test_replaying_the_topics_into_an_empty_schema_gives_the_same_read_model(
    infra: dict[str, str],
    segmentation_service: RunningService,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
) -> None:
    from services.segmentation.bootstrap import serve
    from services.segmentation.config import Settings

    ws = str(uuid.uuid4())
    records = await publish(producer, stream(ws))
    await consumed(admin, CONSUMER, records)
    live = await snapshot(SCHEMA, ws)
    # The stream left what it says: 7 contacts (one deleted), their orders, activity, carts.
    assert len(live["profiles"]) == 7 and len(live["tombstones"]) == 1
    assert sum(p["orders_count"] for p in live["profiles"]) > 0
    assert all(p["last_open_at"] is not None for p in live["profiles"])
    assert any(p["cart"] is not None for p in live["profiles"])
    assert {a["kind"] for a in live["activity"]} == {
        "page_viewed",
        "searched",
        "message_opened",
        "link_clicked",
    }

    suffix = uuid.uuid4().hex[:10]
    port = free_port()
    settings = Settings(
        grpc_port=port,
        database_schema=f"segmentation_rebuild_{suffix}",
        consumer_group=f"segmentation-rebuild-{suffix}",
    )
    async with run_in_process(serve, settings, port):
        await consumed(admin, settings.consumer_group, records)
        rebuilt = await snapshot(settings.database_schema, ws)
    for table in live:
        assert rebuilt[table] == live[table], table
