"""Idempotent consumers: remember which events were handled, in the handler's transaction."""

from __future__ import annotations

import asyncpg


async def claim_event(conn: asyncpg.Connection, consumer: str, event_id: str) -> bool:
    """True the first time ``consumer`` sees ``event_id``; call inside the handler's transaction,
    so that the record and the change it guards commit or roll back together."""
    row = await conn.fetchval(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        consumer,
        event_id,
    )
    return row is not None
