"""The report's batching on real PostgreSQL: observations handled at the same time are
written together, and one the database refuses fails alone while its batch is applied."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.campaigns import report
from services.campaigns.adapters.postgres import SCHEMA
from services.campaigns.bootstrap import MIGRATIONS
from services.common.db import create_pool, migrate
from tests.integration.campaigns.report_support import Row, insert_campaign

T = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


@pytest.fixture(scope="module")
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    await migrate(os.environ["DATABASE_URL"], SCHEMA, MIGRATIONS)
    pool = await create_pool(os.environ["DATABASE_URL"], SCHEMA)
    yield pool
    await pool.close()


def opens(ws: str, campaign_id: str, rows: list[Row]) -> list[report.Observation]:
    return [
        report.MessageMark(
            str(uuid.uuid4()),
            uuid.UUID(ws),
            uuid.UUID(r.contact_id),
            uuid.UUID(r.message_id(campaign_id)),
            "open_human",
            T,
        )
        for r in rows
    ]


async def test_concurrent_observations_are_written_in_few_batches(pool: asyncpg.Pool) -> None:
    ws = str(uuid.uuid4())
    rows = [Row(str(uuid.uuid4())) for _ in range(200)]
    campaign_id = await insert_campaign(pool, ws, rows, started_at=T)
    writer = report.ReportWriter(pool, max_batch=1000)
    await asyncio.gather(*(writer.apply(o) for o in opens(ws, campaign_id, rows)))
    # The first goes alone (nothing was being written), the other 199 wait and go together.
    assert writer.batches <= 3
    opened = await pool.fetchval(
        "SELECT count(first_human_open_at) FROM recipients WHERE campaign_id = $1",
        uuid.UUID(campaign_id),
    )
    assert opened == 200


async def test_an_observation_the_database_refuses_fails_alone(pool: asyncpg.Pool) -> None:
    ws = str(uuid.uuid4())
    rows = [Row(str(uuid.uuid4())) for _ in range(5)]
    campaign_id = await insert_campaign(pool, ws, rows, started_at=T)
    # A NUL in text: PostgreSQL refuses it (the decoder strips it; this one bypasses it).
    refused = report.OrderPlaced(uuid.UUID(ws), "o-1", uuid.UUID(rows[0].contact_id), T, 1, "E\x00")
    writer = report.ReportWriter(pool, max_batch=1000)
    outcomes = await asyncio.gather(
        *(writer.apply(o) for o in [*opens(ws, campaign_id, rows), refused]),
        return_exceptions=True,
    )
    assert [type(o).__name__ for o in outcomes] == ["NoneType"] * 5 + [
        "CharacterNotInRepertoireError"
    ]
    opened = await pool.fetchval(
        "SELECT count(first_human_open_at) FROM recipients WHERE campaign_id = $1",
        uuid.UUID(campaign_id),
    )
    assert opened == 5
