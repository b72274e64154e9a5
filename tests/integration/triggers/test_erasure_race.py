"""A contact's erasure and an event or a timer about it, in flight at the same time, leave
nothing of the contact behind, whichever transaction began first (runtime/erasure.py).

Without the lock, an event whose transaction began before the erasure committed passed the
erasure check and wrote the contact's facts back after the erasure had deleted them (the
end-to-end erasure test found a ``segment_entered`` of the erased contact in
``contact_events``). Each test holds one side's transaction open, starts the other, and
waits until PostgreSQL shows that other side waiting for the lock before it lets the first
commit: without the lock the wait never comes and the test fails. A timer round never
waits: the timer tests run a round inside the erasure's open transaction and check that it
dropped the contact's timers instead of firing them or putting them back."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import asyncpg
import pytest
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.segmentation.v1 import events_pb2 as segmentation_events

from services.common.db import migrate
from services.triggers import handlers, privacy
from services.triggers.bootstrap import MIGRATIONS
from services.triggers.runtime import timers as timers_module
from services.triggers.runtime.caps import FrequencyCaps
from services.triggers.runtime.runs import Engine
from services.triggers.runtime.timers import TimerLoop
from tests.integration.triggers.support import envelope
from tests.support import eventually

HELD = "SELECT count(*) FROM {} WHERE workspace_id = $1 AND contact_id = $2"


@pytest.fixture
async def dsn(infra: dict[str, str]) -> str:
    await migrate(infra["DATABASE_URL"], handlers.SCHEMA, MIGRATIONS)
    return infra["DATABASE_URL"]


async def connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"search_path": handlers.SCHEMA})


@pytest.fixture
async def pool(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """One connection, whose backend can be watched (its pid) while it waits."""
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=1, server_settings={"search_path": handlers.SCHEMA}
    )
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


def entered(ws: str, contact: str) -> Envelope:
    return envelope(
        ws,
        segmentation_events.SegmentMembershipChanged(
            segment_id="activation",
            contact_id=contact,
            change=segmentation_events.MEMBERSHIP_CHANGE_ENTERED,
        ),
    )


async def waiting_for_a_lock(conn: asyncpg.Connection, pid: int) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory'"
            " AND NOT granted",
            pid,
        )
    )


async def held(conn: asyncpg.Connection, ws: str, contact: str) -> dict[str, int]:
    w, c = uuid.UUID(ws), uuid.UUID(contact)
    return {
        table: await conn.fetchval(HELD.format(table), w, c)
        for table in ("contact_facts", "contact_events")
    }


async def test_an_event_arriving_during_the_erasure_waits_and_records_nothing(
    dsn: str, pool: asyncpg.Pool
) -> None:
    ws, contact = str(uuid.uuid4()), str(uuid.uuid4())
    engine = Engine(FrequencyCaps(None, ""), live_ttl_s=3600.0)
    async with pool.acquire() as conn:
        pid = conn.get_server_pid()
    erasing, watching = await connect(dsn), await connect(dsn)
    try:
        async with erasing.transaction():
            await privacy.erase_contact(erasing, ws, uuid.UUID(contact))
            recording = asyncio.create_task(
                handlers.on_events(pool, engine, [entered(ws, contact)])
            )
            await eventually(lambda: waiting_for_a_lock(watching, pid), timeout=10)
            assert not recording.done()
        assert await asyncio.wait_for(recording, 10) == []
        assert await held(watching, ws, contact) == {"contact_facts": 0, "contact_events": 0}
    finally:
        await erasing.close()
        await watching.close()


async def test_an_erasure_arriving_during_an_event_waits_and_deletes_what_it_wrote(
    dsn: str, pool: asyncpg.Pool
) -> None:
    ws, contact = str(uuid.uuid4()), str(uuid.uuid4())
    event = entered(ws, contact)
    recording, erasing, watching = await connect(dsn), await connect(dsn), await connect(dsn)
    pid = erasing.get_server_pid()

    async def erase() -> None:
        async with erasing.transaction():
            await privacy.erase_contact(erasing, ws, uuid.UUID(contact))

    try:
        async with recording.transaction():
            # What a round does first: the claim, past the erasure check; then a write.
            assert await handlers.claim_unless_erased_many(
                recording, [(event.event_id, ws, contact)]
            ) == [True]
            await recording.execute(
                "INSERT INTO contact_facts (workspace_id, contact_id, segments)"
                " VALUES ($1, $2, ARRAY['activation'])",
                uuid.UUID(ws),
                uuid.UUID(contact),
            )
            erasure = asyncio.create_task(erase())
            await eventually(lambda: waiting_for_a_lock(watching, pid), timeout=10)
            assert not erasure.done()
        await asyncio.wait_for(erasure, 10)
        assert await held(watching, ws, contact) == {"contact_facts": 0, "contact_events": 0}
        # The event again (a redelivery, or a later one) records nothing.
        engine = Engine(FrequencyCaps(None, ""), live_ttl_s=3600.0)
        assert await handlers.on_events(pool, engine, [entered(ws, contact)]) == []
        assert await held(watching, ws, contact) == {"contact_facts": 0, "contact_events": 0}
    finally:
        for conn in (recording, erasing, watching):
            await conn.close()


@pytest.fixture
async def own_dsn(infra: dict[str, str]) -> AsyncIterator[str]:
    """A database of the test's own: its timer round claims every due timer there is, and
    must meet no other test's."""
    name = f"nudge_erasure_{uuid.uuid4().hex[:10]}"
    shared = os.environ["DATABASE_URL"]
    conn = await asyncpg.connect(shared)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        url = urlsplit(shared)._replace(path=f"/{name}").geturl()
        await migrate(url, handlers.SCHEMA, MIGRATIONS)
        yield url
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def waiting_run(conn: asyncpg.Connection, ws: uuid.UUID, contact: uuid.UUID) -> uuid.UUID:
    """A run of the contact waiting on a timer that is due: its id."""
    run, workflow = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    await conn.execute(
        "INSERT INTO runs (workspace_id, id, workflow_id, version, contact_id, state,"
        " position, trigger_event_id, started_at, updated_at)"
        " VALUES ($1, $2, $3, 1, $4, 'waiting', 'remind', 'e1', $5, $5)",
        ws,
        run,
        workflow,
        contact,
        now - timedelta(hours=3),
    )
    await conn.execute(
        "INSERT INTO timers (timer_key, workspace_id, contact_id, workflow_id, run_id,"
        " kind, due_at) VALUES ($1, $2, $3, $4, $5, 'run', $6)",
        f"run:{run}",
        ws,
        contact,
        workflow,
        run,
        now - timedelta(seconds=1),
    )
    return run


