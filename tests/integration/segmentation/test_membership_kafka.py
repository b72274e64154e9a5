"""Membership transitions end to end on real Kafka: a change made through the contacts
service (a VIP star, an order reported by the shop, a deletion) reaches segmentation through
contacts' outbox and Kafka, and comes out as Entered / Exited on segments.membership.v1,
each transition exactly once (one event id), read back with a plain consumer."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from google.protobuf.field_mask_pb2 import FieldMask
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.segmentation.v1 import events_pb2 as E

from services.common import clock
from services.common.topics import SEGMENT_MEMBERSHIP
from tests.integration.conftest import RunningService, Workspace
from tests.integration.segmentation.test_segments_grpc import Shop
from tests.support import eventually, unique

C = contacts_pb2
DAY = timedelta(days=1)


@dataclass
class Seen:
    event_id: str
    payload: E.SegmentMembershipChanged
    received: float  # loop time when read

    @property
    def name(self) -> str:
        change = E.MembershipChange.Name(self.payload.change).removeprefix("MEMBERSHIP_CHANGE_")
        cause = E.MembershipCause.Name(self.payload.cause).removeprefix("MEMBERSHIP_CAUSE_")
        return f"{self.payload.segment_id}:{change}/{cause}"


@dataclass
class MembershipLog:
    """Every membership event of one workspace read from the topic, in partition order."""

    workspace_id: str
    events: list[Seen] = field(default_factory=list)

    def of(self, contact_id: str) -> list[Seen]:
        return [e for e in self.events if e.payload.contact_id == contact_id]

    def names(self, contact_id: str) -> list[str]:
        return [e.name for e in self.of(contact_id)]


@contextlib.asynccontextmanager
async def membership_log(
    bootstrap: str, workspace_id: str, topic: str = SEGMENT_MEMBERSHIP
) -> AsyncIterator[MembershipLog]:
    """Read ``topic`` from its start in the background for as long as the block runs."""
    log = MembershipLog(workspace_id)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=unique("membership-reader"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    loop = asyncio.get_running_loop()

    async def read() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    env = Envelope.FromString(record.value or b"")
                    if env.workspace_id == workspace_id:
                        log.events.append(
                            Seen(env.event_id, env.segment_membership_changed, loop.time())
                        )

    task = asyncio.create_task(read())
    try:
        yield log
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()


@pytest.fixture
async def log(infra: dict[str, str], workspace: Workspace) -> AsyncIterator[MembershipLog]:
    async with membership_log(infra["KAFKA_BOOTSTRAP_SERVERS"], workspace.id) as reading:
        yield reading


async def set_vip(
    contacts: contacts_pb2_grpc.ContactServiceStub, ws: Workspace, contact_id: str, vip: bool
) -> None:
    await contacts.UpdateContact(
        C.UpdateContactRequest(
            contact=C.ContactRef(contact_id=contact_id),
            contact_patch=C.Contact(vip=vip),
            update_mask=FieldMask(paths=["vip"]),
        ),
        metadata=ws.metadata,
    )


async def test_changes_through_contacts_come_out_as_entered_and_exited(
    contacts_service: RunningService,
    segmentation_service: RunningService,
    workspace: Workspace,
    log: MembershipLog,
) -> None:
    shop = Shop(contacts_service, workspace)
    contact = await shop.contact(vip=True)

    await eventually(lambda: log.names(contact.id) == ["vip:ENTERED/EVENT"], timeout=60)
    entered = log.of(contact.id)[0]
    assert entered.payload.caused_by_event_id  # the contact event that caused it
    assert entered.payload.segment_version == 1

    # An order 100 days old: lost (one order, the last more than 90 days ago).
    await shop.order(contact, datetime.now(UTC) - 100 * DAY)
    await eventually(lambda: "lost:ENTERED/EVENT" in log.names(contact.id), timeout=60)

    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        stub = contacts_pb2_grpc.ContactServiceStub(ch)
        await set_vip(stub, workspace, contact.id, False)
        await eventually(lambda: "vip:EXITED/EVENT" in log.names(contact.id), timeout=60)
        await stub.DeleteContact(
            C.DeleteContactRequest(contact=C.ContactRef(contact_id=contact.id)),
            metadata=workspace.metadata,
        )
    await eventually(lambda: "lost:EXITED/REMOVAL" in log.names(contact.id), timeout=60)
    names = log.names(contact.id)
    assert names.index("vip:ENTERED/EVENT") < names.index("vip:EXITED/EVENT")
    assert names.index("lost:ENTERED/EVENT") < names.index("lost:EXITED/REMOVAL")
    # Every segment the contact was in at its removal was exited; nothing entered after.
    assert names[-1].endswith("/REMOVAL")


async def test_each_transition_is_published_exactly_once(
    contacts_service: RunningService,
    segmentation_service: RunningService,
    workspace: Workspace,
    log: MembershipLog,
) -> None:
    """Many contacts, each starred and unstarred a few times concurrently, then deleted
    while starred: the deletion's Exited/REMOVAL is the marker (same key, so everything
    before it on the contact's partition was read once it is). Per (segment, contact,
    change): exactly the transitions made, each one event id, no duplicate."""
    shop = Shop(contacts_service, workspace)
    people = [await shop.contact() for _ in range(20)]
    toggles = 3  # on, off, on, off, on, off, then on before the deletion

    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        stub = contacts_pb2_grpc.ContactServiceStub(ch)

        async def churn(contact_id: str) -> None:
            for _ in range(toggles):
                await set_vip(stub, workspace, contact_id, True)
                await set_vip(stub, workspace, contact_id, False)
            await set_vip(stub, workspace, contact_id, True)
            await stub.DeleteContact(
                C.DeleteContactRequest(contact=C.ContactRef(contact_id=contact_id)),
                metadata=workspace.metadata,
            )

        await asyncio.gather(*(churn(p.id) for p in people))

    def markers_read() -> bool:
        return all("vip:EXITED/REMOVAL" in log.names(p.id) for p in people)

    await eventually(markers_read, timeout=120, interval=0.2)
    for p in people:
        events = [e for e in log.of(p.id) if e.payload.segment_id == "vip"]
        ids = Counter(e.event_id for e in events)
        assert all(n == 1 for n in ids.values()), f"a transition published twice: {ids}"
        assert [e.name for e in events] == ["vip:ENTERED/EVENT", "vip:EXITED/EVENT"] * toggles + [
            "vip:ENTERED/EVENT",
            "vip:EXITED/REMOVAL",
        ]


@pytest.fixture
def shifted() -> Iterator[clock.SystemClock]:
    """The process's one clock (every in-process service reads it), movable forward."""
    moved = clock.SystemClock()
    clock.set_clock(moved)
    yield moved
    clock.set_clock(clock.SystemClock())


