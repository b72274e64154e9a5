"""Claims and outcomes written in groups (services/delivery/writes.py) on a real PostgreSQL:
every message claimed exactly once under many lanes, one event per message, a row that
PostgreSQL refuses loses nothing else, an outcome group outlives an outage."""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from nudge.delivery.v1 import delivery_pb2, events_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import clock
from services.common.db import create_pool, migrate
from services.common.events import deterministic_id, new_envelope
from services.delivery.adapters import postgres as db
from services.delivery.bootstrap import MIGRATIONS
from services.delivery.domain.ledger import Status
from services.delivery.writes import ClaimItem, OutcomeItem, Writes
from tests.support import eventually

CAMPAIGN = delivery_pb2.MESSAGE_KIND_CAMPAIGN
TRANSACTIONAL = delivery_pb2.MESSAGE_KIND_TRANSACTIONAL


@pytest.fixture
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    """A schema of its own: no outbox relay drains it, so the events can be counted."""
    schema = f"delivery_group_{uuid.uuid4().hex[:8]}"
    await migrate(os.environ["DATABASE_URL"], schema, MIGRATIONS)
    pool = await create_pool(os.environ["DATABASE_URL"], schema, max_size=4)
    yield pool
    await pool.close()


def claim_item(
    message_id: str, ws: str, *, kind: int = CAMPAIGN, campaign_id: str = "c-1"
) -> ClaimItem:
    contact_id = str(uuid.uuid4())
    queued = events_pb2.MessageQueued(message_id=message_id, contact_id=contact_id, kind=kind)  # type: ignore[arg-type]
    request = delivery_pb2.DeliveryRequested(message_id=message_id, contact_id=contact_id)
    return ClaimItem(
        message_id,
        ws,
        contact_id,
        kind,
        campaign_id,
        "",
        queued=new_envelope(ws, queued, event_id=deterministic_id("delivery-queued", message_id)),
        pending=new_envelope(ws, request).SerializeToString() if kind == TRANSACTIONAL else None,
        trace={},
    )


def sent_item(message_id: str, ws: str, detail: str = "250 OK") -> OutcomeItem:
    contact_id = str(uuid.uuid4())
    event = events_pb2.MessageSent(message_id=message_id, contact_id=contact_id)
    return OutcomeItem(
        message_id,
        Status.SENT,
        detail,
        True,
        contact_id,
        new_envelope(ws, event, event_id=deterministic_id("delivery-outcome", message_id)),
        {},
    )


async def events(pool: asyncpg.Pool, payload: str) -> list[str]:
    """The message ids of the queued outbox events of one payload kind."""
    found = []
    for row in await pool.fetch("SELECT value FROM outbox ORDER BY id"):
        env = Envelope.FromString(row["value"])
        if env.WhichOneof("payload") == payload:
            found.append(getattr(env, payload).message_id)
    return found


