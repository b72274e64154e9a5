"""Derived triggers on real PostgreSQL (services/triggers/derived.py): the hooks the runtime
calls in an event's or a claimed timer's transaction, and the publication's scheduling.

The runtime is played here by plain SQL: a test writes ``contact_facts`` (and
``contact_events``) as the runtime would, calls :func:`on_contact_changed`, and claims a
timer as the timer loop does (``DELETE ... RETURNING``) before calling :func:`on_timer`.
Each test module has its own schema, each test its own workspace; times are given, not read
from a clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.common.db import create_pool, migrate
from services.triggers import derived
from services.triggers.bootstrap import MIGRATIONS
from services.triggers.derived import on_contact_changed, on_timer, schedule_workflow
from services.triggers.runtime import schedules
from services.triggers.runtime.erasure import ERASURE_LOCK
from tests.support import eventually

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
BIRTHDAY = {"event": "date_reached", "date_field": "birthday", "at": "09:00:00"}
WIN_BACK = {"event": "inactive", "inactive_for": "P90D"}
VALUE = {"event": "value_crossed", "threshold_minor": 100_000, "currency": "EUR"}


@pytest.fixture(scope="module")
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    schema = f"derived_{uuid.uuid4().hex[:8]}"
    await migrate(os.environ["DATABASE_URL"], schema, MIGRATIONS)
    pool = await create_pool(os.environ["DATABASE_URL"], schema)
    yield pool
    await pool.close()


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as connection:
        yield connection


def new_id() -> str:
    return str(uuid.uuid4())


def definition(trigger: dict[str, Any]) -> str:
    return json.dumps(
        {
            "format": "nudge.workflow/v1",
            "name": "derived",
            "trigger": trigger,
            "steps": [
                {"id": "hello", "type": "send", "message": {"subject": "Hi", "body_text": "x"}}
            ],
        }
    )


async def publish(
    conn: asyncpg.Connection,
    workspace_id: str,
    trigger: dict[str, Any],
    *,
    status: str = "active",
    workflow_id: str | None = None,
    version: int = 1,
) -> str:
    """A published workflow (or a new version of ``workflow_id``), as the API leaves it."""
    workflow_id = workflow_id or new_id()
    await conn.execute(
        "INSERT INTO workflow_versions (workspace_id, workflow_id, version, definition,"
        " published_at) VALUES ($1, $2, $3, $4::jsonb, $5)",
        workspace_id,
        workflow_id,
        version,
        definition(trigger),
        NOW,
    )
    await conn.execute(
        "INSERT INTO workflows (workspace_id, id, name, status, draft, published_version,"
        " trigger_event, created_at, updated_at, published_at)"
        " VALUES ($1, $2, 'derived', $3, $4::jsonb, $5, $6, $7, $7, $7)"
        " ON CONFLICT (workspace_id, id) DO UPDATE SET status = EXCLUDED.status,"
        " published_version = EXCLUDED.published_version,"
        " trigger_event = EXCLUDED.trigger_event",
        workspace_id,
        workflow_id,
        status,
        definition(trigger),
        version,
        trigger["event"],
        NOW,
    )
    return workflow_id


async def set_facts(
    conn: asyncpg.Connection, workspace_id: str, contact_id: str, **columns: Any
) -> None:
    """Write the contact's facts as the runtime does before calling the hook."""
    names = ["workspace_id", "contact_id", *columns]
    values = [workspace_id, contact_id, *columns.values()]
    placeholders = ", ".join(
        f"${i}::jsonb" if n == "attributes" else f"${i}" for i, n in enumerate(names, 1)
    )
    updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in columns) or "version = contact_facts.version"
    await conn.execute(
        f"INSERT INTO contact_facts ({', '.join(names)}) VALUES ({placeholders})"
        f" ON CONFLICT (workspace_id, contact_id) DO UPDATE SET {updates}",
        *values,
    )