async def test_time_alone_makes_a_customer_lost_through_the_sweeper(
    contacts_service: RunningService,
    segmentation_service: RunningService,
    workspace: Workspace,
    log: MembershipLog,
    shifted: clock.SystemClock,
) -> None:
    """One order 30 days ago; the clock moves to 90 days and 1 second after it: the sweeper
    (woken by its timer, nothing re-reads the contact) publishes lost, cause TIME, effective
    at the moment the order turned 90 days old, not at the sweep."""
    shop = Shop(contacts_service, workspace)
    contact = await shop.contact()
    ordered = (datetime.now(UTC) - 30 * DAY).replace(microsecond=0)
    await shop.order(contact, ordered)
    await eventually(lambda: "first_time_buyer:ENTERED/EVENT" in log.names(contact.id), timeout=60)
    assert "lost:ENTERED/TIME" not in log.names(contact.id)

    shifted.offset = ordered + 90 * DAY + timedelta(seconds=1) - datetime.now(UTC)
    await eventually(lambda: "lost:ENTERED/TIME" in log.names(contact.id), timeout=60)
    lost = next(e for e in log.of(contact.id) if e.name == "lost:ENTERED/TIME")
    effective = lost.payload.effective_at.ToDatetime(UTC)
    assert ordered + 90 * DAY < effective <= ordered + 90 * DAY + timedelta(milliseconds=1)
    # At the same moment it left passive (one order, 30 to 90 days old), by time too.
    left = next(e for e in log.of(contact.id) if e.name == "passive:EXITED/TIME")
    assert left.payload.effective_at == lost.payload.effective_at
    assert log.names(contact.id).count("lost:ENTERED/TIME") == 1