async def statuses(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT message_id, status FROM messages")
    return {str(r["message_id"]): r["status"] for r in rows}


async def test_many_lanes_claim_each_message_exactly_once(pool: asyncpg.Pool) -> None:
    ws = str(uuid.uuid4())
    writes = Writes(pool, max_batch=50, max_in_flight=3)
    fresh = [str(uuid.uuid4()) for _ in range(300)]
    # Given back by a pause (QUEUED): claimed again; already SENT: never again.
    queued, sent = [str(uuid.uuid4()) for _ in range(20)], [str(uuid.uuid4()) for _ in range(20)]
    for ids, status in ((queued, Status.QUEUED), (sent, Status.SENT)):
        for m in ids:
            await db.claim(pool, m, ws, str(uuid.uuid4()), CAMPAIGN, "c-1", "", clock.now())  # type: ignore[arg-type]
            await pool.execute(
                "UPDATE messages SET status = $2 WHERE message_id = $1", uuid.UUID(m), status
            )
    # Every message asked for by two lanes (a redelivered record), transactional ones too.
    asks = [claim_item(m, ws, kind=random.choice((CAMPAIGN, TRANSACTIONAL))) for m in fresh]
    asks += [claim_item(m, ws) for m in fresh + queued + sent]
    random.shuffle(asks)

    answers = await asyncio.gather(*(writes.claims.submit(a) for a in asks))

    taken: dict[str, list[db.Claim]] = {}
    winner: dict[str, ClaimItem] = {}  # the ask that took the claim
    for ask, answer in zip(asks, answers, strict=True):
        if answer is not None:
            taken.setdefault(ask.message_id, []).append(answer)
            winner[ask.message_id] = ask
    assert {m: len(c) for m, c in taken.items()} == {m: 1 for m in fresh + queued}
    assert all(taken[m][0].new and taken[m][0].attempts == 1 for m in fresh)
    assert all(not taken[m][0].new and taken[m][0].attempts == 2 for m in queued)
    now = await statuses(pool)
    assert all(now[m] == Status.CLAIMED for m in fresh + queued)
    assert all(now[m] == Status.SENT for m in sent)
    # MessageQueued once per new message, none for a reclaim; a kept request per
    # transactional message that was claimed.
    assert sorted(await events(pool, "message_queued")) == sorted(fresh)
    kept = {str(r["message_id"]) for r in await pool.fetch("SELECT message_id FROM pending_sends")}
    assert kept == {m for m in fresh if winner[m].kind == TRANSACTIONAL}
    assert writes.claims.groups < len(asks) / 10  # written in groups, not one by one


async def test_a_claim_postgres_refuses_does_not_lose_its_group(pool: asyncpg.Pool) -> None:
    ws = str(uuid.uuid4())
    writes = Writes(pool, max_batch=100, max_in_flight=1)
    good = [str(uuid.uuid4()) for _ in range(10)]
    bad = str(uuid.uuid4())
    asks = [claim_item(m, ws) for m in good[:5]]
    asks += [claim_item(bad, ws, campaign_id="nul\x00byte")]  # text refuses a NUL byte
    asks += [claim_item(m, ws) for m in good[5:]]

    answers = await asyncio.gather(*(writes.claims.submit(a) for a in asks), return_exceptions=True)

    assert isinstance(answers[5], asyncpg.PostgresError)
    assert all(isinstance(a, db.Claim) and a.new for i, a in enumerate(answers) if i != 5)
    assert sorted(await statuses(pool)) == sorted(good)
    assert sorted(await events(pool, "message_queued")) == sorted(good)  # no half-write


async def test_an_outcome_postgres_refuses_does_not_lose_its_group(pool: asyncpg.Pool) -> None:
    ws = str(uuid.uuid4())
    writes = Writes(pool, max_batch=100, max_in_flight=1)
    ids = [str(uuid.uuid4()) for _ in range(10)]
    await asyncio.gather(*(writes.claims.submit(claim_item(m, ws)) for m in ids))
    items = [sent_item(m, ws, "250 OK" if i != 3 else "250 \x00") for i, m in enumerate(ids)]

    answers = await asyncio.gather(
        *(writes.outcomes.submit(i) for i in items), return_exceptions=True
    )

    assert isinstance(answers[3], asyncpg.PostgresError)
    assert answers[:3] + answers[4:] == [None] * 9
    now = await statuses(pool)
    assert now[ids[3]] == Status.CLAIMED  # left for the sweeper to report UNKNOWN
    assert all(now[m] == Status.SENT for i, m in enumerate(ids) if i != 3)
    assert sorted(await events(pool, "message_sent")) == sorted(ids[:3] + ids[4:])


async def test_an_outcome_group_is_written_again_after_an_outage(pool: asyncpg.Pool) -> None:
    """The writer's connection is killed while the group waits (PostgreSQL restarting, as
    the writer sees it): the same group is written again, nothing lost, nothing twice."""
    ws = str(uuid.uuid4())
    writes = Writes(pool, max_batch=100, max_in_flight=1)
    ids = [str(uuid.uuid4()) for _ in range(20)]
    await asyncio.gather(*(writes.claims.submit(claim_item(m, ws)) for m in ids))
    schema = await pool.fetchval("SELECT current_schema()")
    admin = await asyncpg.connect(os.environ["DATABASE_URL"])
    lock = admin.transaction()
    try:
        await lock.start()
        await admin.execute(f"LOCK TABLE {schema}.messages IN ACCESS EXCLUSIVE MODE")
        outcomes = asyncio.gather(*(writes.outcomes.submit(sent_item(m, ws)) for m in ids))

        async def killed_a_waiting_writer() -> bool:
            return bool(
                await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE '%UPDATE messages%'"
                    " AND pid <> pg_backend_pid()"
                )
            )

        await eventually(killed_a_waiting_writer, timeout=20)
        await eventually(lambda: writes.outcome_retries >= 1, timeout=20)
        await lock.rollback()
        await asyncio.wait_for(outcomes, timeout=30)
    finally:
        await admin.close()

    assert writes.outcomes.groups == 1  # one group, written again as a whole
    assert all(s == Status.SENT for s in (await statuses(pool)).values())
    assert sorted(await events(pool, "message_sent")) == sorted(ids)
