"""The campaigns schema in PostgreSQL. Every query names its workspace."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from nudge.campaigns.v1 import campaigns_pb2

from services.campaigns.domain.model import AbTestSpec, NewCampaign, Status
from services.campaigns.domain.paging import Cursor

SCHEMA = "campaigns"

COLUMNS = (
    "id, workspace_id, name, segment_ids, subject, body_text, status, scheduled_at, created_at,"
    " exclude_segment_ids, tags_any, body_html, body_markdown, reply_to, purpose, cap_action,"
    " local_time, time_zone, ab_test, holdout_percent, updated_at, started_at, finished_at,"
    " status_reason, starts_at"
)

# The columns a manager sets, in NewCampaign's order (insert and update write them all).
_FIELDS = (
    "name, segment_ids, subject, body_text, exclude_segment_ids, tags_any, body_html,"
    " body_markdown, reply_to, purpose, cap_action, local_time, time_zone, ab_test,"
    " holdout_percent"
)


def _field_values(new: NewCampaign) -> list[Any]:
    return [
        new.name,
        list(new.segment_ids),
        new.subject,
        new.body_text,
        list(new.exclude_segment_ids),
        list(new.tags_any),
        new.body_html,
        new.body_markdown,
        new.reply_to,
        new.purpose,
        new.cap_action,
        new.local_time,
        new.time_zone,
        json.dumps(new.ab_test.to_json()) if new.ab_test else None,
        new.holdout_percent,
    ]


def ab_test_of(raw: object) -> dict[str, Any] | None:
    """The ab_test jsonb as a dict (asyncpg hands jsonb over as text)."""
    if raw is None:
        return None
    value = json.loads(raw) if isinstance(raw, str | bytes) else raw
    assert isinstance(value, dict)
    return value


def new_campaign_of(row: asyncpg.Record) -> NewCampaign:
    """The manager's fields of a stored campaign (UpdateCampaign applies a mask to them)."""
    ab = ab_test_of(row["ab_test"])
    return NewCampaign(
        name=row["name"],
        segment_ids=tuple(row["segment_ids"]),
        subject=row["subject"],
        body_text=row["body_text"],
        exclude_segment_ids=tuple(row["exclude_segment_ids"]),
        tags_any=tuple(row["tags_any"]),
        body_html=row["body_html"],
        body_markdown=row["body_markdown"],
        reply_to=row["reply_to"],
        purpose=row["purpose"],
        cap_action=row["cap_action"],
        local_time=row["local_time"],
        time_zone=row["time_zone"],
        ab_test=AbTestSpec(
            subjects=tuple(ab["subjects"]),
            sample_percent=int(ab["sample_percent"]),
            metric=int(ab["metric"]),
            decide_after_s=int(ab["decide_after_s"]),
        )
        if ab
        else None,
        holdout_percent=row["holdout_percent"],
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
        exclude_segment_ids=list(row["exclude_segment_ids"]),
        tags_any=list(row["tags_any"]),
        body_html=row["body_html"],
        body_markdown=row["body_markdown"],
        reply_to=row["reply_to"],
        purpose=row["purpose"],
        cap_action=row["cap_action"],
        local_time=row["local_time"],
        time_zone=row["time_zone"],
        holdout_percent=row["holdout_percent"],
        status_reason=row["status_reason"],
    )
    c.created_at.FromDatetime(row["created_at"])
    c.updated_at.FromDatetime(row["updated_at"])
    for name in ("scheduled_at", "started_at", "finished_at"):
        if row[name] is not None:
            getattr(c, name).FromDatetime(row[name])
    ab = ab_test_of(row["ab_test"])
    if ab is not None:
        c.ab_test.subjects.extend(ab["subjects"])
        c.ab_test.sample_percent = int(ab["sample_percent"])
        c.ab_test.metric = int(ab["metric"])  # type: ignore[assignment]
        c.ab_test.decide_after.FromSeconds(int(ab["decide_after_s"]))
        c.ab_test.winner = int(ab.get("winner", -1))
        if ab.get("decided_at"):
            c.ab_test.decided_at.FromDatetime(datetime.fromisoformat(ab["decided_at"]))
    return c


