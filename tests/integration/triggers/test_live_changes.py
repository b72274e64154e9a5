"""A publication or a pause reaches every worker's cache of live workflows when it commits
(services/triggers/runtime/live_changes.py), on real PostgreSQL: the engines here cache for
an hour, so only the notification can make them see the change."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg

from services.triggers import workflows_store
from services.triggers.runtime.caps import FrequencyCaps
from services.triggers.runtime.live_changes import ChangeListener
from services.triggers.runtime.runs import Engine
from tests.integration.triggers.support import WELCOME
from tests.support import eventually

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@contextlib.asynccontextmanager
async def listening(url: str, engine: Engine) -> AsyncIterator[ChangeListener]:
    listener = ChangeListener(url, engine)
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.listening.wait(), 30)
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def live_ids(pool: asyncpg.Pool, engine: Engine, ws: str) -> list[str]:
    async with pool.acquire() as conn:
        return [c.workflow_id for c in await engine.live(conn, ws, "signed_up", NOW)]


async def publish(pool: asyncpg.Pool, ws: str, *, committed: bool = True) -> str:
    """What PublishWorkflow writes, in its transaction (rolled back when not ``committed``)."""

    class RolledBack(Exception):
        pass

    with contextlib.suppress(RolledBack):
        async with pool.acquire() as conn, conn.transaction():
            row = await workflows_store.insert_workflow(
                conn,
                ws,
                name="Welcome",
                draft=WELCOME,
                trigger_event="signed_up",
                template_id="",
                now=NOW,
            )
            await workflows_store.publish(
                conn,
                ws,
                row["id"],
                version=1,
                definition=WELCOME,
                trigger_event="signed_up",
                published_by="test",
                now=NOW,
            )
            if not committed:
                raise RolledBack
    return str(row["id"])


async def test_a_publication_and_a_pause_reach_every_workers_cache_at_once(
    triggers_db: asyncpg.Pool, infra: dict[str, str]
) -> None:
    ws = str(uuid.uuid4())
    workers = [Engine(FrequencyCaps(None, ""), live_ttl_s=3600.0) for _ in range(2)]
    async with (
        listening(infra["DATABASE_URL"], workers[0]),
        listening(infra["DATABASE_URL"], workers[1]),
    ):
        for engine in workers:
            assert await live_ids(triggers_db, engine, ws) == []  # cached: nothing live
        await publish(triggers_db, ws, committed=False)
        workflow_id = await publish(triggers_db, ws)
        for engine in workers:
            await eventually(lambda e=engine: live_ids(triggers_db, e, ws), timeout=10)  # type: ignore[misc]
            assert await live_ids(triggers_db, engine, ws) == [workflow_id]

        async with triggers_db.acquire() as conn, conn.transaction():
            await workflows_store.set_status(conn, ws, uuid.UUID(workflow_id), "paused", NOW)

        async def paused_everywhere() -> bool:
            return all([await live_ids(triggers_db, e, ws) == [] for e in workers])

        await eventually(paused_everywhere, timeout=10)


async def test_what_changed_before_a_listener_listened_is_read_again(
    triggers_db: asyncpg.Pool, infra: dict[str, str]
) -> None:
    """A worker (re)connecting did not hear what changed before: it starts afresh."""
    engine = Engine(FrequencyCaps(None, ""), live_ttl_s=3600.0)
    ws = str(uuid.uuid4())
    assert await live_ids(triggers_db, engine, ws) == []
    published = await publish(triggers_db, ws)  # nobody listens yet
    assert await live_ids(triggers_db, engine, ws) == []  # the cache, stale
    async with listening(infra["DATABASE_URL"], engine):
        assert await live_ids(triggers_db, engine, ws) == [published]


async def test_a_listener_whose_connection_is_cut_listens_again(
    triggers_db: asyncpg.Pool, infra: dict[str, str]
) -> None:
    engine = Engine(FrequencyCaps(None, ""), live_ttl_s=3600.0)
    ws = str(uuid.uuid4())
    async with listening(infra["DATABASE_URL"], engine) as listener:
        before = listener.backend_pid
        assert await triggers_db.fetchval("SELECT pg_terminate_backend($1)", before)

        async def listening_again() -> bool:
            return listener.listening.is_set() and listener.backend_pid != before

        await eventually(listening_again, timeout=30)
        assert await live_ids(triggers_db, engine, ws) == []
        published = await publish(triggers_db, ws)

        async def heard() -> bool:
            return await live_ids(triggers_db, engine, ws) == [published]

        await eventually(heard, timeout=10)