async def timer(conn: asyncpg.Connection, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM timers WHERE timer_key = $1", key)


async def claim(conn: asyncpg.Connection, key: str) -> asyncpg.Record:
    """What the timer loop does with a due timer, before it calls on_timer."""
    row = await conn.fetchrow("DELETE FROM timers WHERE timer_key = $1 RETURNING *", key)
    assert row is not None, f"no timer {key}"
    return row


async def changed(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: str,
    event: str = "contact_updated",
    occurred_at: datetime = NOW,
    now: datetime = NOW,
) -> list[derived.Start]:
    async with conn.transaction():
        return await on_contact_changed(conn, workspace_id, contact_id, event, occurred_at, now)


async def fire(conn: asyncpg.Connection, key: str, now: datetime) -> list[derived.Start]:
    async with conn.transaction():
        return await on_timer(conn, await claim(conn, key), now)


# date_reached ------------------------------------------------------------------------------


async def test_birthday_timer_is_due_at_nine_in_the_contacts_zone_and_follows_the_birthday(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, BIRTHDAY)
    key = f"date/{wf}/{contact}"
    await set_facts(conn, ws, contact, time_zone="Europe/Rome", birthday=date(1990, 3, 14))
    assert await changed(conn, ws, contact) == []
    row = await timer(conn, key)
    assert row is not None
    assert (row["kind"], str(row["workflow_id"]), str(row["contact_id"])) == ("date", wf, contact)
    assert row["due_at"] == datetime(2026, 3, 14, 8, 0, tzinfo=UTC)  # 09:00 CET

    await set_facts(conn, ws, contact, birthday=date(1990, 4, 2))
    await changed(conn, ws, contact)
    row = await timer(conn, key)
    assert row is not None and row["due_at"] == datetime(2026, 4, 2, 7, 0, tzinfo=UTC)  # CEST

    await set_facts(conn, ws, contact, time_zone="Asia/Tokyo")
    await changed(conn, ws, contact)
    row = await timer(conn, key)
    assert row is not None and row["due_at"] == datetime(2026, 4, 2, 0, 0, tzinfo=UTC)

    await set_facts(conn, ws, contact, birthday=None)
    await changed(conn, ws, contact)
    assert await timer(conn, key) is None


async def test_an_event_while_the_birthday_timer_is_overdue_leaves_it_due(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, BIRTHDAY)
    await set_facts(conn, ws, contact, birthday=date(1990, 3, 14))
    await changed(conn, ws, contact)
    due = datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
    # The timer loop is a few seconds late; an order arrives meanwhile.
    await changed(conn, ws, contact, "order_placed", now=due + timedelta(seconds=3))
    row = await timer(conn, f"date/{wf}/{contact}")
    assert row is not None and row["due_at"] == due


async def test_a_fired_birthday_starts_one_run_with_the_years_and_sets_next_years_timer(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, BIRTHDAY)
    key = f"date/{wf}/{contact}"
    await set_facts(conn, ws, contact, time_zone="Europe/Rome", birthday=date(1990, 3, 14))
    await changed(conn, ws, contact)
    late = datetime(2026, 3, 14, 8, 0, 2, tzinfo=UTC)

    starts = await fire(conn, key, late)

    assert len(starts) == 1
    start = starts[0]
    assert (start.workflow_id, start.version, start.contact_id) == (wf, 1, contact)
    assert dict(start.vars) == {"date_field": "birthday", "years": "36"}
    assert start.trigger_event_id == derived.date_trigger_id(ws, wf, contact, date(2026, 3, 14))
    row = await timer(conn, key)
    assert row is not None and row["due_at"] == datetime(2027, 3, 14, 8, 0, tzinfo=UTC)
    assert json.loads(row["payload"])["years"] == 37

    nxt = await fire(conn, key, datetime(2027, 3, 14, 8, 0, tzinfo=UTC))
    assert [s.vars["years"] for s in nxt] == ["37"]
    assert nxt[0].trigger_event_id != start.trigger_event_id


async def test_a_fired_timer_still_in_place_is_replaced_by_next_years(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, BIRTHDAY)
    key = f"date/{wf}/{contact}"
    await set_facts(conn, ws, contact, birthday=date(1990, 3, 14))
    await changed(conn, ws, contact)
    row = await timer(conn, key)  # claimed by a lock only: the row is still there
    assert row is not None
    async with conn.transaction():
        starts = await on_timer(conn, row, datetime(2026, 3, 14, 9, 0, tzinfo=UTC))
    assert len(starts) == 1
    row = await timer(conn, key)
    assert row is not None and row["due_at"] == datetime(2027, 3, 14, 9, 0, tzinfo=UTC)


async def test_a_leaplings_birthday_fires_on_28_february_in_a_common_year(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, BIRTHDAY)
    await set_facts(conn, ws, contact, birthday=date(2000, 2, 29))
    await changed(conn, ws, contact, now=datetime(2027, 1, 5, tzinfo=UTC))
    row = await timer(conn, f"date/{wf}/{contact}")
    assert row is not None and row["due_at"] == datetime(2027, 2, 28, 9, 0, tzinfo=UTC)


async def test_a_paused_workflow_starts_nothing_but_keeps_its_yearly_timer(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, BIRTHDAY, status="paused")
    key = f"date/{wf}/{contact}"
    await set_facts(conn, ws, contact, birthday=date(1990, 3, 14))
    await changed(conn, ws, contact)
    assert await fire(conn, key, datetime(2026, 3, 14, 9, 0, tzinfo=UTC)) == []
    row = await timer(conn, key)
    assert row is not None and row["due_at"] == datetime(2027, 3, 14, 9, 0, tzinfo=UTC)


async def test_a_date_timer_computed_for_an_earlier_version_starts_nothing_and_is_recomputed(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, BIRTHDAY)
    key = f"date/{wf}/{contact}"
    await set_facts(conn, ws, contact, birthday=date(1990, 3, 14))
    await changed(conn, ws, contact)
    # Republished at 10:00 instead of 09:00: the 09:00 timer is not this version's.
    await publish(conn, ws, {**BIRTHDAY, "at": "10:00:00"}, workflow_id=wf, version=2)
    assert await fire(conn, key, datetime(2026, 3, 14, 9, 0, tzinfo=UTC)) == []
    row = await timer(conn, key)
    assert row is not None and row["due_at"] == datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
    starts = await fire(conn, key, datetime(2026, 3, 14, 10, 0, tzinfo=UTC))
    assert [(s.version, s.vars["years"]) for s in starts] == [(2, "36")]


async def test_a_timer_of_an_unpublished_workflow_starts_nothing(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, BIRTHDAY)
    key = f"date/{wf}/{contact}"
    await set_facts(conn, ws, contact, birthday=date(1990, 3, 14))
    await changed(conn, ws, contact)
    await conn.execute("UPDATE workflows SET status = 'draft' WHERE id = $1", wf)
    assert await fire(conn, key, datetime(2026, 3, 14, 9, 0, tzinfo=UTC)) == []
    assert await timer(conn, key) is None


async def test_another_workspaces_workflow_schedules_nothing_for_this_contact(
    conn: asyncpg.Connection,
) -> None:
    ws, other, contact = new_id(), new_id(), new_id()
    wf = await publish(conn, other, BIRTHDAY)
    await set_facts(conn, ws, contact, birthday=date(1990, 3, 14))
    await changed(conn, ws, contact)
    assert await conn.fetchval("SELECT count(*) FROM timers WHERE workflow_id = $1", wf) == 0


async def test_a_published_version_that_no_longer_parses_is_left_out_not_fatal(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    broken = await publish(conn, ws, BIRTHDAY)
    await conn.execute(
        'UPDATE workflow_versions SET definition = definition || \'{"format": "v0"}\''
        " WHERE workflow_id = $1",
        broken,
    )
    wf = await publish(conn, ws, BIRTHDAY)
    await set_facts(conn, ws, contact, birthday=date(1990, 3, 14))
    await changed(conn, ws, contact)
    assert await timer(conn, f"date/{wf}/{contact}") is not None
    assert await timer(conn, f"date/{broken}/{contact}") is None


async def drain(conn: asyncpg.Connection) -> int:
    """The schedule loop's work: every job to its end; how many batches it took."""
    batches = 0
    while await schedules.run_one_batch(conn, NOW):
        batches += 1
    return batches


@pytest.fixture
async def no_jobs_left(conn: asyncpg.Connection) -> None:
    """The jobs other tests of the database left (an API test's publications), worked off
    first, so that a test's batches are its own job's."""
    await drain(conn)


async def job_of(conn: asyncpg.Connection, workflow_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM schedule_jobs WHERE workflow_id = $1", workflow_id)


@pytest.mark.usefixtures("no_jobs_left")
async def test_publishing_leaves_a_job_that_schedules_every_known_contact_in_batches(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publication's transaction records a job and writes no timer (at 100,000 contacts
    writing them there took 8 s); the schedule loop writes them a batch at a time after."""
    monkeypatch.setattr(derived, "BATCH_SIZE", 3)
    ws = new_id()
    with_birthday = [new_id() for _ in range(7)]
    without = [new_id() for _ in range(2)]
    for i, contact in enumerate(with_birthday):
        await set_facts(conn, ws, contact, birthday=date(1990, 3, 1 + i))
    for contact in without:
        await set_facts(conn, ws, contact)
    await set_facts(conn, new_id(), new_id(), birthday=date(1990, 3, 1))  # another workspace
    wf = await publish(conn, ws, BIRTHDAY)

    async with conn.transaction():
        assert await schedule_workflow(conn, ws, wf, 1, NOW) == 0
    assert await conn.fetchval("SELECT count(*) FROM timers WHERE workflow_id = $1", wf) == 0
    assert await job_of(conn, wf) is not None

    assert await drain(conn) == 4  # 9 contacts of the workspace: 3 batches of 3, an empty one
    rows = await conn.fetch(
        "SELECT contact_id::text, due_at FROM timers WHERE workflow_id = $1", wf
    )
    assert {r["contact_id"] for r in rows} == set(with_birthday)
    due = {r["contact_id"]: r["due_at"] for r in rows}
    assert due[with_birthday[3]] == datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
    assert await job_of(conn, wf) is None
    # Published again (say the API retried): the job runs again and moves nothing.
    async with conn.transaction():
        await schedule_workflow(conn, ws, wf, 1, NOW)
    await drain(conn)
    again = await conn.fetch(
        "SELECT contact_id::text, due_at FROM timers WHERE workflow_id = $1", wf
    )
    assert {r["contact_id"]: r["due_at"] for r in again} == due


@pytest.mark.usefixtures("no_jobs_left")
async def test_a_job_cut_short_resumes_after_the_last_batch_that_committed(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed mid-batch: that batch's transaction never commits, so neither its
    timers nor its cursor exist; the next worker starts from the batch before."""
    monkeypatch.setattr(derived, "BATCH_SIZE", 3)
    ws = new_id()
    contacts = sorted(new_id() for _ in range(7))
    for contact in contacts:
        await set_facts(conn, ws, contact, birthday=date(1990, 5, 5))
    wf = await publish(conn, ws, BIRTHDAY)
    async with conn.transaction():
        await schedule_workflow(conn, ws, wf, 1, NOW)

    assert await schedules.run_one_batch(conn, NOW)
    with pytest.raises(RuntimeError):
        async with conn.transaction():  # the second batch, killed before its commit
            assert await schedules.run_one_batch(conn, NOW)
            raise RuntimeError("killed")
    job = await job_of(conn, wf)
    assert job is not None and str(job["after_contact"]) == contacts[2]
    written = await conn.fetch("SELECT contact_id::text FROM timers WHERE workflow_id = $1", wf)
    assert sorted(r["contact_id"] for r in written) == contacts[:3]

    await drain(conn)
    written = await conn.fetch("SELECT contact_id::text FROM timers WHERE workflow_id = $1", wf)
    assert sorted(r["contact_id"] for r in written) == contacts


@pytest.mark.usefixtures("no_jobs_left")
async def test_a_job_of_a_workflow_paused_or_published_again_stops_and_the_new_one_runs(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    await set_facts(conn, ws, contact, birthday=date(1990, 3, 14))
    wf = await publish(conn, ws, BIRTHDAY)
    async with conn.transaction():
        await schedule_workflow(conn, ws, wf, 1, NOW)
    await conn.execute("UPDATE workflows SET status = 'paused' WHERE id = $1", wf)
    await drain(conn)
    assert await timer(conn, f"date/{wf}/{contact}") is None
    assert await job_of(conn, wf) is None

    await publish(conn, ws, {**BIRTHDAY, "at": "10:00:00"}, workflow_id=wf, version=2)
    async with conn.transaction():
        await schedule_workflow(conn, ws, wf, 2, NOW)
    await drain(conn)
    row = await timer(conn, f"date/{wf}/{contact}")
    assert row is not None and row["due_at"] == datetime(2026, 3, 14, 10, 0, tzinfo=UTC)
    assert json.loads(row["payload"])["version"] == 2


@pytest.mark.usefixtures("no_jobs_left")
async def test_a_contact_changing_while_its_batch_is_read_gets_the_date_it_commits(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    """The batch reads the facts FOR SHARE: a change being written is waited for. Read
    without it, the batch would write the old birthday's timer after the change's own."""
    ws, contact = new_id(), new_id()
    await set_facts(conn, ws, contact, birthday=date(1990, 3, 14))
    wf = await publish(conn, ws, BIRTHDAY)
    async with conn.transaction():
        await schedule_workflow(conn, ws, wf, 1, NOW)
    async with pool.acquire() as other:
        change = other.transaction()
        await change.start()
        await other.execute(
            "UPDATE contact_facts SET birthday = '1990-05-05' WHERE contact_id = $1", contact
        )
        batch = asyncio.ensure_future(schedules.run_one_batch(conn, NOW))

        async def waiting_for_the_change() -> bool:
            return (
                await other.fetchval(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1",
                    conn.get_server_pid(),
                )
                == "Lock"
            )

        await eventually(waiting_for_the_change, timeout=10)
        assert not batch.done()
        await change.commit()
        assert await batch
    await drain(conn)
    row = await timer(conn, f"date/{wf}/{contact}")
    assert row is not None and row["due_at"] == datetime(2026, 5, 5, 9, 0, tzinfo=UTC)


@pytest.mark.usefixtures("no_jobs_left")
async def test_a_contact_being_erased_is_skipped_by_the_batch(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    ws, kept, erased = new_id(), new_id(), new_id()
    for contact in (kept, erased):
        await set_facts(conn, ws, contact, birthday=date(1990, 3, 14))
    wf = await publish(conn, ws, BIRTHDAY)
    async with conn.transaction():
        await schedule_workflow(conn, ws, wf, 1, NOW)
    async with pool.acquire() as eraser, eraser.transaction():
        await eraser.execute(
            f"SELECT {ERASURE_LOCK.format('')} FROM (SELECT $1::uuid AS w, $2::uuid AS c) q",
            ws,
            erased,
        )
        await drain(conn)
    assert await timer(conn, f"date/{wf}/{kept}") is not None
    assert await timer(conn, f"date/{wf}/{erased}") is None


# inactive ----------------------------------------------------------------------------------


async def test_activity_moves_the_inactive_timer_forward_only(conn: asyncpg.Connection) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, WIN_BACK)
    key = f"inactive/{wf}/{contact}"
    await set_facts(conn, ws, contact)
    t1 = NOW - 10 * DAY
    await changed(conn, ws, contact, "order_placed", occurred_at=t1)
    row = await timer(conn, key)
    assert row is not None and row["kind"] == "inactive"
    assert row["due_at"] == t1 + 90 * DAY

    await changed(conn, ws, contact, "page_viewed", occurred_at=NOW)
    row = await timer(conn, key)
    assert row is not None and row["due_at"] == NOW + 90 * DAY

    await changed(conn, ws, contact, "message_opened", occurred_at=NOW - 5 * DAY)  # late event
    await changed(conn, ws, contact, "searched", occurred_at=NOW + DAY)  # not an activity here
    row = await timer(conn, key)
    assert row is not None and row["due_at"] == NOW + 90 * DAY


async def test_ninety_days_of_silence_start_one_run_with_the_days(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, WIN_BACK)
    key = f"inactive/{wf}/{contact}"
    await set_facts(conn, ws, contact)
    await changed(conn, ws, contact, "order_placed", occurred_at=NOW)

    starts = await fire(conn, key, NOW + 90 * DAY + timedelta(seconds=1))

    assert len(starts) == 1
    assert (starts[0].workflow_id, starts[0].contact_id) == (wf, contact)
    assert dict(starts[0].vars) == {"days": "90"}
    assert starts[0].trigger_event_id == derived.inactive_trigger_id(ws, wf, contact, NOW)
    assert await timer(conn, key) is None  # the next activity sets the next one


async def test_an_activity_the_timer_missed_postpones_it_instead_of_starting(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, WIN_BACK)
    key = f"inactive/{wf}/{contact}"
    await set_facts(conn, ws, contact)
    await changed(conn, ws, contact, "order_placed", occurred_at=NOW)
    later = NOW + 30 * DAY
    # Recorded by the runtime, but the timer was not moved (a race with the timer loop).
    await conn.execute(
        "INSERT INTO contact_events (workspace_id, contact_id, event_id, event, occurred_at)"
        " VALUES ($1, $2, $3, 'page_viewed', $4), ($1, $2, $5, 'searched', $6)",
        ws,
        contact,
        new_id(),
        later,
        new_id(),
        later + DAY,  # not an activity of this workflow
    )
    assert await fire(conn, key, NOW + 90 * DAY) == []
    row = await timer(conn, key)
    assert row is not None and row["due_at"] == later + 90 * DAY


async def test_a_silence_lengthened_by_republishing_is_waited_out(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, {**WIN_BACK, "inactive_for": "P30D"})
    key = f"inactive/{wf}/{contact}"
    await set_facts(conn, ws, contact)
    await changed(conn, ws, contact, "order_placed", occurred_at=NOW)
    await publish(conn, ws, WIN_BACK, workflow_id=wf, version=2)
    assert await fire(conn, key, NOW + 30 * DAY) == []
    row = await timer(conn, key)
    assert row is not None and row["due_at"] == NOW + 90 * DAY
    starts = await fire(conn, key, NOW + 90 * DAY)
    assert [(s.version, s.vars["days"]) for s in starts] == [(2, "90")]


async def test_publishing_a_win_back_schedules_contacts_from_their_last_activity(
    conn: asyncpg.Connection,
) -> None:
    ws, active, silent, never = new_id(), new_id(), new_id(), new_id()
    await set_facts(conn, ws, active, last_activity_at=NOW - 10 * DAY)
    await set_facts(conn, ws, silent, last_activity_at=NOW - 200 * DAY)
    await set_facts(conn, ws, never)
    wf = await publish(conn, ws, WIN_BACK)
    async with conn.transaction():
        assert await schedule_workflow(conn, ws, wf, 1, NOW) == 2
    row = await timer(conn, f"inactive/{wf}/{active}")
    assert row is not None and row["due_at"] == NOW + 80 * DAY
    assert await timer(conn, f"inactive/{wf}/{never}") is None
    starts = await fire(conn, f"inactive/{wf}/{silent}", NOW)
    assert [(s.contact_id, s.vars["days"]) for s in starts] == [(silent, "200")]
    assert starts[0].trigger_event_id == derived.inactive_trigger_id(
        ws, wf, silent, NOW - 200 * DAY
    )


# value_crossed -----------------------------------------------------------------------------


async def test_the_order_that_crosses_the_threshold_starts_one_run(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, VALUE)
    await set_facts(conn, ws, contact, total_spent_minor=90_000, currency="EUR")
    assert await changed(conn, ws, contact, "order_placed") == []  # a new contact's first: 900

    await set_facts(conn, ws, contact, total_spent_minor=110_000)
    starts = await changed(conn, ws, contact, "order_placed")

    assert len(starts) == 1
    assert (starts[0].workflow_id, starts[0].version, starts[0].contact_id) == (wf, 1, contact)
    assert dict(starts[0].vars) == {"total_spent": "1,100.00 EUR", "threshold": "1,000.00 EUR"}
    assert starts[0].trigger_event_id == derived.value_trigger_id(ws, wf, contact, "EUR", 100_000)

    await set_facts(conn, ws, contact, total_spent_minor=130_000)
    assert await changed(conn, ws, contact, "order_placed") == []


async def test_a_total_reached_before_publication_or_by_a_profile_change_is_no_crossing(
    conn: asyncpg.Connection,
) -> None:
    ws, rich, imported, dollar = new_id(), new_id(), new_id(), new_id()
    await set_facts(conn, ws, rich, total_spent_minor=150_000, currency="EUR")
    wf = await publish(conn, ws, VALUE)
    async with conn.transaction():
        assert await schedule_workflow(conn, ws, wf, 1, NOW) == 1
    await set_facts(conn, ws, rich, total_spent_minor=160_000)
    assert await changed(conn, ws, rich, "order_placed") == []

    await set_facts(conn, ws, imported, total_spent_minor=500, currency="EUR")
    await changed(conn, ws, imported, "order_placed")
    await set_facts(conn, ws, imported, total_spent_minor=200_000)
    assert await changed(conn, ws, imported, "contact_updated") == []
    await set_facts(conn, ws, imported, total_spent_minor=210_000)
    assert await changed(conn, ws, imported, "order_placed") == []

    await set_facts(conn, ws, dollar, total_spent_minor=150_000, currency="USD")
    assert await changed(conn, ws, dollar, "order_placed") == []


async def test_a_first_order_above_the_threshold_crosses_it(conn: asyncpg.Connection) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, VALUE)
    async with conn.transaction():
        await schedule_workflow(conn, ws, wf, 1, NOW)  # the contact is not known yet
    await set_facts(conn, ws, contact, total_spent_minor=120_000, currency="EUR")
    starts = await changed(conn, ws, contact, "order_placed")
    assert [s.workflow_id for s in starts] == [wf]


async def test_a_paused_value_workflow_starts_nothing_but_keeps_the_baseline(
    conn: asyncpg.Connection,
) -> None:
    ws, contact = new_id(), new_id()
    wf = await publish(conn, ws, VALUE, status="paused")
    await set_facts(conn, ws, contact, total_spent_minor=90_000, currency="EUR")
    await changed(conn, ws, contact, "order_placed")
    await set_facts(conn, ws, contact, total_spent_minor=110_000)
    assert await changed(conn, ws, contact, "order_placed") == []
    await conn.execute("UPDATE workflows SET status = 'active' WHERE id = $1", wf)
    await set_facts(conn, ws, contact, total_spent_minor=120_000)
    assert await changed(conn, ws, contact, "order_placed") == []  # crossed while paused


async def test_an_erased_contacts_seen_total_and_timers_are_forgotten(
    conn: asyncpg.Connection,
) -> None:
    from services.triggers import privacy

    ws, contact, other = new_id(), new_id(), new_id()
    await publish(conn, ws, VALUE)
    await publish(conn, ws, BIRTHDAY)
    for someone in (contact, other):
        await set_facts(
            conn, ws, someone, total_spent_minor=500, currency="EUR", birthday=date(1990, 3, 14)
        )
        await changed(conn, ws, someone, "order_placed")
    exported = await privacy.export_contact(conn, ws, uuid.UUID(contact))
    assert [r["total_spent_minor"] for r in exported["contact_value_seen"]] == [500]

    async with conn.transaction():
        await privacy.erase_contact(conn, ws, uuid.UUID(contact))

    for table in ("contact_value_seen", "timers"):
        count = f"SELECT count(*) FROM {table} WHERE workspace_id = $1 AND contact_id = $2"
        assert await conn.fetchval(count, ws, contact) == 0
        assert await conn.fetchval(count, ws, other) == 1
