"""The read model follows every contacts.events.v1 event by the contact's version, on real
Kafka and PostgreSQL: envelopes are published to the topic as contacts' outbox relay would,
and the segmentation service (in-process, its real consumer) applies them.

"Nothing changed" is only asserted once the consumer group committed past the record in
question (:func:`consumed`), so that a test cannot pass because a record was not read yet.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import RecordMetadata
from google.protobuf import json_format
from google.protobuf.message import Message
from nudge.contacts.v1 import contacts_pb2, events_pb2
from nudge.privacy.v1 import privacy_pb2, privacy_pb2_grpc
from nudge.shop.v1 import shop_pb2

from services.common.auth import internal_metadata
from services.common.events import new_envelope
from services.common.topics import CONTACTS_EVENTS, SHOP_EVENTS
from services.segmentation.config import Settings
from services.segmentation.handlers import CONSUMER
from tests.integration.conftest import RunningService, Workspace
from tests.integration.segmentation.test_segments_grpc import (
    count,
    new_workspace,
    reaches,
    violations,
)
from tests.support import eventually, unique

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


class Topic:
    """Publishes one workspace's contact events, keyed by the contact as the relay does."""

    def __init__(self, producer: AIOKafkaProducer, workspace_id: str) -> None:
        self.producer = producer
        self.ws = workspace_id

    async def send(
        self, contact_id: str, payload: Message, topic: str = CONTACTS_EVENTS
    ) -> RecordMetadata:
        envelope = new_envelope(self.ws, payload)
        return await self.producer.send_and_wait(
            topic, envelope.SerializeToString(), key=contact_id.encode()
        )

    def contact(self, contact_id: str, version: int, **fields: Any) -> contacts_pb2.Contact:
        fields.setdefault("email", f"{contact_id[:8]}@example.com")
        return contacts_pb2.Contact(id=contact_id, workspace_id=self.ws, version=version, **fields)

    async def created(self, contact_id: str, version: int = 1, **fields: Any) -> RecordMetadata:
        contact = self.contact(contact_id, version, **fields)
        return await self.send(contact_id, events_pb2.ContactCreated(contact=contact))

    async def updated(self, contact_id: str, version: int, **fields: Any) -> RecordMetadata:
        contact = self.contact(contact_id, version, **fields)
        return await self.send(contact_id, events_pb2.ContactUpdated(contact=contact))

    async def order(self, contact_id: str, order_id: str) -> RecordMetadata:
        event = shop_pb2.ShopEvent(
            contact_id=contact_id,
            order_placed=shop_pb2.OrderPlaced(
                order_id=order_id, total=shop_pb2.Money(amount_minor=990, currency="EUR")
            ),
        )
        event.occurred_at.FromDatetime(NOW - 5 * DAY)
        return await self.send(contact_id, event, SHOP_EVENTS)


async def consumed(admin: AIOKafkaAdminClient, *records: RecordMetadata) -> None:
    """Wait until the segmentation group committed past every one of ``records``: the loop
    commits only below its first unfinished record, so each was applied (or skipped)."""

    async def probe() -> bool:
        offsets = await admin.list_consumer_group_offsets(CONSUMER)
        for md in records:
            committed = offsets.get(TopicPartition(md.topic, md.partition))
            assert committed is not None and committed.offset > md.offset, md
        return True

    await eventually(probe, timeout=60, interval=0.2)


