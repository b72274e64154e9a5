"""Each built-in rule is a document run two ways: compiled to SQL (what CountSegment runs)
and by the Python evaluator (explain, the unit tests). Over edge-case contacts, at several
evaluation times and in a session time zone other than UTC, both must pick the same
contacts."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.common.db import create_pool, migrate
from services.segmentation.adapters import postgres as db
from services.segmentation.adapters.segment_sql import members_query
from services.segmentation.bootstrap import MIGRATIONS
from services.segmentation.domain.builtins import BUILT_IN, BY_ID
from services.segmentation.domain.evaluate import Facts, OrderFact
from services.segmentation.domain.readmodel import (
    OrderPlaced,
    OrderVoided,
    ProfileSnapshot,
    ReadModelChange,
)
from services.segmentation.domain.segments import OrderStatus, days_before, months_before

US = timedelta(microseconds=1)
HOUR = timedelta(hours=1)
EVALUATION_TIMES = [
    datetime(2026, 5, 31, 12, 0, tzinfo=UTC),  # three months back is 28 February
    datetime(2024, 5, 31, 23, 59, 59, 999999, tzinfo=UTC),  # ... 29 February, leap year
    datetime(2024, 2, 29, 6, 0, tzinfo=UTC),
    datetime(2026, 3, 10, 12, 0, tzinfo=UTC),  # 30 days back crosses a DST change in New York
    datetime(2025, 11, 2, 6, 30, tzinfo=UTC),  # on the day New York leaves DST
]


@dataclass(frozen=True)
class Order:
    placed_at: datetime | None  # None when a cancellation arrived before the placement
    status: OrderStatus


@dataclass
class Contact:
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    vip: bool = False
    signed_up_at: datetime | None = None
    orders: list[tuple[str, Order]] = field(default_factory=list)


def interesting_times(now: datetime) -> list[datetime]:
    """Every boundary of the rules, a microsecond either side, and some plain times."""
    edges = [months_before(now, 3), *(days_before(now, d) for d in (30, 60, 90, 365))]
    around = [edge + e for edge in edges for e in (-US, timedelta(), US)]
    return [*around, now, now + US, now - HOUR, now - timedelta(days=800)]


def edge_case_contacts(now: datetime) -> Iterator[Contact]:
    times = interesting_times(now)
    serial = itertools.count()

    def order(
        at: datetime | None, status: OrderStatus = OrderStatus.COMPLETED
    ) -> tuple[str, Order]:
        return f"o-{next(serial)}", Order(at, status)

    for i, signed_up_at in enumerate([*times, None]):
        yield Contact(vip=i % 2 == 0, signed_up_at=signed_up_at)
    for n, last in itertools.product(range(1, 6), times):
        # n orders ending at a boundary, the earlier ones a day apart before it
        orders = [order(last - k * timedelta(days=1)) for k in range(n)]
        if n % 2:
            orders.append(order(now - 2 * HOUR, OrderStatus.CANCELLED))
        else:
            orders.append(order(now - 3 * HOUR, OrderStatus.REFUNDED))
        yield Contact(signed_up_at=last - HOUR, orders=orders)
        # n orders starting at a boundary, the later ones an hour apart after it
        yield Contact(orders=[order(last + k * HOUR) for k in range(n)], vip=n == 3)
    # a cancellation that arrived before its order was placed
    yield Contact(orders=[order(None, OrderStatus.CANCELLED), order(now - HOUR)])


async def store(conn: asyncpg.Connection, workspace_id: str, contacts: list[Contact]) -> None:
    """Every contact's snapshot and orders, applied as the consumer would: one batch."""
    now = datetime.now(UTC)
    changes: list[ReadModelChange] = []
    for c in contacts:
        changes.append(
            ProfileSnapshot(
                contact_id=c.id,
                email=f"{c.id}@example.com",
                vip=c.vip,
                signed_up_at=c.signed_up_at,
                version=1,
            )
        )
        for order_id, o in c.orders:
            if o.placed_at is not None:
                changes.append(OrderPlaced(c.id, order_id, o.placed_at, 100, "EUR"))
            if o.status != OrderStatus.COMPLETED:
                changes.append(OrderVoided(c.id, order_id, o.status))
    items = [db.Pending(workspace_id, str(uuid.uuid4()), change) for change in changes]
    assert all(await db.apply(conn, items, now))
    await refresh_aggregates(conn, workspace_id)


