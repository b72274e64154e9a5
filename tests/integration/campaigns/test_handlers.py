"""The campaign use cases on real PostgreSQL, with a fake segment catalogue in place of the
segmentation service: when segmentation is asked, and what is stored when it cannot be."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from nudge.campaigns.v1 import campaigns_pb2

from services.campaigns import handlers
from services.campaigns.adapters.postgres import SCHEMA
from services.campaigns.bootstrap import MIGRATIONS
from services.campaigns.domain.model import NewCampaign
from services.common.db import create_pool, migrate
from services.common.errors import InvalidArgument, NotFound, Unavailable

GOOD = NewCampaign(
    name="Spring sale", segment_ids=("vip", "loyal"), subject="Spring", body_text="Hello"
)


class FakeCatalogue:
    """Knows a fixed set of segments per workspace, or fails as segmentation would."""

    def __init__(self, known: set[str] | None = None) -> None:
        self.known = {"vip", "loyal", "lost"} if known is None else known
        self.unavailable = False
        self.asked: list[str] = []

    async def segment_ids(self, workspace_id: str) -> set[str]:
        self.asked.append(workspace_id)
        if self.unavailable:
            raise Unavailable("cannot check the segments now: UNAVAILABLE")
        return self.known


@pytest.fixture(scope="module")
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    await migrate(os.environ["DATABASE_URL"], SCHEMA, MIGRATIONS)
    pool = await create_pool(os.environ["DATABASE_URL"], SCHEMA)
    yield pool
    await pool.close()


@pytest.fixture
def ws() -> str:
    return str(uuid.uuid4())


async def names(pool: asyncpg.Pool, ws: str) -> list[str]:
    page = await handlers.list_campaigns(pool, ws, 0, "")
    return [c.name for c in page.campaigns]


async def test_a_valid_draft_is_stored_after_asking_for_the_workspaces_segments(
    pool: asyncpg.Pool, ws: str
) -> None:
    segments = FakeCatalogue()
    campaign = await handlers.create_campaign(pool, segments, ws, GOOD)
    assert segments.asked == [ws]
    assert campaign.workspace_id == ws
    assert campaign.status == campaigns_pb2.CAMPAIGN_STATUS_DRAFT
    assert await handlers.get_campaign(pool, ws, campaign.id) == campaign


async def test_unknown_segments_are_reported_with_the_other_fields_and_nothing_is_stored(
    pool: asyncpg.Pool, ws: str
) -> None:
    bad = NewCampaign(name="", segment_ids=("vip", "big_spenders"), subject="s", body_text="b")
    with pytest.raises(InvalidArgument) as err:
        await handlers.create_campaign(pool, FakeCatalogue(), ws, bad)
    assert [v.field for v in err.value.violations] == ["name", "segment_ids[1]"]
    assert await names(pool, ws) == []


@pytest.mark.parametrize("count", [0, 21])
async def test_segmentation_is_not_asked_about_too_few_or_too_many_ids(
    pool: asyncpg.Pool, ws: str, count: int
) -> None:
    segments = FakeCatalogue()
    draft = NewCampaign(
        name="n", segment_ids=tuple(f"s{i}" for i in range(count)), subject="s", body_text="b"
    )
    with pytest.raises(InvalidArgument) as err:
        await handlers.create_campaign(pool, segments, ws, draft)
    assert [v.field for v in err.value.violations] == ["segment_ids"]
    assert segments.asked == []


async def test_when_segmentation_cannot_answer_nothing_is_stored(
    pool: asyncpg.Pool, ws: str
) -> None:
    segments = FakeCatalogue()
    segments.unavailable = True
    with pytest.raises(Unavailable):
        await handlers.create_campaign(pool, segments, ws, GOOD)
    assert await names(pool, ws) == []
    segments.unavailable = False
    await handlers.create_campaign(pool, segments, ws, GOOD)
    assert await names(pool, ws) == ["Spring sale"]


async def test_drafts_with_nul_characters_never_reach_postgresql(
    pool: asyncpg.Pool, ws: str
) -> None:
    bad = NewCampaign(name="a\x00b", segment_ids=("vip",), subject="s\x00", body_text="\x00")
    with pytest.raises(InvalidArgument) as err:
        await handlers.create_campaign(pool, FakeCatalogue(), ws, bad)
    assert [v.field for v in err.value.violations] == ["name", "subject", "body_text"]


async def test_another_workspaces_campaign_is_not_found(pool: asyncpg.Pool, ws: str) -> None:
    campaign = await handlers.create_campaign(pool, FakeCatalogue(), ws, GOOD)
    with pytest.raises(NotFound):
        await handlers.get_campaign(pool, str(uuid.uuid4()), campaign.id)
    assert await names(pool, str(uuid.uuid4())) == []


async def test_update_applies_the_mask_and_checks_segments_again(
    pool: asyncpg.Pool, ws: str
) -> None:
    from dataclasses import replace

    segments = FakeCatalogue()
    campaign = await handlers.create_campaign(pool, segments, ws, GOOD)
    changes = replace(GOOD, name="ignored", exclude_segment_ids=("big_spenders",))
    with pytest.raises(InvalidArgument) as err:
        await handlers.update_campaign(
            pool, segments, ws, campaign.id, ["exclude_segment_ids"], changes
        )
    assert [v.field for v in err.value.violations] == ["exclude_segment_ids[0]"]
    assert await handlers.get_campaign(pool, ws, campaign.id) == campaign  # nothing written
    changes = replace(GOOD, name="ignored", exclude_segment_ids=("lost",))
    updated = await handlers.update_campaign(
        pool, segments, ws, campaign.id, ["exclude_segment_ids"], changes
    )
    assert (updated.name, list(updated.exclude_segment_ids)) == ("Spring sale", ["lost"])
    with pytest.raises(NotFound):
        await handlers.update_campaign(
            pool, segments, str(uuid.uuid4()), campaign.id, ["name"], changes
        )


async def test_the_scheduler_starts_only_what_is_due_once(pool: asyncpg.Pool, ws: str) -> None:
    from datetime import UTC, datetime, timedelta

    from services.campaigns import scheduler
    from services.campaigns.adapters import postgres as db
    from services.campaigns.domain.model import Status

    now = datetime.now(UTC)
    due = await handlers.create_campaign(pool, FakeCatalogue(), ws, GOOD)
    later = await handlers.create_campaign(pool, FakeCatalogue(), ws, GOOD)
    async with pool.acquire() as conn:
        for campaign, at in [(due, now), (later, now + timedelta(hours=1))]:
            key = uuid.UUID(campaign.id)
            moved = await db.transition(
                conn, ws, key, (Status.DRAFT,), Status.SCHEDULED, "test", "", now
            )
            assert moved == Status.DRAFT
            await db.set_schedule(conn, ws, key, scheduled_at=at, starts_at=at, time_zone="UTC")
    await scheduler.start_due(pool, now - timedelta(seconds=1))
    page = await handlers.list_campaigns(pool, ws, 0, "")
    assert {c.status for c in page.campaigns} == {campaigns_pb2.CAMPAIGN_STATUS_SCHEDULED}
    await scheduler.start_due(pool, now)
    await scheduler.start_due(pool, now)  # a second tick (or replica) moves nothing again
    page = await handlers.list_campaigns(pool, ws, 0, "")
    assert sorted(c.status for c in page.campaigns) == [
        campaigns_pb2.CAMPAIGN_STATUS_SCHEDULED,
        campaigns_pb2.CAMPAIGN_STATUS_SENDING,
    ]
    async with pool.acquire() as conn:
        actors = await conn.fetch(
            "SELECT actor FROM transitions WHERE workspace_id = $1 AND to_status = 3",
            uuid.UUID(ws),
        )
    assert [a["actor"] for a in actors] == ["system:scheduler"]
