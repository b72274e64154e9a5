"""The read-model writer on real PostgreSQL: concurrent records are applied in a few
set-based batches, in each contact's order, and a change the database refuses fails alone."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.common.db import create_pool, migrate
from services.segmentation.adapters import postgres as db
from services.segmentation.bootstrap import MIGRATIONS
from services.segmentation.domain.readmodel import (
    OrderPlaced,
    ProfileSnapshot,
    ReadModelChange,
    ScoreSet,
    TagsSet,
)
from services.segmentation.handlers import ReadModelWriter
from tests.integration.segmentation.test_read_model import NOW


@pytest.fixture(scope="module")
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    await migrate(os.environ["DATABASE_URL"], db.SCHEMA, MIGRATIONS)
    pool = await create_pool(os.environ["DATABASE_URL"], db.SCHEMA)
    yield pool
    await pool.close()


def snapshot(contact_id: str, version: int = 1, email: str | None = None) -> ProfileSnapshot:
    return ProfileSnapshot(
        contact_id=contact_id,
        email=email or f"{contact_id}@example.com",
        vip=False,
        version=version,
    )


async def profiles(pool: asyncpg.Pool, ws: str) -> dict[str, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT contact_id, email, tags, score, version FROM profiles WHERE workspace_id = $1",
        uuid.UUID(ws),
    )
    return {str(r["contact_id"]): r for r in rows}


async def test_concurrent_records_are_applied_in_few_batches(pool: asyncpg.Pool) -> None:
    ws = str(uuid.uuid4())
    writer = ReadModelWriter(pool, max_batch=100, max_flushes=2)
    ids = [str(uuid.uuid4()) for _ in range(500)]
    results = await asyncio.gather(
        *(writer.apply(ws, str(uuid.uuid4()), snapshot(cid)) for cid in ids)
    )
    assert all(results)
    # All 500 were waiting together: the first two went alone, the rest in full batches.
    assert writer.batches <= 2 + 5
    assert set(await profiles(pool, ws)) == set(ids)


async def test_a_batch_applies_one_contacts_changes_in_their_order(pool: asyncpg.Pool) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    items: list[ReadModelChange] = [
        snapshot(cid, 1),
        TagsSet(cid, 2, ("a",)),
        ScoreSet(cid, 3, 10),
        TagsSet(cid, 4, ("a", "b")),
        TagsSet(cid, 3, ("old",)),  # at or below the version by then: no change
        OrderPlaced(cid, "o-1", NOW, 100, "EUR"),
    ]
    pending = [db.Pending(ws, str(uuid.uuid4()), change) for change in items]
    async with pool.acquire() as conn, conn.transaction():
        applied = await db.apply(conn, pending, NOW)
    assert applied == [True, True, True, True, False, True]
    p = (await profiles(pool, ws))[cid]
    assert (p["tags"], p["score"], p["version"]) == (["a", "b"], 10, 4)


async def test_a_change_the_database_refuses_fails_alone(pool: asyncpg.Pool) -> None:
    ws = str(uuid.uuid4())
    writer = ReadModelWriter(pool, max_batch=100, max_flushes=1)
    good = [str(uuid.uuid4()) for _ in range(20)]
    bad = str(uuid.uuid4())
    # jsonb cannot hold U+0000 (the entrypoint refuses such events; this one got past it).
    outcomes = await asyncio.gather(
        *(writer.apply(ws, str(uuid.uuid4()), snapshot(cid)) for cid in good[:10]),
        writer.apply(ws, str(uuid.uuid4()), snapshot(bad, email="nul\x00@example.com")),
        *(writer.apply(ws, str(uuid.uuid4()), snapshot(cid)) for cid in good[10:]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[10], asyncpg.DataError)  # the consumer loop dead-letters it
    assert [o for i, o in enumerate(outcomes) if i != 10] == [True] * 20
    assert set(await profiles(pool, ws)) == set(good)