async def refresh_aggregates(conn: asyncpg.Connection, workspace_id: str) -> None:
    """The profile's order aggregates (the compiler's fast path reads them) recomputed from
    the orders, as the read model keeps them (migration 0020)."""
    await conn.execute(
        """
        UPDATE profiles p SET
            orders_count = coalesce(a.n, 0), first_order_at = a.first, last_order_at = a.last,
            spent = coalesce(a.spent, '{}'::jsonb)
        FROM profiles q
        LEFT JOIN LATERAL (
            SELECT count(*)::int AS n, min(placed_at) AS first, max(placed_at) AS last,
                   (SELECT jsonb_object_agg(currency, jsonb_build_object(
                        'total_minor', total, 'orders', cnt))
                    FROM (SELECT currency, sum(total_minor) AS total, count(total_minor) AS cnt
                          FROM orders o2
                          WHERE o2.workspace_id = q.workspace_id AND o2.contact_id = q.contact_id
                            AND o2.status = 'completed' AND o2.placed_at IS NOT NULL
                            AND o2.currency IS NOT NULL
                          GROUP BY currency) c) AS spent
            FROM orders o
            WHERE o.workspace_id = q.workspace_id AND o.contact_id = q.contact_id
              AND o.status = 'completed' AND o.placed_at IS NOT NULL
        ) a ON true
        WHERE p.workspace_id = $1 AND q.workspace_id = p.workspace_id
          AND q.contact_id = p.contact_id
        """,
        uuid.UUID(workspace_id),
    )


def facts_of(c: Contact) -> Facts:
    return Facts(
        contact_id=c.id,
        vip=c.vip,
        signed_up_at=c.signed_up_at,
        orders=tuple(
            OrderFact(order_id, o.placed_at, o.status.value, 100, "EUR") for order_id, o in c.orders
        ),
    )


async def sql_members(
    conn: asyncpg.Connection, workspace_id: str, segment_id: str, now: datetime
) -> set[str]:
    """The contacts the SQL rule picks: the service only counts them, the test names them."""
    query, params = members_query(BY_ID[segment_id].node)
    rows = await conn.fetch(query, uuid.UUID(workspace_id), now, *params)
    return {str(r["contact_id"]) for r in rows}


@pytest.fixture(scope="module")
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    await migrate(os.environ["DATABASE_URL"], db.SCHEMA, MIGRATIONS)
    pool = await create_pool(os.environ["DATABASE_URL"], db.SCHEMA)
    yield pool
    await pool.close()


@pytest.mark.parametrize("now", EVALUATION_TIMES, ids=lambda t: t.isoformat())
@pytest.mark.parametrize("session_zone", ["UTC", "America/New_York"])
async def test_sql_and_python_rules_pick_the_same_contacts(
    pool: asyncpg.Pool, now: datetime, session_zone: str
) -> None:
    workspace_id = str(uuid.uuid4())
    contacts = list(edge_case_contacts(now))
    facts = {c.id: facts_of(c) for c in contacts}
    async with pool.acquire() as conn:
        await store(conn, workspace_id, contacts)
        await conn.execute(f"SET TIME ZONE '{session_zone}'")
        try:
            for segment in BUILT_IN:
                expected = {cid for cid, f in facts.items() if segment.contains(f, now)}
                # The cases are worth something only if they fall on both sides of each rule.
                assert 0 < len(expected) < len(contacts), segment.id
                found = await sql_members(conn, workspace_id, segment.id, now)
                assert found == expected, (segment.id, found ^ expected)
                assert await db.count_members(conn, workspace_id, segment.id, now) == len(expected)
        finally:
            await conn.execute("RESET TIME ZONE")
