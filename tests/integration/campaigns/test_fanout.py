"""The fan-out on real PostgreSQL, Kafka and segmentation: a SENDING campaign becomes one
delivery.requests.v1 record per member, then SENT; pause stops it at a batch boundary and
resume finishes it; cancel stops it for good; an A/B campaign sends its sample, waits for
the winner, then sends the rest with the winner's subject.

To stop the driver at a known batch without timing, a test holds an uncommitted
``recipients`` row of a contact in a later batch: the driver's insert of that batch waits on
it (a unique key), with the checkpoint at the batch before. What the test does then (pause,
cancel, SIGKILL in test_fanout_kill.py) happens at a known point.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from deploy.local.topics import ensure_topics
from services.campaigns import audience
from services.campaigns.adapters.postgres import transition
from services.campaigns.audience import bucket, message_id
from services.campaigns.domain.model import Status
from services.campaigns.fanout import LOCK_CLASS
from services.campaigns.ports import Ports
from services.common import clock
from services.common.topics import DELIVERY_REQUESTS, TOPICS
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.segmentation.queries_support import bulk_seed
from tests.support import eventually, fetchval, free_port

BATCH = 50
# The fan-out's records go to a topic of these tests' own, as delivery.requests.v1 (same
# partitions): thousands of them on the real topic would be a backlog for every delivery
# service the later tests start.
FANOUT_TOPIC = "test.campaigns.fanout.v1"


async def ensure_fanout_topic() -> None:
    await ensure_topics(
        os.environ["KAFKA_BOOTSTRAP_SERVERS"], {FANOUT_TOPIC: TOPICS[DELIVERY_REQUESTS]}
    )


@pytest.fixture(scope="module")
async def campaigns_service(
    segmentation_for_campaigns: RunningService,
) -> AsyncIterator[RunningService]:
    """The campaigns service with small fan-out batches, so a few hundred contacts make
    several batches."""
    from services.campaigns.bootstrap import serve
    from services.campaigns.config import Settings

    await ensure_fanout_topic()
    port = free_port()
    settings = Settings(
        grpc_port=port,
        segmentation_addr=segmentation_for_campaigns.address,
        fanout_batch_size=BATCH,
        fanout_poll_interval_s=0.1,
        fanout_topic=FANOUT_TOPIC,
    )
    async with run_in_process(serve, settings, port) as running:
        yield running


async def connect() -> asyncpg.Connection:
    return await asyncpg.connect(
        os.environ["DATABASE_URL"], server_settings={"search_path": "campaigns"}
    )


async def vip_members(workspace_id: str, n: int) -> list[str]:
    """``n`` VIP profiles in segmentation's read model; their contact ids, ascending (the
    order the audience streams them in)."""
    await bulk_seed(workspace_id, n)
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        # The same people in contacts, with consent to targeted messages: the audience asks
        # contacts whether each may be mailed (written straight into its tables, for volume).
        await conn.execute(
            "INSERT INTO contacts.contacts (workspace_id, id, email, created_at, updated_at)"
            " SELECT workspace_id, contact_id, email, now(), now() FROM segmentation.profiles"
            " WHERE workspace_id = $1 ON CONFLICT DO NOTHING",
            uuid.UUID(workspace_id),
        )
        await conn.execute(
            "INSERT INTO contacts.consents (workspace_id, contact_id, purpose, status,"
            " updated_at) SELECT workspace_id, contact_id, $2, $3, now()"
            " FROM segmentation.profiles WHERE workspace_id = $1 ON CONFLICT DO NOTHING",
            uuid.UUID(workspace_id),
            contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
            contacts_pb2.CONSENT_STATUS_GRANTED,
        )
        rows = await conn.fetch(
            "SELECT contact_id FROM segmentation.profiles WHERE workspace_id = $1 AND vip"
            " ORDER BY contact_id",
            uuid.UUID(workspace_id),
        )
    finally:
        await conn.close()
    return [str(r["contact_id"]) for r in rows]


async def new_campaign(
    workspace_id: str, *, ab_test: dict[str, object] | None = None, reply_to: str = ""
) -> uuid.UUID:
    """A draft on the built-in "vip" segment, written as LIFECYCLE's CreateCampaign would."""
    campaign_id = uuid.uuid4()
    now = datetime.now(UTC)
    conn = await connect()
    try:
        await conn.execute(
            "INSERT INTO campaigns (id, workspace_id, name, segment_ids, subject, body_text,"
            " status, created_at, updated_at, reply_to, ab_test)"
            " VALUES ($1, $2, 'Spring', '{vip}', 'Spring tea, {{ contact.first_name }}',"
            " 'Hello, new tea.', $3, $4, $4, $5, $6::jsonb)",
            campaign_id,
            uuid.UUID(workspace_id),
            int(Status.DRAFT),
            now,
            reply_to,
            json.dumps(ab_test) if ab_test else None,
        )
    finally:
        await conn.close()
    return campaign_id


