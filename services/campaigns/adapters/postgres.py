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
