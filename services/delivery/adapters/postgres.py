"""The delivery ledger in PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from services.delivery.domain.ledger import Status

SCHEMA = "delivery"


async def claim(
    conn: asyncpg.Connection,
    message_id: str,
    workspace_id: str,
    contact_id: str,
    kind: int,
    campaign_id: str,
    workflow_id: str,
    now: datetime,
) -> bool:
    """Claim the message id; True when this attempt may hand the message to SMTP.

    A row in RETRY (a transient failure before the server took the message) may be claimed
    again; any other existing row means the message was handled, or may have been: never twice.
    """
    row = await conn.fetchval(
        "INSERT INTO messages (message_id, workspace_id, contact_id, kind, campaign_id,"
        " workflow_id, status, claimed_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
        " ON CONFLICT (message_id) DO UPDATE SET status = $7, attempts = messages.attempts + 1,"
        "   updated_at = $8"
        " WHERE messages.status = $9"
        " RETURNING 1",
        uuid.UUID(message_id),
        uuid.UUID(workspace_id),
        uuid.UUID(contact_id),
        kind,
        campaign_id,
        workflow_id,
        Status.CLAIMED,
        now,
        Status.RETRY,
    )
    return row is not None


async def set_status(
    conn: asyncpg.Connection, message_id: str, status: Status, detail: str, now: datetime
) -> None:
    await conn.execute(
        "UPDATE messages SET status = $2, detail = $3, updated_at = $4 WHERE message_id = $1",
        uuid.UUID(message_id),
        status,
        detail[:1000],
        now,
    )


async def find(
    conn: asyncpg.Connection, workspace_id: str, message_id: uuid.UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT message_id, status, detail, updated_at FROM messages"
        " WHERE workspace_id = $1 AND message_id = $2",
        uuid.UUID(workspace_id),
        message_id,
    )