async def move(
    workspace_id: str, campaign_id: uuid.UUID, frm: tuple[Status, ...], to: Status
) -> None:
    conn = await connect()
    try:
        moved = await transition(
            conn, workspace_id, campaign_id, frm, to, "test", "", datetime.now(UTC)
        )
    finally:
        await conn.close()
    assert moved is not None, f"campaign not in {frm}"


async def status(campaign_id: uuid.UUID) -> int:
    return int(
        await fetchval(
            os.environ["DATABASE_URL"],
            "SELECT status FROM campaigns.campaigns WHERE id = $1",
            campaign_id,
        )  # type: ignore[arg-type]
    )


async def checkpoint(campaign_id: uuid.UUID, phase: str = "all") -> int:
    value = await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT reached FROM campaigns.fanouts WHERE campaign_id = $1 AND phase = $2",
        campaign_id,
        phase,
    )
    return int(value or 0)  # type: ignore[call-overload]


def checkpoint_is(campaign_id: uuid.UUID, reached: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return await checkpoint(campaign_id) == reached

    return probe


async def recipient_rows(campaign_id: uuid.UUID) -> list[asyncpg.Record]:
    conn = await connect()
    try:
        return await conn.fetch(  # type: ignore[no-any-return]
            "SELECT contact_id::text, message_id::text, variant, excluded, requested_at, due_at"
            " FROM recipients WHERE campaign_id = $1",
            campaign_id,
        )
    finally:
        await conn.close()


async def driver_idle(campaign_id: uuid.UUID) -> bool:
    """No fan-out holds the campaign's advisory lock (checked by taking and releasing it)."""
    conn = await connect()
    try:
        got = await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_CLASS, str(campaign_id)
        )
        if got:
            await conn.execute(
                "SELECT pg_advisory_unlock($1, hashtext($2))", LOCK_CLASS, str(campaign_id)
            )
        return bool(got)
    finally:
        await conn.close()


async def insert_blocked() -> bool:
    """A fan-out's insert of recipients waits on a lock (the row a test holds)."""
    return bool(
        await fetchval(
            os.environ["DATABASE_URL"],
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'INSERT INTO recipients%' LIMIT 1",
        )
    )


