"""The campaigns schema in PostgreSQL. Every query names its workspace."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
from nudge.campaigns.v1 import campaigns_pb2

from services.campaigns.domain.model import NewCampaign, Status
from services.campaigns.domain.paging import Cursor

SCHEMA = "campaigns"

COLUMNS = (
    "id, workspace_id, name, segment_ids, subject, body_text, status, scheduled_at, created_at"
)


def campaign_to_proto(row: asyncpg.Record) -> campaigns_pb2.Campaign:
    c = campaigns_pb2.Campaign(
        id=str(row["id"]),
        workspace_id=str(row["workspace_id"]),
        name=row["name"],
        segment_ids=list(row["segment_ids"]),
        subject=row["subject"],
        body_text=row["body_text"],
        status=row["status"],
    )
    c.created_at.FromDatetime(row["created_at"])
    if row["scheduled_at"] is not None:
        c.scheduled_at.FromDatetime(row["scheduled_at"])
    return c


async def insert_campaign(
    conn: asyncpg.Connection, workspace_id: str, new: NewCampaign, now: datetime
) -> asyncpg.Record:
    row = await conn.fetchrow(
        "INSERT INTO campaigns (id, workspace_id, name, segment_ids, subject, body_text,"
        " status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
        f" RETURNING {COLUMNS}",
        uuid.uuid4(),
        uuid.UUID(workspace_id),
        new.name,
        list(new.segment_ids),
        new.subject,
        new.body_text,
        Status.DRAFT,
        now,
    )
    assert row is not None
    return row


async def find_campaign(
    conn: asyncpg.Connection, workspace_id: str, campaign_id: uuid.UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {COLUMNS} FROM campaigns WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace_id),
        campaign_id,
    )


async def list_campaigns(
    conn: asyncpg.Connection, workspace_id: str, after: Cursor | None, limit: int
) -> list[asyncpg.Record]:
    """Up to ``limit`` campaigns, newest first, after ``after`` when given."""
    if after is None:
        return await conn.fetch(  # type: ignore[no-any-return]
            f"SELECT {COLUMNS} FROM campaigns WHERE workspace_id = $1"
            " ORDER BY created_at DESC, id DESC LIMIT $2",
            uuid.UUID(workspace_id),
            limit,
        )
    return await conn.fetch(  # type: ignore[no-any-return]
        f"SELECT {COLUMNS} FROM campaigns WHERE workspace_id = $1"
        " AND (created_at, id) < ($2, $3)"
        " ORDER BY created_at DESC, id DESC LIMIT $4",
        uuid.UUID(workspace_id),
        after.created_at,
        after.id,
        limit,
    )


async def transition(
    conn: asyncpg.Connection,
    workspace_id: str,
    campaign_id: uuid.UUID,
    allowed_from: tuple[Status, ...],
    to: Status,
    actor: str,
    note: str,
    now: datetime,
    *,
    status_reason: str = "",
) -> Status | None:
    """Moves the campaign to ``to`` if its status is one of ``allowed_from`` (compare and set,
    so two callers racing cannot both move it) and records who did it; the status it left, or
    None when it was not in ``allowed_from`` (nothing written). Run it inside the caller's
    transaction when other writes must commit with the move."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT status FROM campaigns WHERE workspace_id = $1 AND id = $2 FOR UPDATE",
            uuid.UUID(workspace_id),
            campaign_id,
        )
        if row is None or row["status"] not in allowed_from:
            return None
        before = Status(row["status"])
        await conn.execute(
            "UPDATE campaigns SET status = $3, status_reason = $4, updated_at = $5,"
            " started_at = CASE WHEN $3::smallint = 3 THEN coalesce(started_at, $5)"
            " ELSE started_at END,"
            " finished_at = CASE WHEN $3::smallint IN (4, 5) THEN $5 ELSE finished_at END"
            " WHERE workspace_id = $1 AND id = $2",
            uuid.UUID(workspace_id),
            campaign_id,
            int(to),
            status_reason,
            now,
        )
        await conn.execute(
            "INSERT INTO transitions (workspace_id, campaign_id, from_status, to_status, actor,"
            " note, at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            uuid.UUID(workspace_id),
            campaign_id,
            int(before),
            int(to),
            actor,
            note,
            now,
        )
        return before
