"""The A/B decision on real PostgreSQL: not before its time, the most unique human clicks (or
revenue) wins, ties go to the lowest variant, a decision is made once, and the report shows
each variant with the winner's send to the rest.

Times are set a day ahead of the wall clock so that a campaigns service running in the same
session (its own decision loop reads the real clock) never decides these campaigns itself."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.campaigns import ab, stats
from services.campaigns.adapters.postgres import SCHEMA
from services.campaigns.bootstrap import MIGRATIONS
from services.common.db import create_pool, migrate
from tests.integration.campaigns.report_support import Row, insert_campaign

SAMPLE_DONE = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    await migrate(os.environ["DATABASE_URL"], SCHEMA, MIGRATIONS)
    pool = await create_pool(os.environ["DATABASE_URL"], SCHEMA)
    yield pool
    await pool.close()


def ab_test(metric: int = 1, sample_done: datetime | None = SAMPLE_DONE) -> dict[str, Any]:
    return {
        "subjects": ["Tea", "New tea", "Tea time"],
        "sample_percent": 30,
        "metric": metric,
        "decide_after_s": 3600,
        "winner": -1,
        "decided_at": None,
        "sample_done_at": sample_done.isoformat() if sample_done else None,
    }


async def sample(
    pool: asyncpg.Pool, clicks: dict[int, int], *, metric: int = 1, status: int = 3
) -> tuple[str, str, list[str]]:
    """A campaign whose variants 0..2 have 3 recipients each, ``clicks[v]`` of whom clicked."""
    ws = str(uuid.uuid4())
    rows = [Row(str(uuid.uuid4()), variant=v) for v in range(3) for _ in range(3)]
    campaign_id = await insert_campaign(
        pool,
        ws,
        rows,
        status=status,
        started_at=SAMPLE_DONE - HOUR,
        ab_test=ab_test(metric),
    )
    for v, n in clicks.items():
        for row in [r for r in rows if r.variant == v][:n]:
            await pool.execute(
                "UPDATE recipients SET first_human_click_at = $2, human_clicks = 1"
                " WHERE contact_id = $1",
                uuid.UUID(row.contact_id),
                SAMPLE_DONE,
            )
    return ws, campaign_id, [r.contact_id for r in rows]


async def ab_of(pool: asyncpg.Pool, campaign_id: str) -> dict[str, Any]:
    value = await pool.fetchval(
        "SELECT ab_test FROM campaigns WHERE id = $1", uuid.UUID(campaign_id)
    )
    return dict(json.loads(value))


def mine(decisions: list[ab.Decision], campaign_id: str) -> list[int]:
    return [d.winner for d in decisions if d.campaign_id == campaign_id]


async def test_the_variant_with_most_unique_human_clicks_wins_once_its_time_has_come(
    pool: asyncpg.Pool,
) -> None:
    _, campaign_id, _ = await sample(pool, {0: 1, 1: 3, 2: 2})
    assert (
        mine(await ab.decide_due(pool, SAMPLE_DONE + HOUR - timedelta(seconds=1)), campaign_id)
        == []
    )
    assert (await ab_of(pool, campaign_id))["winner"] == -1
    decided_at = SAMPLE_DONE + HOUR
    assert mine(await ab.decide_due(pool, decided_at), campaign_id) == [1]
    stored = await ab_of(pool, campaign_id)
    assert stored["winner"] == 1
    assert datetime.fromisoformat(stored["decided_at"]) == decided_at
    # Decided once: a later round (or a second instance) changes nothing.
    assert mine(await ab.decide_due(pool, decided_at + HOUR), campaign_id) == []


async def test_a_tie_goes_to_the_lowest_variant(pool: asyncpg.Pool) -> None:
    _, campaign_id, _ = await sample(pool, {1: 2, 2: 2})
    assert mine(await ab.decide_due(pool, SAMPLE_DONE + 2 * HOUR), campaign_id) == [1]


async def test_a_campaign_not_sending_or_without_its_sample_sent_is_not_decided(
    pool: asyncpg.Pool,
) -> None:
    _, paused, _ = await sample(pool, {1: 3}, status=6)
    ws = str(uuid.uuid4())
    waiting = await insert_campaign(
        pool, ws, [], started_at=SAMPLE_DONE, ab_test=ab_test(sample_done=None)
    )
    decisions = await ab.decide_due(pool, SAMPLE_DONE + 10 * HOUR)
    assert mine(decisions, paused) == [] and mine(decisions, waiting) == []


async def test_revenue_decides_when_chosen(pool: asyncpg.Pool) -> None:
    ws, campaign_id, contacts = await sample(pool, {0: 3}, metric=2)
    # Variant 0 has the clicks, variant 2 the most euros (the campaign earned most in euros;
    # variant 1's dollars are not added to them).
    orders = [
        (contacts[6], 2, 5000, "EUR"),
        (contacts[3], 1, 900, "USD"),
        (contacts[0], 0, 100, "EUR"),
    ]
    orders.append((contacts[7], 2, 10, "EUR"))
    for i, (contact, variant, minor, currency) in enumerate(orders):
        await pool.execute(
            "INSERT INTO attributions (workspace_id, order_id, campaign_id, contact_id, variant,"
            " holdout, amount_minor, currency, placed_at) VALUES ($1, $2, $3, $4, $5, false,"
            " $6, $7, $8)",
            uuid.UUID(ws),
            f"o-{i}",
            uuid.UUID(campaign_id),
            uuid.UUID(contact),
            variant,
            minor,
            currency,
            SAMPLE_DONE,
        )
    assert mine(await ab.decide_due(pool, SAMPLE_DONE + HOUR), campaign_id) == [2]


async def test_the_report_shows_each_variant_and_the_winners_send_to_the_rest(
    pool: asyncpg.Pool,
) -> None:
    ws, campaign_id, _ = await sample(pool, {0: 1, 1: 3, 2: 2})
    await ab.decide_due(pool, SAMPLE_DONE + HOUR)
    # The fan-out's send of the winner to the rest: variant -1.
    rest = [Row(str(uuid.uuid4()), variant=-1) for _ in range(4)]
    await pool.executemany(
        "INSERT INTO recipients (workspace_id, campaign_id, contact_id, message_id, variant,"
        " requested_at) VALUES ($1, $2, $3, $4, -1, $5)",
        [
            (
                uuid.UUID(ws),
                uuid.UUID(campaign_id),
                uuid.UUID(r.contact_id),
                uuid.UUID(r.message_id(campaign_id)),
                SAMPLE_DONE + HOUR,
            )
            for r in rest
        ],
    )
    report = await stats.campaign_report(pool, ws, campaign_id, SAMPLE_DONE + 2 * HOUR)
    assert [(v.variant, v.subject, v.sent) for v in report.variants] == [
        (-1, "New tea", 4),
        (0, "Tea", 3),
        (1, "New tea", 3),
        (2, "Tea time", 3),
    ]
    assert [v.clicked.unique_human for v in report.variants] == [0, 1, 3, 2]
    assert report.sent == 13 and report.clicked.unique_human == 6