class Blocker:
    """An uncommitted recipients row of one contact: the fan-out's insert of the batch that
    holds the contact waits until :meth:`release`."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.tx = conn.transaction()

    @classmethod
    async def hold(cls, workspace_id: str, campaign_id: uuid.UUID, contact_id: str) -> Blocker:
        blocker = cls(await connect())
        await blocker.tx.start()
        await blocker.conn.execute(
            "INSERT INTO recipients (workspace_id, campaign_id, contact_id, message_id)"
            " VALUES ($1, $2, $3, $4)",
            uuid.UUID(workspace_id),
            campaign_id,
            uuid.UUID(contact_id),
            uuid.UUID(message_id(campaign_id, contact_id)),
        )
        return blocker

    async def release(self) -> None:
        if not self.conn.is_closed():
            await self.tx.rollback()
            await self.conn.close()


async def requested_records(campaign_id: uuid.UUID, timeout: float = 60) -> list[Envelope]:
    """Every record of the campaign on the fan-out's topic, from the start of the topic to
    its end now, copies included."""
    consumer = AIOKafkaConsumer(
        FANOUT_TOPIC,  # subscribed without a group: every partition, metadata at start
        bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(FANOUT_TOPIC, p)
            for p in sorted(consumer.partitions_for_topic(FANOUT_TOPIC) or [])
        ]
        assert partitions, f"no metadata for {FANOUT_TOPIC}"
        ends = await consumer.end_offsets(partitions)
        found: list[Envelope] = []
        deadline = asyncio.get_running_loop().time() + timeout

        async def behind() -> dict[TopicPartition, tuple[int, int]]:
            positions = {tp: await consumer.position(tp) for tp in partitions}
            return {tp: (positions[tp], ends[tp]) for tp in partitions if positions[tp] < ends[tp]}

        while lagging := await behind():
            assert asyncio.get_running_loop().time() < deadline, f"topic not read: {lagging}"
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if record.offset < ends[tp]:
                        env = Envelope.FromString(record.value or b"")
                        if env.delivery_requested.campaign_id == str(campaign_id):
                            assert record.key == env.delivery_requested.contact_id.encode()
                            found.append(env)
        return found
    finally:
        await consumer.stop()


def message_ids(records: list[Envelope]) -> set[str]:
    return {r.delivery_requested.message_id for r in records}


async def send_until_sent(workspace_id: str, campaign: uuid.UUID) -> list[asyncpg.Record]:
    """Move the draft to SENDING, wait until the fan-out made it SENT: its recipients rows."""
    await move(workspace_id, campaign, (Status.DRAFT,), Status.SENDING)

    async def sent() -> bool:
        return await status(campaign) == Status.SENT

    await eventually(sent, timeout=60)
    return await recipient_rows(campaign)


async def test_a_sending_campaign_reaches_every_member_once_then_is_sent(
    campaigns_service: RunningService, workspace: Workspace
) -> None:
    contacts = await vip_members(workspace.id, 3 * BATCH + 7)
    campaign = await new_campaign(workspace.id, reply_to="manager@example.com")
    rows = await send_until_sent(workspace.id, campaign)
    assert sorted(r["contact_id"] for r in rows) == contacts
    assert all(r["excluded"] is None and r["requested_at"] is not None for r in rows)
    expected = {message_id(campaign, c) for c in contacts}
    assert {r["message_id"] for r in rows} == expected
    records = await requested_records(campaign)
    assert message_ids(records) == expected
    first = records[0]
    request = first.delivery_requested
    assert first.workspace_id == workspace.id
    assert request.kind == delivery_pb2.MESSAGE_KIND_CAMPAIGN
    assert request.content.subject == "Spring tea, {{ contact.first_name }}"
    assert request.content.body_text == "Hello, new tea."
    assert (request.from_name, request.reply_to) == ("Test shop", "manager@example.com")
    conn = await connect()
    try:
        actor = await conn.fetchval(
            "SELECT actor FROM transitions WHERE campaign_id = $1 AND to_status = $2",
            campaign,
            int(Status.SENT),
        )
        done = await conn.fetchrow(
            "SELECT reached, requested, excluded, done_at FROM fanouts WHERE campaign_id = $1",
            campaign,
        )
    finally:
        await conn.close()
    assert actor == "system:fanout"
    assert done is not None and done["done_at"] is not None
    assert (done["reached"], done["requested"], done["excluded"]) == (len(contacts),) * 2 + (0,)


async def test_rows_an_earlier_run_wrote_past_its_checkpoint_are_written_over_not_twice(
    campaigns_service: RunningService, workspace: Workspace
) -> None:
    """A run that died after inserting a batch's rows and before its checkpoint leaves rows
    the next run inserts again: the fan-out inserts plainly first, so it must fall back to
    ON CONFLICT DO NOTHING there rather than fail the campaign over and over."""
    contacts = await vip_members(workspace.id, 3 * BATCH + 7)
    campaign = await new_campaign(workspace.id)
    # Part of the second batch, as the dead run wrote it (mailed, requested), no checkpoint.
    earlier = contacts[BATCH + 3 : BATCH + 20]
    conn = await connect()
    try:
        await conn.execute(
            "INSERT INTO recipients (workspace_id, campaign_id, contact_id, message_id,"
            " variant, requested_at) SELECT $1, $2, c, m, 0, now()"
            " FROM unnest($3::uuid[], $4::uuid[]) AS t(c, m)",
            uuid.UUID(workspace.id),
            campaign,
            earlier,
            [message_id(campaign, c) for c in earlier],
        )
    finally:
        await conn.close()
    rows = await send_until_sent(workspace.id, campaign)
    assert sorted(r["contact_id"] for r in rows) == contacts
    expected = {message_id(campaign, c) for c in contacts}
    assert {r["message_id"] for r in rows} == expected
    assert message_ids(await requested_records(campaign)) == expected
    assert await checkpoint(campaign) == len(contacts)


async def test_a_campaign_without_reply_to_gets_the_workspaces_default_and_one_with_keeps_its(
    campaigns_service: RunningService, workspace: Workspace
) -> None:
    contacts = await vip_members(workspace.id, 3)
    conn = await connect()
    try:
        # As UpdateCampaignSettings writes it; a cap high enough for both campaigns.
        await conn.execute(
            "INSERT INTO settings (workspace_id, frequency_cap_messages, default_reply_to,"
            " updated_at) VALUES ($1, 10, 'replies@shop.example', now())",
            uuid.UUID(workspace.id),
        )
    finally:
        await conn.close()
    plain = await new_campaign(workspace.id)
    own = await new_campaign(workspace.id, reply_to="manager@example.com")
    for campaign in (plain, own):
        await move(workspace.id, campaign, (Status.DRAFT,), Status.SENDING)
    reply_tos = {}
    for campaign in (plain, own):

        async def sent(campaign: uuid.UUID = campaign) -> bool:
            return await status(campaign) == Status.SENT

        await eventually(sent, timeout=60)
        records = await requested_records(campaign)
        assert len(records) == len(contacts)
        reply_tos[campaign] = {r.delivery_requested.reply_to for r in records}
    assert reply_tos == {plain: {"replies@shop.example"}, own: {"manager@example.com"}}


async def test_pause_stops_at_a_batch_boundary_and_resume_finishes(
    campaigns_service: RunningService, workspace: Workspace
) -> None:
    contacts = await vip_members(workspace.id, 6 * BATCH)
    campaign = await new_campaign(workspace.id)
    # The driver stops inside the fourth batch, its checkpoint at three batches.
    blocker = await Blocker.hold(workspace.id, campaign, contacts[3 * BATCH + 10])
    try:
        await move(workspace.id, campaign, (Status.DRAFT,), Status.SENDING)
        await eventually(insert_blocked, timeout=60)
        # The batch before is acked and checkpointed meanwhile (the two overlap).
        await eventually(checkpoint_is(campaign, 3 * BATCH), timeout=60)
        await move(workspace.id, campaign, (Status.SENDING,), Status.PAUSED)
    finally:
        await blocker.release()
    # The batch under way completes (rows, records, checkpoint); none after it starts.
    await eventually(lambda: driver_idle(campaign), timeout=30)
    assert await status(campaign) == Status.PAUSED
    assert await checkpoint(campaign) == 4 * BATCH
    rows = await recipient_rows(campaign)
    assert sorted(r["contact_id"] for r in rows) == contacts[: 4 * BATCH]
    assert message_ids(await requested_records(campaign)) == {
        message_id(campaign, c) for c in contacts[: 4 * BATCH]
    }

    await move(workspace.id, campaign, (Status.PAUSED,), Status.SENDING)

    async def sent() -> bool:
        return await status(campaign) == Status.SENT

    await eventually(sent, timeout=60)
    rows = await recipient_rows(campaign)
    assert sorted(r["contact_id"] for r in rows) == contacts
    assert message_ids(await requested_records(campaign)) == {
        message_id(campaign, c) for c in contacts
    }


async def test_cancel_stops_the_fan_out_for_good(
    campaigns_service: RunningService, workspace: Workspace
) -> None:
    contacts = await vip_members(workspace.id, 5 * BATCH)
    campaign = await new_campaign(workspace.id)
    blocker = await Blocker.hold(workspace.id, campaign, contacts[2 * BATCH + 1])
    try:
        await move(workspace.id, campaign, (Status.DRAFT,), Status.SENDING)
        await eventually(insert_blocked, timeout=60)
        await move(workspace.id, campaign, (Status.SENDING,), Status.CANCELLED)
    finally:
        await blocker.release()
    await eventually(lambda: driver_idle(campaign), timeout=30)
    # Another campaign sent from start to end afterwards: the driver has polled many times.
    later = await new_campaign(workspace.id)
    await move(workspace.id, later, (Status.DRAFT,), Status.SENDING)

    async def later_sent() -> bool:
        return await status(later) == Status.SENT

    await eventually(later_sent, timeout=60)
    assert await status(campaign) == Status.CANCELLED
    assert await checkpoint(campaign) == 3 * BATCH
    assert len(await recipient_rows(campaign)) == 3 * BATCH
    assert len(message_ids(await requested_records(campaign))) == 3 * BATCH


async def test_an_ab_campaign_sends_the_sample_waits_for_the_winner_then_the_rest(
    campaigns_service: RunningService, workspace: Workspace
) -> None:
    contacts = await vip_members(workspace.id, 2 * BATCH)
    ab = {
        "subjects": ["Subject A", "Subject B"],
        "sample_percent": 20,
        "metric": 1,
        "decide_after_s": 600,
        "winner": -1,
        "decided_at": None,
        "sample_done_at": None,
    }
    campaign = await new_campaign(workspace.id, ab_test=ab)
    await move(workspace.id, campaign, (Status.DRAFT,), Status.SENDING)

    async def sample_done() -> object:
        raw = await fetchval(
            os.environ["DATABASE_URL"],
            "SELECT ab_test->>'sample_done_at' FROM campaigns.campaigns WHERE id = $1",
            campaign,
        )
        return raw

    await eventually(sample_done, timeout=60)
    await eventually(lambda: driver_idle(campaign), timeout=30)
    assert await status(campaign) == Status.SENDING  # waiting for REPORT's decision
    sample = await requested_records(campaign)
    assert {r.delivery_requested.content.subject for r in sample} <= {"Subject A", "Subject B"}
    sampled = {r.delivery_requested.contact_id for r in sample}
    # The audience's buckets (services/campaigns/audience.py): the first 20 % are the
    # sample, variant = bucket mod 2.
    assert sampled == {c for c in contacts if bucket(campaign, c) < 2000}
    assert {
        r.delivery_requested.content.subject
        for r in sample
        if bucket(campaign, r.delivery_requested.contact_id) % 2
    } == {"Subject B"}
    assert await checkpoint(campaign, "rest") == 0

    # REPORT's decision loop picks variant 1.
    conn = await connect()
    try:
        await conn.execute(
            "UPDATE campaigns SET ab_test = ab_test || '{\"winner\": 1}'::jsonb WHERE id = $1",
            campaign,
        )
    finally:
        await conn.close()

    async def sent() -> bool:
        return await status(campaign) == Status.SENT

    await eventually(sent, timeout=60)
    records = await requested_records(campaign)
    assert message_ids(records) == {message_id(campaign, c) for c in contacts}
    rest = [r for r in records if r.delivery_requested.contact_id not in sampled]
    assert rest and {r.delivery_requested.content.subject for r in rest} == {"Subject B"}


async def test_excluded_rows_are_recorded_unsent_and_deferred_ones_go_out_when_due(
    campaigns_service: RunningService, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audience (a wrapper here, as the placeholder excludes and defers nobody) leaves
    every third contact out and defers every third after it by an hour, which the fan-out's
    clock (in this process) then skips."""
    shifted = clock.SystemClock()
    monkeypatch.setattr(clock, "_clock", shifted)
    contacts = await vip_members(workspace.id, 2 * BATCH + 10)
    due_at = clock.now() + timedelta(hours=1)
    real = audience.stream_recipients

    async def with_exclusions(
        ports: Ports, spec: audience.AudienceSpec, **kw: Any
    ) -> AsyncIterator[list[audience.Recipient]]:
        async for batch in real(ports, spec, **kw):
            out = []
            for r in batch:
                i = contacts.index(str(r.contact_id))
                if i % 3 == 0:
                    out.append(dataclasses.replace(r, excluded="no_consent"))
                elif i % 3 == 1:
                    out.append(dataclasses.replace(r, due_at=due_at))
                else:
                    out.append(r)
            yield out

    monkeypatch.setattr(audience, "stream_recipients", with_exclusions)
    left_out = {c for i, c in enumerate(contacts) if i % 3 == 0}
    deferred = {c for i, c in enumerate(contacts) if i % 3 == 1}
    now_sent = {c for i, c in enumerate(contacts) if i % 3 == 2}
    campaign = await new_campaign(workspace.id)
    await move(workspace.id, campaign, (Status.DRAFT,), Status.SENDING)

    async def phase_done() -> bool:
        return bool(
            await fetchval(
                os.environ["DATABASE_URL"],
                "SELECT done_at IS NOT NULL FROM campaigns.fanouts WHERE campaign_id = $1",
                campaign,
            )
        )

    await eventually(phase_done, timeout=15)
    assert await status(campaign) == Status.SENDING
    rows = {r["contact_id"]: r for r in await recipient_rows(campaign)}
    assert set(rows) == set(contacts)
    assert {c for c, r in rows.items() if r["excluded"] == "no_consent"} == left_out
    assert {c for c, r in rows.items() if r["requested_at"] is None} == left_out | deferred
    assert message_ids(await requested_records(campaign)) == {
        message_id(campaign, c) for c in now_sent
    }

    shifted.offset = timedelta(hours=1, seconds=1)

    async def sent() -> bool:
        return await status(campaign) == Status.SENT

    await eventually(sent, timeout=30)
    rows = {r["contact_id"]: r for r in await recipient_rows(campaign)}
    assert {c for c, r in rows.items() if r["requested_at"] is None} == left_out
    assert all(rows[c]["requested_at"] >= due_at for c in deferred)
    assert message_ids(await requested_records(campaign)) == {
        message_id(campaign, c) for c in now_sent | deferred
    }
    conn = await connect()
    try:
        counts = await conn.fetchrow(
            "SELECT reached, requested, excluded, deferred FROM fanouts WHERE campaign_id = $1",
            campaign,
        )
    finally:
        await conn.close()
    assert counts is not None
    assert tuple(counts) == (len(contacts), len(now_sent), len(left_out), len(deferred))