async def insert_campaign(
    conn: asyncpg.Connection, workspace_id: str, new: NewCampaign, now: datetime
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"INSERT INTO campaigns (id, workspace_id, status, created_at, updated_at, {_FIELDS})"
        " VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,"
        f" $17, $18::jsonb, $19) RETURNING {COLUMNS}",
        uuid.uuid4(),
        uuid.UUID(workspace_id),
        Status.DRAFT,
        now,
        *_field_values(new),
    )
    assert row is not None
    return row


async def find_campaign_for_update(
    conn: asyncpg.Connection, workspace_id: str, campaign_id: uuid.UUID
) -> asyncpg.Record | None:
    """The campaign, locked until the caller's transaction ends."""
    return await conn.fetchrow(
        f"SELECT {COLUMNS} FROM campaigns WHERE workspace_id = $1 AND id = $2 FOR UPDATE",
        uuid.UUID(workspace_id),
        campaign_id,
    )


async def update_draft(
    conn: asyncpg.Connection,
    workspace_id: str,
    campaign_id: uuid.UUID,
    new: NewCampaign,
    now: datetime,
) -> asyncpg.Record | None:
    """Writes every manager's field of a draft; None when it is no longer a draft."""
    sets = ", ".join(
        f"{name.strip()} = ${i + 4}{'::jsonb' if name.strip() == 'ab_test' else ''}"
        for i, name in enumerate(_FIELDS.split(","))
    )
    return await conn.fetchrow(
        f"UPDATE campaigns SET updated_at = $3, {sets}"
        f" WHERE workspace_id = $1 AND id = $2 AND status = {int(Status.DRAFT)}"
        f" RETURNING {COLUMNS}",
        uuid.UUID(workspace_id),
        campaign_id,
        now,
        *_field_values(new),
    )


async def set_schedule(
    conn: asyncpg.Connection,
    workspace_id: str,
    campaign_id: uuid.UUID,
    *,
    scheduled_at: datetime | None,
    starts_at: datetime | None,
    time_zone: str,
) -> None:
    """Records when a campaign being sent goes out (in the caller's transaction, with the
    transition), and the time zone it goes out in (the workspace's, frozen at send time)."""
    await conn.execute(
        "UPDATE campaigns SET scheduled_at = $3, starts_at = $4, time_zone = $5"
        " WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace_id),
        campaign_id,
        scheduled_at,
        starts_at,
        time_zone,
    )


async def due_campaigns(
    conn: asyncpg.Connection, now: datetime, limit: int
) -> list[tuple[str, uuid.UUID]]:
    """(workspace id, campaign id) of scheduled campaigns whose start has come, across
    workspaces: the scheduler's one query (then it moves each in its own workspace)."""
    rows = await conn.fetch(
        f"SELECT workspace_id, id FROM campaigns WHERE status = {int(Status.SCHEDULED)}"
        " AND starts_at <= $1 ORDER BY starts_at LIMIT $2",
        now,
        limit,
    )
    return [(str(r["workspace_id"]), r["id"]) for r in rows]


async def list_transitions(
    conn: asyncpg.Connection, workspace_id: str, campaign_id: uuid.UUID
) -> list[asyncpg.Record]:
    return await conn.fetch(  # type: ignore[no-any-return]
        "SELECT from_status, to_status, actor, note, at FROM transitions"
        " WHERE workspace_id = $1 AND campaign_id = $2 ORDER BY seq",
        uuid.UUID(workspace_id),
        campaign_id,
    )


async def get_settings(conn: asyncpg.Connection, workspace_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT frequency_cap_messages, frequency_cap_days, time_zone, default_reply_to"
        " FROM settings"
        " WHERE workspace_id = $1",
        uuid.UUID(workspace_id),
    )


async def put_settings(
    conn: asyncpg.Connection,
    workspace_id: str,
    cap_messages: int,
    cap_days: int,
    time_zone: str,
    default_reply_to: str,
    now: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO settings (workspace_id, frequency_cap_messages, frequency_cap_days,"
        " time_zone, default_reply_to, updated_at) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (workspace_id) DO UPDATE SET frequency_cap_messages = $2,"
        " frequency_cap_days = $3, time_zone = $4, default_reply_to = $5, updated_at = $6",
        uuid.UUID(workspace_id),
        cap_messages,
        cap_days,
        time_zone,
        default_reply_to,
        now,
    )


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
            # $3 typed once (smallint, as the column): PostgreSQL refuses a parameter it
            # deduces as both smallint and integer.
            "UPDATE campaigns SET status = $3::smallint, status_reason = $4, updated_at = $5,"
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
