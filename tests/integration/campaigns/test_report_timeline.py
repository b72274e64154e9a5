"""A campaign's report over time (GetCampaignTimeline, the console's chart) over real gRPC
and PostgreSQL: cumulative unique counts per interval, people and machines apart, a later
bounce taken off the delivered, intervals that grow with the campaign's span, and another
workspace's campaign NOT_FOUND."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from nudge.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc

from services.campaigns.adapters.postgres import SCHEMA
from services.campaigns.timeline import MAX_INTERVALS, interval_for
from services.common.db import create_pool
from tests.integration.campaigns.report_support import Row, insert_campaign
from tests.integration.conftest import RunningService, Workspace

# Whole hours: the intervals of the answer are aligned on the epoch.
T = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)


@pytest.fixture(scope="module")
async def pool(campaigns_service: RunningService) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(os.environ["DATABASE_URL"], SCHEMA)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def stub(
    campaigns_service: RunningService,
) -> AsyncIterator[campaigns_pb2_grpc.CampaignServiceStub]:
    async with grpc.aio.insecure_channel(campaigns_service.address) as ch:
        yield campaigns_pb2_grpc.CampaignServiceStub(ch)


async def outcome(pool: asyncpg.Pool, campaign_id: str, contact_id: str, **times: datetime) -> None:
    sets = ", ".join(f"{column} = ${i + 3}" for i, column in enumerate(times))
    await pool.execute(
        f"UPDATE recipients SET {sets} WHERE campaign_id = $1 AND contact_id = $2",
        uuid.UUID(campaign_id),
        uuid.UUID(contact_id),
        *times.values(),
    )


def series(answer: campaigns_pb2.CampaignTimeline, name: str) -> list[int]:
    return [getattr(p, name) for p in answer.points]


def test_the_interval_grows_with_the_span_and_never_gives_more_than_49_points() -> None:
    assert interval_for(timedelta(0)) == 60
    assert interval_for(timedelta(minutes=40)) == 60
    assert interval_for(timedelta(hours=2)) == 300
    assert interval_for(timedelta(hours=30)) == 3600
    assert interval_for(timedelta(days=5)) == 3 * 3600
    assert interval_for(timedelta(days=30)) == 86400
    for days in (1, 7, 60, 365, 3000):
        span = timedelta(days=days, seconds=17)
        assert span.total_seconds() / interval_for(span) <= MAX_INTERVALS


async def test_cumulative_counts_per_interval_people_and_machines_apart(
    pool: asyncpg.Pool, stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    contacts = [str(uuid.uuid4()) for _ in range(4)]
    campaign_id = await insert_campaign(
        pool, workspace.id, [Row(c) for c in contacts], started_at=T
    )
    empty = await stub.GetCampaignTimeline(
        campaigns_pb2.GetCampaignTimelineRequest(campaign_id=campaign_id),
        metadata=workspace.metadata,
    )
    assert list(empty.points) == [] and empty.interval.seconds == 0  # nothing delivered yet

    a, b, c, d = contacts
    hour = timedelta(hours=1)
    await outcome(pool, campaign_id, a, delivered_at=T, first_machine_open_at=T)
    await outcome(pool, campaign_id, b, delivered_at=T, first_human_open_at=T + hour)
    # c clicked without loading the pixel: the click is the open, as in the report.
    await outcome(pool, campaign_id, c, delivered_at=T + hour, first_human_click_at=T + 3 * hour)
    # Delivered, then bounced by a later DSN: not delivered, as in the report.
    await outcome(pool, campaign_id, d, delivered_at=T, bounced_at=T + hour)

    answer = await stub.GetCampaignTimeline(
        campaigns_pb2.GetCampaignTimelineRequest(campaign_id=campaign_id),
        metadata=workspace.metadata,
    )
    assert answer.interval.seconds == 300  # three hours in 5-minute intervals
    assert len(answer.points) == 3 * 12 + 1
    assert answer.points[0].at.ToDatetime(UTC) == T + timedelta(minutes=5)
    assert answer.points[-1].at.ToDatetime(UTC) == T + 3 * hour + timedelta(minutes=5)
    delivered = series(answer, "delivered")
    assert (delivered[0], delivered[11], delivered[12], delivered[-1]) == (2, 2, 3, 3)
    opened = series(answer, "opened_human")
    assert (opened[11], opened[12], opened[35], opened[36]) == (0, 1, 1, 2)
    assert set(series(answer, "opened_machine")) == {1}
    assert series(answer, "clicked_human")[-2:] == [0, 1]
    assert set(series(answer, "clicked_machine")) == {0}
    assert all(x <= y for x, y in itertools.pairwise(delivered))


async def test_another_workspaces_campaign_is_not_found(
    pool: asyncpg.Pool,
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    theirs = await insert_campaign(pool, str(uuid.uuid4()), [Row(str(uuid.uuid4()))], started_at=T)
    for campaign_id in (theirs, "not-a-uuid"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetCampaignTimeline(
                campaigns_pb2.GetCampaignTimelineRequest(campaign_id=campaign_id),
                metadata=workspace.metadata,
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
