"""The hook membership re-evaluation hangs on: a batch reports which contacts it changed
(with the event that last changed each) and which it removed, and ``after_apply`` runs in the
batch's own transaction."""

from __future__ import annotations

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
    Removed,
    TagsSet,
)
from services.segmentation.handlers import Applied, ReadModelWriter, apply_changes
from tests.integration.segmentation.test_read_model import NOW


@pytest.fixture(scope="module")
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    await migrate(os.environ["DATABASE_URL"], db.SCHEMA, MIGRATIONS)
    pool = await create_pool(os.environ["DATABASE_URL"], db.SCHEMA)
    yield pool
    await pool.close()


def snapshot(contact_id: str, version: int = 1) -> ProfileSnapshot:
    return ProfileSnapshot(contact_id, f"{contact_id}@example.com", vip=False, version=version)


async def test_apply_reports_changed_and_removed_keys_with_their_last_event(
    pool: asyncpg.Pool,
) -> None:
    ws = str(uuid.uuid4())
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    items = [
        db.Pending(ws, "e1", snapshot(a, 1)),
        db.Pending(ws, "e2", snapshot(b, 1)),
        db.Pending(ws, "e3", TagsSet(a, 2, ("x",))),
        db.Pending(ws, "e4", TagsSet(a, 1, ("old",))),  # older: changes nothing
        db.Pending(ws, "e5", snapshot(c, 1)),
        db.Pending(ws, "e6", Removed(c, 2, erased=False)),
        db.Pending(ws, str(uuid.uuid4()), OrderPlaced(b, "o-1", NOW, 100, "EUR")),
    ]
    async with pool.acquire() as conn, conn.transaction():
        applied = await db.apply(conn, items, NOW)
    assert applied.results == [True, True, True, False, True, True, True]
    assert applied.changed == {(ws, a): "e3", (ws, b): items[6].event_id}
    assert applied.removed == {(ws, c): "e6"}
    # Replayed: nothing changes, nothing is reported.
    async with pool.acquire() as conn, conn.transaction():
        again = await db.apply(conn, items, NOW)
    assert not any(again)
    assert (again.changed, again.removed) == ({}, {})


async def test_after_apply_runs_in_the_batch_transaction(pool: asyncpg.Pool) -> None:
    ws = str(uuid.uuid4())
    cid = str(uuid.uuid4())
    seen: list[Applied] = []

    async def after_apply(conn: asyncpg.Connection, applied: Applied, now: object) -> None:
        seen.append(applied)
        # The batch's writes are visible here: same transaction.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM profiles WHERE workspace_id = $1", uuid.UUID(ws)
            )
            == 1
        )
        raise RuntimeError("membership failed")

    with pytest.raises(RuntimeError):
        await apply_changes(pool, [db.Pending(ws, "e1", snapshot(cid))], after_apply)
    assert len(seen) == 1 and seen[0].changed == {(ws, cid): "e1"}
    # Its failure undid the batch: the change is applied again on the retry.
    rows = await pool.fetchval(
        "SELECT count(*) FROM profiles WHERE workspace_id = $1", uuid.UUID(ws)
    )
    assert rows == 0


async def test_the_writer_passes_after_apply(pool: asyncpg.Pool) -> None:
    ws = str(uuid.uuid4())
    cid = str(uuid.uuid4())
    seen: list[dict[db.Key, str]] = []

    async def after_apply(conn: asyncpg.Connection, applied: Applied, now: object) -> None:
        seen.append(dict(applied.changed))

    writer = ReadModelWriter(pool, after_apply=after_apply)
    assert await writer.apply(ws, "e1", snapshot(cid))
    assert not await writer.apply(ws, "e2", snapshot(cid))  # same version: nothing to say
    assert seen == [{(ws, cid): "e1"}]