async def fetch(query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def profile(ws: str, contact_id: str) -> asyncpg.Record | None:
    rows = await fetch(
        "SELECT * FROM segmentation.profiles WHERE workspace_id = $1 AND contact_id = $2",
        uuid.UUID(ws),
        uuid.UUID(contact_id),
    )
    return rows[0] if rows else None


async def at_version(ws: str, contact_id: str, version: int) -> asyncpg.Record:
    """The profile once it reached ``version``."""

    async def probe() -> asyncpg.Record | None:
        p = await profile(ws, contact_id)
        return p if p is not None and p["version"] == version else None

    found: asyncpg.Record = await eventually(probe, timeout=60, interval=0.1)
    return found


async def tombstone(ws: str, contact_id: str) -> asyncpg.Record | None:
    rows = await fetch(
        "SELECT * FROM segmentation.contact_tombstones WHERE workspace_id = $1 AND contact_id = $2",
        uuid.UUID(ws),
        uuid.UUID(contact_id),
    )
    return rows[0] if rows else None


async def order_ids(ws: str, contact_id: str) -> list[str]:
    rows = await fetch(
        "SELECT order_id FROM segmentation.orders WHERE workspace_id = $1 AND contact_id = $2"
        " ORDER BY order_id",
        uuid.UUID(ws),
        uuid.UUID(contact_id),
    )
    return [r["order_id"] for r in rows]


def consent(
    contact_id: str,
    version: int,
    purpose: contacts_pb2.ConsentPurpose.ValueType,
    status: contacts_pb2.ConsentStatus.ValueType,
) -> events_pb2.ConsentChanged:
    return events_pb2.ConsentChanged(
        contact_id=contact_id,
        purpose=purpose,
        status=status,
        source=contacts_pb2.CONSENT_SOURCE_API,
        version=version,
    )


async def test_every_contact_event_is_applied_with_its_version(
    segmentation_service: RunningService, producer: AIOKafkaProducer
) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    topic = Topic(producer, ws)
    await topic.created(cid, 1, email="ada@example.com", tags=["new"])
    await topic.updated(cid, 2, email="ada@example.org", vip=True, attributes={"city": "Rome"})
    tags = events_pb2.TagsChanged(contact_id=cid, added=["b", "a"], tags=["a", "b"], version=3)
    await topic.send(cid, tags)
    await topic.send(cid, events_pb2.ScoreChanged(contact_id=cid, delta=12, score=12, version=4))
    marketing, targeted = (
        contacts_pb2.CONSENT_PURPOSE_MARKETING,
        contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
    )
    await topic.send(cid, consent(cid, 5, marketing, contacts_pb2.CONSENT_STATUS_GRANTED))
    await topic.send(cid, consent(cid, 6, targeted, contacts_pb2.CONSENT_STATUS_GRANTED))
    await topic.send(cid, consent(cid, 7, targeted, contacts_pb2.CONSENT_STATUS_WITHDRAWN))
    suppressed = events_pb2.ContactSuppressed(
        contact_id=cid, reason=contacts_pb2.SUPPRESSION_REASON_COMPLAINT, version=8
    )
    await topic.send(cid, suppressed)

    p = await at_version(ws, cid, 8)
    assert p["email"] == "ada@example.org"
    assert p["vip"] is True
    assert json.loads(p["attributes"]) == {"city": "Rome"}
    assert p["tags"] == ["a", "b"]
    assert p["score"] == 12
    consents = json.loads(p["consents"])
    assert {k: v["state"] for k, v in consents.items()} == {
        "marketing": "granted",
        "targeted_messages": "withdrawn",
    }
    assert consents["marketing"]["source"] == "api"
    assert (p["suppressed"], p["suppression_reason"]) == (True, "complaint")


async def test_replayed_and_older_events_change_nothing(
    segmentation_service: RunningService, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient
) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    topic = Topic(producer, ws)
    await topic.created(cid, 1, email="old@example.com")
    await topic.updated(cid, 3, email="new@example.com", vip=True, tags=["t3"], score=30)
    await at_version(ws, cid, 3)
    # A redelivery of version 1 and events at or below 3 (a replay from an older offset, a
    # relay that sent them again under new event ids): none may undo version 3.
    late = [
        await topic.created(cid, 1, email="old@example.com"),
        await topic.updated(cid, 3, email="replayed@example.com"),
        await topic.updated(cid, 2, email="older@example.com", vip=False),
        await topic.send(cid, events_pb2.TagsChanged(contact_id=cid, tags=["t2"], version=2)),
        await topic.send(cid, events_pb2.ScoreChanged(contact_id=cid, score=-1, version=3)),
        await topic.send(
            cid,
            consent(
                cid, 2, contacts_pb2.CONSENT_PURPOSE_MARKETING, contacts_pb2.CONSENT_STATUS_GRANTED
            ),
        ),
        await topic.send(cid, events_pb2.ContactSuppressed(contact_id=cid, version=1)),
    ]
    await consumed(admin, *late)
    p = await profile(ws, cid)
    assert p is not None
    assert (p["version"], p["email"], p["vip"], p["tags"], p["score"]) == (
        3,
        "new@example.com",
        True,
        ["t3"],
        30,
    )
    assert (json.loads(p["consents"]), p["suppressed"]) == ({}, False)


async def test_an_event_for_a_contact_not_known_yet_creates_what_it_carries(
    segmentation_service: RunningService, producer: AIOKafkaProducer
) -> None:
    # The read model is consumed from where Kafka still has records (retention, a rebuild):
    # a contact's first record may be a TagsChanged. It makes a partial profile at its
    # version; the next snapshot above it fills the rest in.
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    topic = Topic(producer, ws)
    await topic.send(cid, events_pb2.TagsChanged(contact_id=cid, tags=["early"], version=5))
    p = await at_version(ws, cid, 5)
    assert (p["email"], p["tags"]) == (None, ["early"])
    await topic.updated(cid, 6, email="later@example.com", tags=["early", "late"])
    p = await at_version(ws, cid, 6)
    assert (p["email"], p["tags"]) == ("later@example.com", ["early", "late"])


async def test_a_deleted_contact_is_removed_and_late_events_do_not_bring_it_back(
    segmentation_service: RunningService, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient
) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    topic = Topic(producer, ws)
    await topic.created(cid, 1, vip=True)
    await topic.order(cid, "o-before")
    await eventually(lambda: _has_orders(ws, cid), timeout=60, interval=0.1)
    await topic.send(cid, events_pb2.ContactDeleted(contact_id=cid, version=2))
    await eventually(lambda: tombstone(ws, cid), timeout=60, interval=0.1)
    assert await profile(ws, cid) is None
    assert await order_ids(ws, cid) == []

    late = [
        await topic.send(cid, events_pb2.ContactDeleted(contact_id=cid, version=2)),  # again
        await topic.updated(cid, 1, email="ghost@example.com"),  # an older snapshot, replayed
        await topic.send(cid, events_pb2.TagsChanged(contact_id=cid, tags=["x"], version=2)),
        await topic.order(cid, "o-after"),  # the shop's late order
    ]
    await consumed(admin, *late)
    assert await profile(ws, cid) is None
    assert await order_ids(ws, cid) == []
    stone = await tombstone(ws, cid)
    assert stone is not None and (stone["version"], stone["reason"]) == (2, "deleted")


async def _has_orders(ws: str, cid: str) -> bool:
    return bool(await order_ids(ws, cid))


async def test_an_erased_contact_leaves_no_trace_of_its_address_in_the_schema(
    segmentation_service: RunningService, producer: AIOKafkaProducer, admin: AIOKafkaAdminClient
) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    address = f"{unique('erase-me')}@example.com"
    topic = Topic(producer, ws)
    await topic.created(cid, 1, email=address, tags=["t"], attributes={"note": address})
    await topic.send(
        cid,
        consent(
            cid, 2, contacts_pb2.CONSENT_PURPOSE_MARKETING, contacts_pb2.CONSENT_STATUS_GRANTED
        ),
    )
    await topic.order(cid, f"order-of-{address}")
    await at_version(ws, cid, 2)
    await eventually(lambda: _has_orders(ws, cid), timeout=60, interval=0.1)
    assert await _rows_mentioning(address) > 0  # the probe below can see it

    await topic.send(cid, events_pb2.ContactErased(contact_id=cid, version=3))
    await eventually(lambda: tombstone(ws, cid), timeout=60, interval=0.1)
    late = await topic.order(cid, f"late-order-of-{address}")
    await consumed(admin, late)
    assert await _rows_mentioning(address) == 0
    assert await _rows_mentioning(cid) == 1  # the tombstone alone, which holds no address
    stone = await tombstone(ws, cid)
    assert stone is not None and (stone["version"], stone["reason"]) == (3, "erased")


async def _rows_mentioning(text: str) -> int:
    """Rows of any table of the segmentation schema whose text form contains ``text``."""
    tables = await fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'segmentation' AND table_type = 'BASE TABLE'"
    )
    found = 0
    for t in tables:
        rows = await fetch(
            f'SELECT count(*) AS n FROM segmentation."{t["table_name"]}" x'
            " WHERE strpos(x::text, $1) > 0",
            text,
        )
        found += int(rows[0]["n"])
    return found