async def test_a_campaign_locked_by_another_fan_out_is_left_to_it(
    campaigns_service: RunningService, workspace: Workspace
) -> None:
    """Another campaigns process holds the campaign's advisory lock (the test, here): this
    process's driver leaves the campaign alone, and takes it once the lock is released."""
    contacts = await vip_members(workspace.id, BATCH)
    campaign = await new_campaign(workspace.id)
    other = await connect()
    try:
        # Both campaigns go to the same contacts: a cap of two lets the second through.
        await other.execute(
            "INSERT INTO settings (workspace_id, frequency_cap_messages, frequency_cap_days,"
            " updated_at) VALUES ($1, 2, 30, now())",
            uuid.UUID(workspace.id),
        )
        assert await other.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_CLASS, str(campaign)
        )
        await move(workspace.id, campaign, (Status.DRAFT,), Status.SENDING)
        # A campaign sent from start to end meanwhile: the driver has polled many times.
        later = await new_campaign(workspace.id)
        await move(workspace.id, later, (Status.DRAFT,), Status.SENDING)

        async def later_sent() -> bool:
            return await status(later) == Status.SENT

        await eventually(later_sent, timeout=60)
        assert await status(campaign) == Status.SENDING
        assert await recipient_rows(campaign) == []
        assert await checkpoint(campaign) == 0
    finally:
        await other.close()  # releases the lock, as a process that dies does

    async def sent() -> bool:
        return await status(campaign) == Status.SENT

    await eventually(sent, timeout=60)
    assert message_ids(await requested_records(campaign)) == {
        message_id(campaign, c) for c in contacts
    }
