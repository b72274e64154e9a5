"""Read-model rows written straight into segmentation's tables, for the query tests.

The queries read ``profiles`` and ``orders``; how events become those rows is tested by the
read-model tests. Writing the rows here lets a query test state its contacts exactly (an
order one second either side of a bound) without waiting on Kafka. Contact ids are random
UUIDs no event ever names, so the read-model consumer never touches these rows.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

DAY = timedelta(days=1)
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class Order:
    placed_at: datetime
    total_minor: int = 1000
    currency: str = "EUR"
    status: str = "completed"


@dataclass
class Person:
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    vip: bool = False
    tags: list[str] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    contact_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        if not self.email:
            self.email = f"{self.contact_id[:8]}@example.com"


async def connect() -> asyncpg.Connection:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    await conn.execute("SET search_path TO segmentation")
    return conn


async def seed(workspace_id: str, *people: Person) -> list[Person]:
    """Insert ``people`` as profiles (aggregates as the read model keeps them: every
    completed order) and their orders."""
    conn = await connect()
    try:
        async with conn.transaction():
            for p in people:
                done = sorted(o.placed_at for o in p.orders if o.status == "completed")
                spent: dict[str, dict[str, int]] = {}
                for o in p.orders:
                    if o.status == "completed":
                        s = spent.setdefault(o.currency, {"total_minor": 0, "orders": 0})
                        s["total_minor"] += o.total_minor
                        s["orders"] += 1
                await conn.execute(
                    "INSERT INTO profiles (workspace_id, contact_id, email, first_name,"
                    " last_name, vip, tags, orders_count, first_order_at, last_order_at, spent,"
                    " version, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, 1, $12, $12)",
                    uuid.UUID(workspace_id),
                    uuid.UUID(p.contact_id),
                    p.email,
                    p.first_name,
                    p.last_name,
                    p.vip,
                    sorted(p.tags),
                    len(done),
                    done[0] if done else None,
                    done[-1] if done else None,
                    json.dumps(spent),
                    NOW,
                )
                for i, o in enumerate(p.orders):
                    await conn.execute(
                        "INSERT INTO orders (workspace_id, order_id, contact_id, placed_at,"
                        " total_minor, currency, status, updated_at)"
                        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        uuid.UUID(workspace_id),
                        f"{p.contact_id}-{i}",
                        uuid.UUID(p.contact_id),
                        o.placed_at,
                        o.total_minor,
                        o.currency,
                        o.status,
                        NOW,
                    )
    finally:
        await conn.close()
    return list(people)


async def bulk_seed(workspace_id: str, n: int, *, vip_every: int = 1) -> None:
    """``n`` bare profiles (every ``vip_every``-th a VIP), in one statement: for volume."""
    conn = await connect()
    try:
        await conn.execute(
            "INSERT INTO profiles (workspace_id, contact_id, email, vip, created_at, updated_at)"
            " SELECT $1, gen_random_uuid(), 'bulk' || i || '@example.com', i % $3 = 0, $4, $4"
            " FROM generate_series(1, $2) AS i",
            uuid.UUID(workspace_id),
            n,
            vip_every,
            NOW,
        )
    finally:
        await conn.close()
