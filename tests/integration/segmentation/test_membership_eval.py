"""Membership transitions on real PostgreSQL, without Kafka: a batch of read-model changes
re-evaluates the changed contacts in its own transaction and queues exactly one outbox row
per transition; the sweeper finds transitions caused by time alone; definition changes.

Each test module gets its own schema (no running service's relay drains its outbox), and
the clock is frozen so that times are exact.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.segmentation.v1 import events_pb2 as E

from services.common import clock
from services.common.db import create_pool, migrate
from services.segmentation import membership
from services.segmentation.adapters import postgres as db
from services.segmentation.bootstrap import MIGRATIONS
from services.segmentation.domain import rules
from services.segmentation.domain.readmodel import (
    OrderPlaced,
    ProfileSnapshot,
    Removed,
    TagsSet,
)
from services.segmentation.handlers import apply_changes
from services.segmentation.sweeper import Sweeper

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)


@pytest.fixture(scope="module")
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    schema = f"membership_{uuid.uuid4().hex[:8]}"
    await migrate(os.environ["DATABASE_URL"], schema, MIGRATIONS)
    pool = await create_pool(os.environ["DATABASE_URL"], schema)
    yield pool
    await pool.close()


@pytest.fixture
def frozen() -> Iterator[clock.FrozenClock]:
    at = clock.FrozenClock(NOW)
    clock.set_clock(at)
    yield at
    clock.set_clock(clock.SystemClock())


def snapshot(contact_id: str, version: int, *, vip: bool = False) -> ProfileSnapshot:
    return ProfileSnapshot(contact_id, f"{contact_id[:8]}@example.com", vip=vip, version=version)


async def apply(pool: asyncpg.Pool, ws: str, *changes: tuple[str, object]) -> None:
    items = [db.Pending(ws, event_id, change) for event_id, change in changes]  # type: ignore[arg-type]
    await apply_changes(pool, items, membership.after_apply)


async def published(pool: asyncpg.Pool, ws: str) -> list[tuple[str, E.SegmentMembershipChanged]]:
    """(event id, payload) of every queued membership event of ``ws``, in outbox order."""
    out = []
    for row in await pool.fetch(
        "SELECT value FROM outbox WHERE topic = 'segments.membership.v1' ORDER BY id"
    ):
        env = Envelope.FromString(row["value"])
        if env.workspace_id == ws:
            out.append((env.event_id, env.segment_membership_changed))
    return out


def summary(events: list[tuple[str, E.SegmentMembershipChanged]], segment: str) -> list[str]:
    return [
        f"{E.MembershipChange.Name(p.change)[18:]}/{E.MembershipCause.Name(p.cause)[17:]}"
        for _, p in events
        if p.segment_id == segment
    ]


async def members(pool: asyncpg.Pool, ws: str, segment: str) -> set[str]:
    rows = await pool.fetch(
        "SELECT contact_id FROM memberships WHERE workspace_id = $1 AND segment_id = $2",
        uuid.UUID(ws),
        segment,
    )
    return {str(r["contact_id"]) for r in rows}


async def test_a_batch_publishes_each_transition_once_with_its_cause(
    pool: asyncpg.Pool, frozen: clock.FrozenClock
) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    await apply(pool, ws, ("e1", snapshot(cid, 1, vip=True)))
    assert await members(pool, ws, "vip") == {cid}
    events = await published(pool, ws)
    assert summary(events, "vip") == ["ENTERED/EVENT"]
    event_id, entered = next(e for e in events if e[1].segment_id == "vip")
    assert (entered.contact_id, entered.caused_by_event_id) == (cid, "e1")
    assert (entered.segment_version, entered.effective_at.ToDatetime(UTC)) == (1, NOW)
    # The id is the transition's: derived, so a republished copy carries the same.
    assert event_id == membership.transition_id(
        ws,
        membership.Transition("vip", cid, True, E.MEMBERSHIP_CAUSE_EVENT, 1, NOW, "e1", "e1"),
    )

    # Replayed: nothing changes, nothing more is published.
    await apply(pool, ws, ("e1", snapshot(cid, 1, vip=True)))
    frozen.advance(SECOND)
    await apply(pool, ws, ("e2", snapshot(cid, 2, vip=False)))
    events = await published(pool, ws)
    assert summary(events, "vip") == ["ENTERED/EVENT", "EXITED/EVENT"]
    assert await members(pool, ws, "vip") == set()
    assert len({event_id for event_id, _ in events}) == len(events)


async def test_a_removed_contact_leaves_every_segment_with_cause_removal(
    pool: asyncpg.Pool, frozen: clock.FrozenClock
) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    await apply(pool, ws, ("e1", snapshot(cid, 1, vip=True)))
    await apply(pool, ws, ("gone", Removed(cid, 2, erased=False)))
    events = await published(pool, ws)
    assert summary(events, "vip") == ["ENTERED/EVENT", "EXITED/REMOVAL"]
    assert events[-1][1].caused_by_event_id == "gone"
    left = await pool.fetchval(
        "SELECT count(*) FROM memberships WHERE workspace_id = $1", uuid.UUID(ws)
    )
    assert left == 0


async def test_a_failed_batch_publishes_nothing(
    pool: asyncpg.Pool, frozen: clock.FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())

    async def broken(*_: object) -> None:
        raise RuntimeError("the outbox is away")

    monkeypatch.setattr(membership, "add_many_to_outbox", broken)
    with pytest.raises(RuntimeError):
        await apply(pool, ws, ("e1", snapshot(cid, 1, vip=True)))
    monkeypatch.undo()
    # The transition and its event go together: neither was kept; the retry does both.
    assert await members(pool, ws, "vip") == set()
    await apply(pool, ws, ("e1", snapshot(cid, 1, vip=True)))
    assert summary(await published(pool, ws), "vip") == ["ENTERED/EVENT"]


async def test_the_sweeper_publishes_lost_when_the_last_order_turns_90_days_and_a_second(
    pool: asyncpg.Pool, frozen: clock.FrozenClock
) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    ordered = NOW - DAY
    await apply(
        pool,
        ws,
        ("e1", snapshot(cid, 1)),
        ("o1", OrderPlaced(cid, "o-1", ordered, 1000, "EUR")),
    )
    due = await pool.fetchval(
        "SELECT next_transition_at FROM profiles WHERE contact_id = $1", uuid.UUID(cid)
    )
    assert due is not None and due <= ordered + 90 * DAY + SECOND
    sweeper = Sweeper(pool)

    async def sweep_until_idle() -> None:
        while await sweeper.sweep_once():
            pass

    frozen.advance(ordered + 90 * DAY - SECOND - clock.now())
    await sweep_until_idle()
    assert cid not in await members(pool, ws, "lost")
    assert "ENTERED/TIME" not in summary(await published(pool, ws), "lost")

    frozen.advance(2 * SECOND)  # the last order is now 90 days and a second old
    await sweep_until_idle()
    assert cid in await members(pool, ws, "lost")
    events = await published(pool, ws)
    assert summary(events, "lost") == ["ENTERED/TIME"]
    lost = next(p for _, p in events if p.segment_id == "lost")
    # Effective when it became true, not when the sweep ran.
    effective = lost.effective_at.ToDatetime(UTC)
    assert ordered + 90 * DAY <= effective <= ordered + 90 * DAY + timedelta(milliseconds=1)
    # Swept again at the same moment: nothing new (the row is not due again).
    assert await sweeper.sweep_once() == 0
    assert len(await published(pool, ws)) == len(events)


async def add_segment(
    conn: asyncpg.Connection, ws: str, segment_id: str, rule: object, version: int = 1
) -> None:
    """The segment row as the segment use cases write it, before they call the hook."""
    await conn.execute(
        "INSERT INTO segments (workspace_id, id, name, rule, depends_on, version, created_at,"
        " updated_at) VALUES ($1, $2, $2, $3::jsonb, $4, $5, $6, $6)"
        " ON CONFLICT (workspace_id, id) DO UPDATE SET rule = EXCLUDED.rule,"
        "   depends_on = EXCLUDED.depends_on, version = EXCLUDED.version",
        uuid.UUID(ws),
        segment_id,
        json.dumps(rule),
        sorted(rules.referenced_segments(rule)),
        version,
        clock.now(),
    )


async def define(pool: asyncpg.Pool, ws: str, segment_id: str, rule: object, version: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await add_segment(conn, ws, segment_id, rule, version)
        stored = {
            r["id"]: json.loads(r["rule"])
            for r in await conn.fetch(
                "SELECT id, rule FROM segments WHERE workspace_id = $1", uuid.UUID(ws)
            )
        }
        node = rules.parse_rule(rule, resolve=stored.get)
        if version == 1:
            await membership.on_segment_created(conn, ws, segment_id, node, version, clock.now())
        else:
            await membership.on_segment_updated(conn, ws, segment_id, node, version, clock.now())


async def test_definitions_baseline_without_events_then_definition_transitions(
    pool: asyncpg.Pool, frozen: clock.FrozenClock
) -> None:
    ws = str(uuid.uuid4())
    gold, silver, plain = (str(uuid.uuid4()) for _ in range(3))
    await apply(
        pool,
        ws,
        ("e1", ProfileSnapshot(gold, "g@example.com", vip=True, tags=("gold",), version=1)),
        ("e2", ProfileSnapshot(silver, "s@example.com", vip=False, tags=("silver",), version=1)),
        ("e3", snapshot(plain, 1)),
    )
    before = len(await published(pool, ws))

    # Created: its population is stored as a baseline, without events; one that references
    # it too.
    await define(pool, ws, "metal", {"tag": "gold"}, 1)
    await define(pool, ws, "metal_vip", {"all": [{"segment": "metal"}, {"segment": "vip"}]}, 1)
    assert await members(pool, ws, "metal") == {gold}
    assert await members(pool, ws, "metal_vip") == {gold}
    assert len(await published(pool, ws)) == before

    # The next batch sees the new definitions (the cache noticed the new versions).
    frozen.advance(SECOND)
    await apply(pool, ws, ("e4", TagsSet(plain, 2, ("gold",))))
    assert summary(await published(pool, ws), "metal") == ["ENTERED/EVENT"]

    # Updated: the segment and the one referencing it are re-evaluated over the workspace,
    # with cause DEFINITION and their versions.
    frozen.advance(SECOND)
    await define(pool, ws, "metal", {"tag": "silver"}, 2)
    events = await published(pool, ws)
    # gold and plain (tag gold) exit, silver enters.
    assert sorted(summary(events, "metal")) == [
        "ENTERED/DEFINITION",
        "ENTERED/EVENT",
        "EXITED/DEFINITION",
        "EXITED/DEFINITION",
    ]
    assert await members(pool, ws, "metal") == {silver}
    assert summary(events, "metal_vip") == ["EXITED/DEFINITION"]
    exited = next(p for _, p in events if p.segment_id == "metal_vip")
    assert (exited.contact_id, exited.segment_version) == (gold, 1)
    assert {
        p.segment_version
        for _, p in events
        if p.segment_id == "metal" and p.cause == E.MEMBERSHIP_CAUSE_DEFINITION
    } == {2}

    # Deleted: its memberships go, without events.
    count = len(events)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "DELETE FROM segments WHERE workspace_id = $1 AND id = 'metal_vip'", uuid.UUID(ws)
        )
        await membership.on_segment_deleted(conn, ws, "metal_vip")
    assert await members(pool, ws, "metal_vip") == set()
    assert len(await published(pool, ws)) == count


async def test_compiled_definitions_follow_changes_made_by_another_replica(
    pool: asyncpg.Pool,
) -> None:
    """The cache is keyed by the workspace's segment versions: a segment written by another
    process (no in-process invalidation) is seen by the next batch; unchanged, no compile."""
    ws = str(uuid.uuid4())
    defs = membership.Definitions()
    async with pool.acquire() as conn:
        before = (await defs.compiled(conn, [ws]))[ws]
        assert (await defs.compiled(conn, [ws]))[ws] is before and defs.compiles == 1
        await add_segment(conn, ws, "elsewhere", {"tag": "a"}, 1)
        after = (await defs.compiled(conn, [ws]))[ws]
        assert "elsewhere" not in before.segment_ids and "elsewhere" in after.segment_ids
        await add_segment(conn, ws, "elsewhere", {"tag": "b"}, 2)
        assert (await defs.compiled(conn, [ws]))[ws] is not after
        assert defs.compiles == 3