TIMERS = "SELECT count(*) FROM timers WHERE workspace_id = $1 AND contact_id = $2"


async def test_a_timer_whose_run_an_erasure_holds_is_dropped_not_put_back(own_dsn: str) -> None:
    """The timer loop meets a due timer whose run the contact's erasure has locked. Put back
    for later, as a timer of a run an event holds is, it would be a row the erasure's delete
    may not see (it commits after the delete's snapshot): the contact's timer left behind.
    A run an event holds keeps its timer, put back for a moment later."""
    ws, erased, busy = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    setup, erasing, recording, watching = [await connect(own_dsn) for _ in range(4)]
    pool = await asyncpg.create_pool(
        own_dsn, min_size=1, max_size=1, server_settings={"search_path": handlers.SCHEMA}
    )
    assert pool is not None
    loop = TimerLoop(pool, Engine(FrequencyCaps(None, ""), live_ttl_s=3600.0))
    try:
        run = await waiting_run(setup, ws, erased)
        async with erasing.transaction():
            await privacy.hold_for_erasure(erasing, str(ws), erased)
            assert await asyncio.wait_for(loop.round(), 10) == 1  # claimed, never waited
            assert await watching.fetchval(TIMERS, ws, erased) == 0  # dropped, not put back
            await privacy.erase_contact(erasing, str(ws), erased)
        assert await watching.fetchval(TIMERS, ws, erased) == 0
        assert await watching.fetchval("SELECT count(*) FROM runs WHERE id = $1", run) == 0

        run = await waiting_run(setup, ws, busy)
        async with recording.transaction():  # what an event's round holds
            await handlers.lock_against_erasure(recording, [(str(ws), str(busy))])
            await recording.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", run)
            assert await asyncio.wait_for(loop.round(), 10) == 1
            assert await watching.fetchval(TIMERS, ws, busy) == 1  # put back
    finally:
        await pool.close()
        for conn in (setup, erasing, recording, watching):
            await conn.close()


async def test_a_date_timer_of_a_contact_being_erased_is_dropped_not_fired(
    own_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A birthday or inactivity timer fired during the erasure would write the next year's
    timer and start a run: rows the erasure's delete does not see. The round drops it."""
    fired: list[uuid.UUID] = []

    async def on_timer(conn: asyncpg.Connection, timer: asyncpg.Record, now: datetime) -> list:
        fired.append(timer["contact_id"])
        return []

    monkeypatch.setattr(timers_module.derived, "on_timer", on_timer)
    ws, erased, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    setup, erasing, watching = [await connect(own_dsn) for _ in range(3)]
    pool = await asyncpg.create_pool(
        own_dsn, min_size=1, max_size=1, server_settings={"search_path": handlers.SCHEMA}
    )
    assert pool is not None
    loop = TimerLoop(pool, Engine(FrequencyCaps(None, ""), live_ttl_s=3600.0))
    try:
        for contact in (erased, other):
            await setup.execute(
                "INSERT INTO timers (timer_key, workspace_id, contact_id, workflow_id, kind,"
                " due_at) VALUES ($1, $2, $3, $4, 'date', $5)",
                f"date/{contact}",
                ws,
                contact,
                uuid.uuid4(),
                datetime.now(UTC) - timedelta(seconds=1),
            )
        async with erasing.transaction():
            await privacy.hold_for_erasure(erasing, str(ws), erased)
            assert await asyncio.wait_for(loop.round(), 10) == 2
            await privacy.erase_contact(erasing, str(ws), erased)
        assert fired == [other]
        assert await watching.fetchval(TIMERS, ws, erased) == 0
    finally:
        await pool.close()
        for conn in (setup, erasing, watching):
            await conn.close()
