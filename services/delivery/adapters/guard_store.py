"""The anti-spam guard's tables in PostgreSQL (migrations/0030_guard.sql).

Every function takes the caller's connection, so that counts, their idempotency claims and
a suspension they cause commit in one transaction (services/delivery/guard.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.delivery.domain.guard import Assessment, HourCount, Tally


@dataclass(frozen=True)
class Suspension:
    workspace_id: str
    rule: str
    reason: str
    suspended_at: datetime


async def claim(conn: asyncpg.Connection, consumer: str, keys: Sequence[str]) -> set[str]:
    """The keys never claimed before (in ``processed_events``, like every idempotent
    consumer's claims, and pruned with them)."""
    rows = await conn.fetch(
        "INSERT INTO processed_events (consumer, event_id)"
        " SELECT $1, k FROM unnest($2::text[]) AS k ORDER BY k"
        " ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        sorted(set(keys)),
    )
    return {r["event_id"] for r in rows}


async def add_counts(conn: asyncpg.Connection, tallies: Sequence[Tally]) -> None:
    """Add ``tallies`` to their workspace's hour, in the workspace's current generation."""
    summed: dict[tuple[str, datetime], list[int]] = {}
    for t in tallies:
        row = summed.setdefault((t.workspace_id, t.hour), [0, 0, 0])
        row[0] += t.sent
        row[1] += t.hard_bounces
        row[2] += t.complaints
    # Sorted, so that two writers lock rows in the same order and cannot deadlock.
    keys = sorted(summed)
    await conn.execute(
        "INSERT INTO guard_counts (workspace_id, hour, generation, sent, hard_bounces, complaints)"
        " SELECT t.w, t.h, coalesce(g.generation, 0), t.s, t.b, t.c"
        " FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[], $4::bigint[], $5::bigint[])"
        "   WITH ORDINALITY AS t(w, h, s, b, c, n)"
        " LEFT JOIN guard_workspaces g ON g.workspace_id = t.w"
        " ORDER BY t.n"
        " ON CONFLICT (workspace_id, hour, generation) DO UPDATE SET"
        "   sent = guard_counts.sent + EXCLUDED.sent,"
        "   hard_bounces = guard_counts.hard_bounces + EXCLUDED.hard_bounces,"
        "   complaints = guard_counts.complaints + EXCLUDED.complaints",
        [uuid.UUID(w) for w, _ in keys],
        [h for _, h in keys],
        [summed[k][0] for k in keys],
        [summed[k][1] for k in keys],
        [summed[k][2] for k in keys],
    )


async def hour_counts(
    conn: asyncpg.Connection, workspace_id: str, since: datetime
) -> list[HourCount]:
    """The workspace's hours from ``since`` on, each generation apart (``current``: the
    workspace's current one)."""
    rows = await conn.fetch(
        "SELECT c.hour, c.sent, c.hard_bounces, c.complaints,"
        "   c.generation = coalesce(g.generation, 0) AS current"
        " FROM guard_counts c LEFT JOIN guard_workspaces g ON g.workspace_id = c.workspace_id"
        " WHERE c.workspace_id = $1 AND c.hour >= $2",
        uuid.UUID(workspace_id),
        since,
    )
    return [
        HourCount(r["hour"], r["sent"], r["hard_bounces"], r["complaints"], r["current"])
        for r in rows
    ]


async def active_suspension(
    conn: asyncpg.Connection | asyncpg.Pool, workspace_id: str
) -> Suspension | None:
    row = await conn.fetchrow(
        "SELECT rule, reason, suspended_at FROM guard_suspensions"
        " WHERE workspace_id = $1 AND lifted_at IS NULL",
        uuid.UUID(workspace_id),
    )
    if row is None:
        return None
    return Suspension(workspace_id, row["rule"], row["reason"], row["suspended_at"])


async def suspend(
    conn: asyncpg.Connection, workspace_id: str, assessment: Assessment, now: datetime
) -> Suspension | None:
    """Record the suspension ``assessment`` calls for; None when one is active already."""
    figures = assessment.figures
    row = await conn.fetchrow(
        "INSERT INTO guard_suspensions (workspace_id, rule, reason, figures, suspended_at)"
        " VALUES ($1, $2, $3, $4::jsonb, $5)"
        " ON CONFLICT (workspace_id) WHERE lifted_at IS NULL DO NOTHING"
        " RETURNING suspended_at",
        uuid.UUID(workspace_id),
        assessment.rule,
        assessment.reason,
        json.dumps(
            {
                "window_sent": figures.sent,
                "window_hard_bounces": figures.hard_bounces,
                "window_complaints": figures.complaints,
                "complaint_rate": figures.complaint_rate,
                "hard_bounce_rate": figures.hard_bounce_rate,
                "last_day_sent": assessment.last_day_sent,
                "median_daily_sent": assessment.median_daily_sent,
                "active_days": assessment.active_days,
            }
        ),
        now,
    )
    if row is None:
        return None
    return Suspension(workspace_id, str(assessment.rule), assessment.reason, row["suspended_at"])


async def lift(conn: asyncpg.Connection, workspace_id: str, note: str, now: datetime) -> bool:
    """Lift the active suspension and start a new generation; False when none is active.
    Locks the suspension row, so two operators lifting at once lift it once."""
    lifted = await conn.fetchval(
        "UPDATE guard_suspensions SET lifted_at = $2, lift_note = $3"
        " WHERE workspace_id = $1 AND lifted_at IS NULL RETURNING 1",
        uuid.UUID(workspace_id),
        now,
        note,
    )
    if lifted is None:
        return False
    await conn.execute(
        "INSERT INTO guard_workspaces (workspace_id, generation) VALUES ($1, 1)"
        " ON CONFLICT (workspace_id) DO UPDATE SET generation = guard_workspaces.generation + 1",
        uuid.UUID(workspace_id),
    )
    return True