async def test_segment_counts_follow_vip_changes_and_removals(
    segmentation_service: RunningService,
    contacts_service: RunningService,
    producer: AIOKafkaProducer,
) -> None:
    workspace = await new_workspace(contacts_service, "Counts follow changes")
    topic = Topic(producer, workspace.id)
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    await topic.created(a, 1)
    await topic.created(b, 1, vip=True)
    await topic.order(a, unique("o"))
    await reaches(segmentation_service, workspace.metadata, {"vip": 1, "first_time_buyer": 1})
    await topic.updated(a, 2, vip=True)  # a manager stars a
    await reaches(segmentation_service, workspace.metadata, {"vip": 2, "first_time_buyer": 1})
    await topic.send(a, events_pb2.ContactDeleted(contact_id=a, version=3))
    await topic.updated(b, 2, vip=False)
    await reaches(segmentation_service, workspace.metadata, {"vip": 0, "first_time_buyer": 0})
    assert await profile(workspace.id, a) is None  # deleted, not just unstarred
    unstarred = await profile(workspace.id, b)
    assert unstarred is not None and unstarred["vip"] is False


async def test_the_same_contact_id_in_another_workspace_is_another_profile(
    segmentation_service: RunningService, producer: AIOKafkaProducer
) -> None:
    mine, theirs, cid = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await Topic(producer, mine).created(cid, 1, tags=["mine"])
    await at_version(mine, cid, 1)
    await Topic(producer, theirs).send(cid, events_pb2.ContactDeleted(contact_id=cid, version=9))
    await eventually(lambda: tombstone(theirs, cid), timeout=60, interval=0.1)
    p = await profile(mine, cid)
    assert p is not None and p["tags"] == ["mine"]
    assert await tombstone(mine, cid) is None


