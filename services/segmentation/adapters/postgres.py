"""The segmentation schema in PostgreSQL: the contact read model and segment queries.

Every query names its workspace. Writes are upserts, so applying a change twice leaves the
same rows; the handlers still claim each event id first (redelivery changes nothing at all).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import asyncpg

from services.segmentation.adapters import segment_sql
from services.segmentation.domain.readmodel import OrderPlaced, OrderVoided, ProfileSnapshot
from services.segmentation.domain.segments import OrderStatus

SCHEMA = "segmentation"


async def upsert_profile(
    conn: asyncpg.Connection, workspace_id: str, p: ProfileSnapshot, now: datetime
) -> None:
    """Apply a contact snapshot, unless a newer one was applied already. A signup time the
    snapshot lacks is kept (a SignedUp shop event may have set it)."""
    await conn.execute(
        "INSERT INTO profiles (workspace_id, contact_id, email, vip, tags, attributes,"
        " signed_up_at, contact_updated_at, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $9)"
        " ON CONFLICT (workspace_id, contact_id) DO UPDATE SET"
        "   email = EXCLUDED.email, vip = EXCLUDED.vip, tags = EXCLUDED.tags,"
        "   attributes = EXCLUDED.attributes,"
        "   signed_up_at = coalesce(EXCLUDED.signed_up_at, profiles.signed_up_at),"
        "   contact_updated_at = EXCLUDED.contact_updated_at, updated_at = EXCLUDED.updated_at"
        " WHERE profiles.contact_updated_at IS NULL"
        "   OR EXCLUDED.contact_updated_at IS NULL"
        "   OR profiles.contact_updated_at <= EXCLUDED.contact_updated_at",
        uuid.UUID(workspace_id),
        uuid.UUID(p.contact_id),
        p.email,
        p.vip,
        sorted(set(p.tags)),
        json.dumps(p.attributes),
        p.signed_up_at,
        p.updated_at,
        now,
    )


async def ensure_profile(
    conn: asyncpg.Connection, workspace_id: str, contact_id: str, now: datetime
) -> None:
    """A row for a contact first seen through a shop event; its snapshot fills it later."""
    await conn.execute(
        "INSERT INTO profiles (workspace_id, contact_id, created_at, updated_at)"
        " VALUES ($1, $2, $3, $3) ON CONFLICT DO NOTHING",
        uuid.UUID(workspace_id),
        uuid.UUID(contact_id),
        now,
    )


async def record_signup(
    conn: asyncpg.Connection, workspace_id: str, contact_id: str, at: datetime, now: datetime
) -> None:
    """Set the signup time if the profile has none (the contact's own field wins)."""
    await ensure_profile(conn, workspace_id, contact_id, now)
    await conn.execute(
        "UPDATE profiles SET signed_up_at = $3, updated_at = $4"
        " WHERE workspace_id = $1 AND contact_id = $2 AND signed_up_at IS NULL",
        uuid.UUID(workspace_id),
        uuid.UUID(contact_id),
        at,
        now,
    )


async def record_order(
    conn: asyncpg.Connection, workspace_id: str, order: OrderPlaced, now: datetime
) -> None:
    """Store a placed order as completed; a cancellation that arrived first keeps its status."""
    await ensure_profile(conn, workspace_id, order.contact_id, now)
    await conn.execute(
        "INSERT INTO orders (workspace_id, order_id, contact_id, placed_at, total_minor,"
        " currency, status, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (workspace_id, order_id) DO UPDATE SET"
        "   contact_id = EXCLUDED.contact_id, placed_at = EXCLUDED.placed_at,"
        "   total_minor = EXCLUDED.total_minor, currency = EXCLUDED.currency,"
        "   updated_at = EXCLUDED.updated_at",
        uuid.UUID(workspace_id),
        order.order_id,
        uuid.UUID(order.contact_id),
        order.placed_at,
        order.total_minor,
        order.currency,
        OrderStatus.COMPLETED.value,
        now,
    )


async def void_order(
    conn: asyncpg.Connection, workspace_id: str, order: OrderVoided, now: datetime
) -> None:
    """Mark an order cancelled or refunded, creating it when its placement is still to come."""
    await ensure_profile(conn, workspace_id, order.contact_id, now)
    await conn.execute(
        "INSERT INTO orders (workspace_id, order_id, contact_id, status, updated_at)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (workspace_id, order_id) DO UPDATE SET"
        "   status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
        uuid.UUID(workspace_id),
        order.order_id,
        uuid.UUID(order.contact_id),
        order.status.value,
        now,
    )


async def count_members(
    conn: asyncpg.Connection, workspace_id: str, segment_id: str, as_of: datetime
) -> int:
    count = await conn.fetchval(segment_sql.count_query(segment_id), uuid.UUID(workspace_id), as_of)
    return int(count)
