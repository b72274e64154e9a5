"""The report from real delivery, tracking and shop events on real Kafka, read through the
campaigns service's gRPC API: what each event counts for, the attribution window's edges,
another workspace's events, and a full replay of every event giving the same report."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import RecordMetadata
from nudge.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from nudge.delivery.v1 import delivery_pb2
from nudge.delivery.v1 import events_pb2 as delivery_events
from nudge.shop.v1 import shop_pb2
from nudge.tracking.v1 import events_pb2 as tracking_events

from services.campaigns.adapters.postgres import SCHEMA
from services.campaigns.report import CONSUMER
from services.common.db import create_pool
from services.common.topics import DELIVERY_EVENTS, SHOP_EVENTS, TRACKING_EVENTS
from tests.integration.campaigns.report_support import (
    Published,
    Row,
    consumed,
    envelope,
    insert_campaign,
    publish,
)
from tests.integration.conftest import RunningService, Workspace

T = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)
STARTED = T - timedelta(hours=1)
MINUTE = timedelta(minutes=1)


@pytest.fixture(scope="module")
async def pool(campaigns_service: RunningService) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(os.environ["DATABASE_URL"], SCHEMA)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def producer(campaigns_service: RunningService) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"], acks="all")
    await p.start()
    yield p
    await p.stop()


@pytest.fixture(scope="module")
async def admin(campaigns_service: RunningService) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"])
    await client.start()
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def stub(
    campaigns_service: RunningService,
) -> AsyncIterator[campaigns_pb2_grpc.CampaignServiceStub]:
    async with grpc.aio.insecure_channel(campaigns_service.address) as ch:
        yield campaigns_pb2_grpc.CampaignServiceStub(ch)


def ids(n: int) -> list[str]:
    return sorted(str(uuid.uuid4()) for _ in range(n))


@dataclass
class Scenario:
    ws: Workspace
    campaign_id: str
    contacts: dict[str, str]
    events: list[Published]
    records: list[RecordMetadata]
    claims_of_foreign_events: list[str]


def delivery(ws: str, name: str, contact: str, mid: str, at: datetime, **kw: object) -> Published:
    payloads = {
        "queued": delivery_events.MessageQueued,
        "sent": delivery_events.MessageSent,
        "deferred": delivery_events.MessageDeferred,
        "bounced": delivery_events.MessageBounced,
        "complained": delivery_events.MessageComplained,
        "failed": delivery_events.MessageFailed,
        "unknown": delivery_events.MessageUnknown,
        "skipped": delivery_events.MessageSkipped,
    }
    payload = payloads[name](message_id=mid, contact_id=contact, **kw)  # type: ignore[arg-type]
    return Published(DELIVERY_EVENTS, contact, envelope(ws, payload, at))


def opened(ws: str, contact: str, mid: str, at: datetime, machine: bool = False) -> Published:
    payload = tracking_events.MessageOpened(
        message_id=mid, contact_id=contact, machine_open=machine
    )
    return Published(TRACKING_EVENTS, contact, envelope(ws, payload, at))


def clicked(ws: str, contact: str, mid: str, at: datetime, machine: bool = False) -> Published:
    payload = tracking_events.LinkClicked(
        message_id=mid, contact_id=contact, url="https://shop.example/tea", machine_click=machine
    )
    return Published(TRACKING_EVENTS, contact, envelope(ws, payload, at))


def order(ws: str, contact: str, order_id: str, at: datetime, minor: int) -> Published:
    event = shop_pb2.ShopEvent(
        contact_id=contact,
        order_placed=shop_pb2.OrderPlaced(
            order_id=order_id, total=shop_pb2.Money(amount_minor=minor, currency="EUR")
        ),
    )
    event.occurred_at.FromDatetime(at)
    return Published(SHOP_EVENTS, contact, envelope(ws, event, at))


@pytest.fixture(scope="module")
async def scenario(
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
    contacts_service: RunningService,
) -> Scenario:
    """One campaign, every kind of event, published once and consumed."""
    from tests.integration.campaigns.test_campaigns_grpc import new_workspace

    ws = await new_workspace(contacts_service)
    other = str(uuid.uuid4())
    names = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "h0", "x0"]
    c = dict(zip(names, ids(len(names)), strict=True))
    rows = [Row(c[n]) for n in names[:7]] + [
        Row(c["h0"], excluded="holdout"),
        Row(c["x0"], excluded="no_consent"),
    ]
    campaign_id = await insert_campaign(pool, ws.id, rows, started_at=STARTED, holdout_percent=10)
    mid = {n: Row(c[n]).message_id(campaign_id) for n in names}
    w = ws.id
    foreign_event_ids: list[str] = []
    engagement = [
        delivery(w, "queued", c["c0"], mid["c0"], T),
        delivery(w, "sent", c["c0"], mid["c0"], T + MINUTE),
        opened(w, c["c0"], mid["c0"], T + 2 * MINUTE, machine=True),
        opened(w, c["c0"], mid["c0"], T + 3 * MINUTE),
        opened(w, c["c0"], mid["c0"], T + 30 * MINUTE),
        clicked(w, c["c0"], mid["c0"], T + 31 * MINUTE),
        delivery(w, "queued", c["c1"], mid["c1"], T),
        delivery(w, "deferred", c["c1"], mid["c1"], T + MINUTE, attempt=1),
        delivery(w, "sent", c["c1"], mid["c1"], T + 9 * MINUTE),
        opened(w, c["c1"], mid["c1"], T + 10 * MINUTE, machine=True),
        clicked(w, c["c1"], mid["c1"], T + 10 * MINUTE, machine=True),
        delivery(w, "queued", c["c2"], mid["c2"], T),
        delivery(w, "bounced", c["c2"], mid["c2"], T + MINUTE, permanent=True),
        delivery(w, "queued", c["c3"], mid["c3"], T),
        delivery(w, "sent", c["c3"], mid["c3"], T + MINUTE),
        delivery(w, "complained", c["c3"], mid["c3"], T + 60 * MINUTE),
        Published(
            TRACKING_EVENTS,
            c["c3"],
            envelope(
                w,
                tracking_events.UnsubscribeRequested(message_id=mid["c3"], contact_id=c["c3"]),
                T + 61 * MINUTE,
            ),
        ),
        delivery(w, "queued", c["c4"], mid["c4"], T),
        delivery(w, "deferred", c["c4"], mid["c4"], T + MINUTE, attempt=1),
        delivery(w, "queued", c["c5"], mid["c5"], T),
        delivery(w, "sent", c["c5"], mid["c5"], T + MINUTE),
        opened(w, c["c5"], mid["c5"], T + 2 * MINUTE),
        delivery(w, "queued", c["c6"], mid["c6"], T),
        delivery(w, "sent", c["c6"], mid["c6"], T + MINUTE),
        clicked(w, c["c6"], mid["c6"], T + 2 * MINUTE),
        # Another workspace naming this campaign's message: never counted.
        clicked(other, c["c1"], mid["c1"], T + 20 * MINUTE),
        opened(other, c["c1"], mid["c1"], T + 20 * MINUTE),
        # Automation mail of the same contact: not a campaign's message.
        opened(w, c["c0"], str(uuid.uuid4()), T + 5 * MINUTE),
        delivery(
            w,
            "sent",
            c["c0"],
            str(uuid.uuid4()),
            T + 5 * MINUTE,
            kind=delivery_pb2.MESSAGE_KIND_AUTOMATION,
        ),
    ]
    foreign_event_ids += [e.envelope.event_id for e in engagement[-4:]]
    orders = [
        order(w, c["c0"], "o-c0", T + 31 * MINUTE + timedelta(days=1), 5000),
        # 4 days 23 hours after c5's open: in the window.
        order(w, c["c5"], "o-c5", T + 2 * MINUTE + timedelta(days=4, hours=23), 1250),
        # 5 days 1 hour after c6's click: out of it (c6 stays on the call list).
        order(w, c["c6"], "o-c6", T + 2 * MINUTE + timedelta(days=5, hours=1), 9900),
        # The hold-out contact buys 2 days after the start.
        order(w, c["h0"], "o-h0", STARTED + timedelta(days=2), 700),
        # c1 only opened by a machine: an order is not attributed.
        order(w, c["c1"], "o-c1", T + timedelta(days=1), 3000),
        # Another workspace's order for c0's id: not this campaign's.
        order(other, c["c0"], "o-other", T + timedelta(days=1), 100000),
    ]
    foreign_event_ids.append(orders[-1].envelope.event_id)
    # Engagement first, then the orders that depend on it (as they happen in time).
    records = await publish(producer, engagement)
    await consumed(admin, records)
    shop_records = await publish(producer, orders)
    await consumed(admin, shop_records)
    return Scenario(
        ws, campaign_id, c, engagement + orders, records + shop_records, foreign_event_ids
    )


async def report_of(
    stub: campaigns_pb2_grpc.CampaignServiceStub, ws: Workspace, campaign_id: str
) -> campaigns_pb2.CampaignReport:
    return await stub.GetCampaignReport(
        campaigns_pb2.GetCampaignReportRequest(campaign_id=campaign_id), metadata=ws.metadata
    )


async def test_delivery_outcomes_are_counted_once_per_message(
    scenario: Scenario, stub: campaigns_pb2_grpc.CampaignServiceStub
) -> None:
    r = await report_of(stub, scenario.ws, scenario.campaign_id)
    assert r.audience == 9
    assert [(e.reason, e.count) for e in r.excluded] == [("holdout", 1), ("no_consent", 1)]
    assert (r.sent, r.delivered, r.deferred, r.bounced, r.complained) == (7, 5, 1, 1, 1)
    assert (r.unknown, r.failed, r.skipped, r.unsubscribed) == (0, 0, 0, 1)
    assert r.delivery_rate == pytest.approx(5 / 7)
    assert r.bounce_rate == pytest.approx(1 / 7)
    assert r.complaint_rate == pytest.approx(1 / 5)
    assert r.unsubscribe_rate == pytest.approx(1 / 5)
    assert not r.final, "a campaign still sending, with a message deferred, is not final"


async def test_machine_and_human_opens_and_clicks_are_apart_unique_and_total(
    scenario: Scenario, stub: campaigns_pb2_grpc.CampaignServiceStub
) -> None:
    r = await report_of(stub, scenario.ws, scenario.campaign_id)
    # c0: 2 human opens + 1 machine; c1: 1 machine open; c5: 1 human open; c6 clicked
    # without loading the pixel (images blocked): the click is proof that c6 opened, so c6
    # counts among the unique human opens, and as one open in the total (3 pixel loads + 1):
    # the total is never below the unique count.
    assert (r.opened.unique_human, r.opened.total_human) == (3, 4)
    assert (r.opened.unique_machine, r.opened.total_machine) == (2, 2)
    # c0 and c6 clicked; c1's click was a scanner's, and implies no open of any kind.
    assert (r.clicked.unique_human, r.clicked.total_human) == (2, 2)
    assert (r.clicked.unique_machine, r.clicked.total_machine) == (1, 1)
    assert r.opened.unique_human_rate == pytest.approx(3 / 5)
    assert r.click_to_open_rate == pytest.approx(2 / 3)


async def test_orders_within_five_days_of_a_human_open_or_click_are_attributed(
    scenario: Scenario, stub: campaigns_pb2_grpc.CampaignServiceStub
) -> None:
    r = await report_of(stub, scenario.ws, scenario.campaign_id)
    # c0 (1 day after its click) and c5 (4 days 23 h after its open); not c6 (5 days 1 h),
    # not c1 (a machine open only), not another workspace's order.
    assert r.orders.orders == 2
    assert [(m.currency, m.amount_minor) for m in r.orders.revenue] == [("EUR", 6250)]
    assert r.holdout.contacts == 1
    assert r.holdout.orders.orders == 1
    assert r.holdout.order_rate == pytest.approx(1.0)
    assert r.holdout.lift == pytest.approx((2 / 7) / 1.0 - 1)


async def test_other_messages_and_workspaces_leave_no_claim(
    scenario: Scenario, pool: asyncpg.Pool
) -> None:
    claimed = await pool.fetchval(
        "SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = ANY($2)",
        CONSUMER,
        scenario.claims_of_foreign_events,
    )
    assert claimed == 0
    attributed = await pool.fetchval("SELECT count(*) FROM attributions WHERE order_id = 'o-other'")
    assert attributed == 0


async def test_another_workspace_cannot_read_the_report(
    scenario: Scenario,
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    workspace: Workspace,
) -> None:
    for campaign_id in (scenario.campaign_id, "not-a-uuid", str(uuid.uuid4())):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await report_of(stub, workspace, campaign_id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_replaying_every_event_gives_the_same_report(
    scenario: Scenario,
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
) -> None:
    before = await report_of(stub, scenario.ws, scenario.campaign_id)
    records = await publish(producer, scenario.events)
    await consumed(admin, records)
    after = await report_of(stub, scenario.ws, scenario.campaign_id)
    before.ClearField("as_of")
    after.ClearField("as_of")
    assert after == before
    assert after.opened.total_human == 4  # not 7


async def test_a_sent_campaign_with_every_outcome_in_is_final(
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    workspace: Workspace,
) -> None:
    a, b = ids(2)
    campaign_id = await insert_campaign(
        pool, workspace.id, [Row(a), Row(b)], status=4, started_at=STARTED
    )
    w = workspace.id
    records = await publish(
        producer,
        [
            delivery(w, "sent", a, Row(a).message_id(campaign_id), T),
            delivery(w, "queued", b, Row(b).message_id(campaign_id), T),
        ],
    )
    await consumed(admin, records)
    r = await report_of(stub, workspace, campaign_id)
    assert (r.sent, r.delivered, r.final) == (2, 1, False), "b still waits for its outcome"
    records = await publish(
        producer, [delivery(w, "failed", b, Row(b).message_id(campaign_id), T, reason="old")]
    )
    await consumed(admin, records)
    r = await report_of(stub, workspace, campaign_id)
    assert (r.sent, r.delivered, r.failed, r.final) == (2, 1, 1, True)
    assert r.status == campaigns_pb2.CAMPAIGN_STATUS_SENT
    assert not r.HasField("holdout") and not r.variants


async def test_an_empty_report_has_zero_rates(
    pool: asyncpg.Pool, stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    campaign_id = await insert_campaign(pool, workspace.id, [], started_at=STARTED)
    r = await report_of(stub, workspace, campaign_id)
    assert (r.audience, r.sent, r.delivery_rate, r.click_to_open_rate) == (0, 0, 0.0, 0.0)
    assert r.opened.unique_human_rate == 0.0


async def test_an_order_counts_for_the_latest_engaged_campaign_and_stops_when_cancelled(
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    admin: AIOKafkaAdminClient,
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    workspace: Workspace,
) -> None:
    (buyer,) = ids(1)
    w = workspace.id
    older = await insert_campaign(pool, w, [Row(buyer)], started_at=STARTED)
    newer = await insert_campaign(pool, w, [Row(buyer)], started_at=STARTED)
    records = await publish(
        producer,
        [
            clicked(w, buyer, Row(buyer).message_id(older), T),
            opened(w, buyer, Row(buyer).message_id(newer), T + timedelta(days=1)),
        ],
    )
    await consumed(admin, records)
    await consumed(
        admin, await publish(producer, [order(w, buyer, "o-x", T + timedelta(days=2), 4000)])
    )
    assert (await report_of(stub, workspace, newer)).orders.orders == 1
    assert (await report_of(stub, workspace, older)).orders.orders == 0
    cancel = shop_pb2.ShopEvent(
        contact_id=buyer, order_cancelled=shop_pb2.OrderCancelled(order_id="o-x")
    )
    cancel.occurred_at.FromDatetime(T + timedelta(days=3))
    await consumed(
        admin,
        await publish(
            producer, [Published(SHOP_EVENTS, buyer, envelope(w, cancel, T + timedelta(days=3)))]
        ),
    )
    r = await report_of(stub, workspace, newer)
    assert r.orders.orders == 0 and list(r.orders.revenue) == []