# -- export (nudge.privacy.v1.ContactDataService) ----------------------------------------------


def internal(workspace_id: str | None) -> tuple[tuple[str, str], ...]:
    return internal_metadata(Settings().internal_token, workspace_id)


async def export(
    segmentation: RunningService, metadata: tuple[tuple[str, str], ...], contact_id: str
) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(segmentation.address) as ch:
        answer = await privacy_pb2_grpc.ContactDataServiceStub(ch).ExportContactData(
            privacy_pb2.ExportContactDataRequest(contact_id=contact_id), metadata=metadata
        )
    assert answer.service == "segmentation"
    data: dict[str, Any] = json_format.MessageToDict(answer.data)
    return data


async def test_export_gives_the_profile_orders_and_memberships(
    segmentation_service: RunningService, producer: AIOKafkaProducer
) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    topic = Topic(producer, ws)
    await topic.created(cid, 1, email="export@example.com", vip=True, tags=["a"], score=7)
    await topic.order(cid, "o-export")
    await at_version(ws, cid, 1)
    await eventually(lambda: _has_orders(ws, cid), timeout=60, interval=0.1)

    data = await export(segmentation_service, internal(ws), cid)
    assert data["profile"]["email"] == "export@example.com"
    assert data["profile"]["tags"] == ["a"]
    assert data["profile"]["score"] == 7
    assert data["profile"]["version"] == 1
    assert [(o["order_id"], o["status"], o["total_minor"]) for o in data["orders"]] == [
        ("o-export", "completed", 990)
    ]
    assert data["memberships"] == ["vip", "new_customer", "first_time_buyer"]
    again = await export(segmentation_service, internal(ws), cid)  # a replayed call
    assert {k: v for k, v in again.items() if k != "evaluated_at"} == {
        k: v for k, v in data.items() if k != "evaluated_at"
    }
    # Another workspace asking for the same id gets nothing; so does an unknown contact.
    assert await export(segmentation_service, internal(str(uuid.uuid4())), cid) == {}
    assert await export(segmentation_service, internal(ws), str(uuid.uuid4())) == {}


async def test_export_is_for_nudges_own_services_and_checks_its_input(
    segmentation_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        stub = privacy_pb2_grpc.ContactDataServiceStub(ch)
        request = privacy_pb2.ExportContactDataRequest(contact_id=str(uuid.uuid4()))
        for metadata, code in [
            (workspace.metadata, grpc.StatusCode.UNAUTHENTICATED),  # an API key is not enough
            ((("authorization", "Internal wrong"),), grpc.StatusCode.UNAUTHENTICATED),
            (internal(None), grpc.StatusCode.UNAUTHENTICATED),  # no workspace named
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ExportContactData(request, metadata=metadata)
            assert err.value.code() == code

        for bad in ["", "not-a-uuid", "x" * 100_000]:  # empty, malformed, oversized
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ExportContactData(
                    privacy_pb2.ExportContactDataRequest(contact_id=bad),
                    metadata=internal(workspace.id),
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert violations(err.value) == ["contact_id"]

        raw = ch.unary_unary("/nudge.privacy.v1.ContactDataService/ExportContactData")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(b"\xff\xff\xff garbage", metadata=internal(workspace.id))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err.value) == ["body"]


async def test_an_erased_contact_exports_nothing(
    segmentation_service: RunningService, producer: AIOKafkaProducer
) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    topic = Topic(producer, ws)
    await topic.created(cid, 1)
    await at_version(ws, cid, 1)
    await topic.send(cid, events_pb2.ContactErased(contact_id=cid, version=2))
    await eventually(lambda: tombstone(ws, cid), timeout=60, interval=0.1)
    assert await export(segmentation_service, internal(ws), cid) == {}
    assert await count(segmentation_service, internal(ws), "vip") == 0
