"""SQL of the workflow API: workflows, their published versions, and the read side of runs.

The engine (RUNTIME's modules) writes runs and run_steps; this module only reads them,
except for the two writes a manager makes on a run: a test run's row with its first timer,
and a cancellation. Every function takes the workspace id and puts it in its WHERE clause:
another workspace's rows are never read or changed, whatever id a caller sends.

Page tokens are opaque to callers: ``v1.<microseconds since the epoch>.<id hex>`` in URL-safe
base64, the position after the last row of the previous page (keyset, not offset, so a page
stays right while rows are added). Workflows page on (created_at, id), runs on
(started_at, id), newest first.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.triggers.runtime import live_changes

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# A page token longer than this is not one this service made.
MAX_PAGE_TOKEN = 200

_WORKFLOW_COLUMNS = """
    w.id, w.name, w.status, w.draft, w.draft_revision, w.published_version, w.trigger_event,
    w.template_id, w.created_at, w.updated_at, w.published_at,
    (v.definition IS NULL OR v.definition IS DISTINCT FROM w.draft) AS draft_changed
"""
_WORKFLOW_FROM = """
    FROM workflows w
    LEFT JOIN workflow_versions v ON v.workspace_id = w.workspace_id
        AND v.workflow_id = w.id AND v.version = w.published_version
"""
_RUN_COLUMNS = """
    id, workflow_id, version, contact_id, entry_key, state, position, started_at,
    next_wake_at, ended_at, end_reason, test_recipient
"""


@dataclass(frozen=True)
class Cursor:
    at: datetime
    id: uuid.UUID


def encode_token(cursor: Cursor) -> str:
    micros = (cursor.at - _EPOCH) // _MICROSECOND
    raw = f"v1.{micros}.{cursor.id.hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> Cursor | None:
    """The cursor in ``token``, or None when it is not a token this service made."""
    if len(token) > MAX_PAGE_TOKEN:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        version, micros, id_hex = raw.split(".")
        if version != "v1" or not micros.lstrip("-").isdigit():
            return None
        return Cursor(_EPOCH + int(micros) * _MICROSECOND, uuid.UUID(hex=id_hex))
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        return None


def _jsonb(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def document(value: Any) -> dict[str, Any]:
    """A jsonb column as a dict (asyncpg hands jsonb over as text unless a codec is set)."""
    loaded = json.loads(value) if isinstance(value, str) else value
    assert isinstance(loaded, dict)
    return loaded


# --- workflows ------------------------------------------------------------------------------


async def insert_workflow(
    conn: asyncpg.Connection,
    workspace_id: str,
    *,
    name: str,
    draft: dict[str, Any],
    trigger_event: str,
    template_id: str,
    now: datetime,
) -> asyncpg.Record:
    workflow_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO workflows (workspace_id, id, name, draft, trigger_event, template_id,"
        " created_at, updated_at) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $7)",
        uuid.UUID(workspace_id),
        workflow_id,
        name,
        _jsonb(draft),
        trigger_event,
        template_id,
        now,
    )
    row = await get_workflow(conn, workspace_id, workflow_id)
    assert row is not None
    return row


async def get_workflow(
    conn: asyncpg.Connection, workspace_id: str, workflow_id: uuid.UUID, *, for_update: bool = False
) -> asyncpg.Record | None:
    lock = " FOR UPDATE OF w" if for_update else ""
    return await conn.fetchrow(
        f"SELECT {_WORKFLOW_COLUMNS} {_WORKFLOW_FROM}"
        f" WHERE w.workspace_id = $1 AND w.id = $2{lock}",
        uuid.UUID(workspace_id),
        workflow_id,
    )


async def list_workflows(
    conn: asyncpg.Connection,
    workspace_id: str,
    *,
    status: str | None,
    after: Cursor | None,
    limit: int,
) -> list[asyncpg.Record]:
    """One page, newest first; ``limit + 1`` rows are read so the caller knows if more follow."""
    return list(
        await conn.fetch(
            f"SELECT {_WORKFLOW_COLUMNS} {_WORKFLOW_FROM}"
            " WHERE w.workspace_id = $1 AND ($2::text IS NULL OR w.status = $2)"
            " AND ($3::timestamptz IS NULL OR (w.created_at, w.id) < ($3, $4))"
            " ORDER BY w.created_at DESC, w.id DESC LIMIT $5",
            uuid.UUID(workspace_id),
            status,
            after.at if after else None,
            after.id if after else None,
            limit + 1,
        )
    )


async def replace_draft(
    conn: asyncpg.Connection,
    workspace_id: str,
    workflow_id: uuid.UUID,
    *,
    name: str,
    draft: dict[str, Any],
    trigger_event: str,
    now: datetime,
) -> None:
    """A new draft, one revision on. The live trigger_event changes only while the
    workflow was never published (it is the published version's afterwards)."""
    await conn.execute(
        "UPDATE workflows SET name = $3, draft = $4::jsonb, draft_revision = draft_revision + 1,"
        " trigger_event = CASE WHEN published_version = 0 THEN $5 ELSE trigger_event END,"
        " updated_at = $6 WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace_id),
        workflow_id,
        name,
        _jsonb(draft),
        trigger_event,
        now,
    )


async def publish(
    conn: asyncpg.Connection,
    workspace_id: str,
    workflow_id: uuid.UUID,
    *,
    version: int,
    definition: dict[str, Any],
    trigger_event: str,
    published_by: str,
    now: datetime,
) -> None:
    """The draft becomes ``version`` (immutable) and the one new runs use."""
    await conn.execute(
        "INSERT INTO workflow_versions (workspace_id, workflow_id, version, definition,"
        " published_at, published_by) VALUES ($1, $2, $3, $4::jsonb, $5, $6)",
        uuid.UUID(workspace_id),
        workflow_id,
        version,
        _jsonb(definition),
        now,
        published_by,
    )
    await conn.execute(
        "UPDATE workflows SET status = 'active', published_version = $3, trigger_event = $4,"
        " published_at = $5, updated_at = $5 WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace_id),
        workflow_id,
        version,
        trigger_event,
        now,
    )
    await live_changes.announce(conn, workspace_id)


async def set_status(
    conn: asyncpg.Connection, workspace_id: str, workflow_id: uuid.UUID, status: str, now: datetime
) -> None:
    await conn.execute(
        "UPDATE workflows SET status = $3, updated_at = $4 WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace_id),
        workflow_id,
        status,
        now,
    )
    await live_changes.announce(conn, workspace_id)


async def delete_workflow(
    conn: asyncpg.Connection, workspace_id: str, workflow_id: uuid.UUID
) -> None:
    """A never-published workflow and what its test runs left behind."""
    ws = uuid.UUID(workspace_id)
    await conn.execute(
        "DELETE FROM timers WHERE workspace_id = $1 AND workflow_id = $2", ws, workflow_id
    )
    await conn.execute(
        "DELETE FROM run_steps WHERE workspace_id = $1 AND workflow_id = $2", ws, workflow_id
    )
    await conn.execute(
        "DELETE FROM runs WHERE workspace_id = $1 AND workflow_id = $2", ws, workflow_id
    )
    await conn.execute("DELETE FROM workflows WHERE workspace_id = $1 AND id = $2", ws, workflow_id)


async def list_versions(
    conn: asyncpg.Connection, workspace_id: str, workflow_id: uuid.UUID
) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT version, definition, published_at, published_by FROM workflow_versions"
            " WHERE workspace_id = $1 AND workflow_id = $2 AND version > 0"
            " ORDER BY version DESC",
            uuid.UUID(workspace_id),
            workflow_id,
        )
    )


async def get_version(
    conn: asyncpg.Connection, workspace_id: str, workflow_id: uuid.UUID, version: int
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT version, definition, published_at, published_by FROM workflow_versions"
        " WHERE workspace_id = $1 AND workflow_id = $2 AND version = $3",
        uuid.UUID(workspace_id),
        workflow_id,
        version,
    )


async def snapshot_draft(
    conn: asyncpg.Connection,
    workspace_id: str,
    workflow_id: uuid.UUID,
    *,
    revision: int,
    definition: dict[str, Any],
    by: str,
    now: datetime,
) -> int:
    """The draft at ``revision`` as the version a test run of the draft runs: ``-revision``.

    The engine loads a run's definition by (workflow, version) and may cache it, so a test
    run cannot point at the draft itself, which changes; every revision of a draft is
    immutable, so its snapshot is too, and the same revision tested twice shares one row.
    Negative versions are never published ones: versions lists, exports and publishes
    only positive ones."""
    await conn.execute(
        "INSERT INTO workflow_versions (workspace_id, workflow_id, version, definition,"
        " published_at, published_by) VALUES ($1, $2, $3, $4::jsonb, $5, $6)"
        " ON CONFLICT DO NOTHING",
        uuid.UUID(workspace_id),
        workflow_id,
        -revision,
        _jsonb(definition),
        now,
        by,
    )
    return -revision


# --- runs -----------------------------------------------------------------------------------


async def list_runs(
    conn: asyncpg.Connection,
    workspace_id: str,
    *,
    workflow_id: uuid.UUID | None,
    state: str | None,
    contact_id: uuid.UUID | None,
    after: Cursor | None,
    limit: int,
) -> list[asyncpg.Record]:
    """One page of runs, newest first (``limit + 1`` rows, see :func:`list_workflows`)."""
    return list(
        await conn.fetch(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE workspace_id = $1"
            " AND ($2::uuid IS NULL OR workflow_id = $2)"
            " AND ($3::text IS NULL OR state = $3)"
            " AND ($4::uuid IS NULL OR contact_id = $4)"
            " AND ($5::timestamptz IS NULL OR (started_at, id) < ($5, $6))"
            " ORDER BY started_at DESC, id DESC LIMIT $7",
            uuid.UUID(workspace_id),
            workflow_id,
            state,
            contact_id,
            after.at if after else None,
            after.id if after else None,
            limit + 1,
        )
    )


async def get_run(
    conn: asyncpg.Connection, workspace_id: str, run_id: uuid.UUID, *, for_update: bool = False
) -> asyncpg.Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM runs WHERE workspace_id = $1 AND id = $2{lock}",
        uuid.UUID(workspace_id),
        run_id,
    )


async def cancel_run(
    conn: asyncpg.Connection, workspace_id: str, run_id: uuid.UUID, now: datetime
) -> None:
    """Ends the run where it stands and drops its timer, so the timer loop never wakes it."""
    ws = uuid.UUID(workspace_id)
    await conn.execute(
        "UPDATE runs SET state = 'cancelled', ended_at = $3, end_reason = 'cancelled',"
        " position = NULL, next_wake_at = NULL, updated_at = $3"
        " WHERE workspace_id = $1 AND id = $2",
        ws,
        run_id,
        now,
    )
    await conn.execute(
        "DELETE FROM timers WHERE workspace_id = $1 AND timer_key = $2", ws, f"run/{run_id}"
    )


async def insert_test_run(
    conn: asyncpg.Connection,
    workspace_id: str,
    *,
    workflow_id: uuid.UUID,
    version: int,
    contact_id: uuid.UUID,
    recipient: str,
    run_vars: dict[str, str],
    now: datetime,
) -> uuid.UUID:
    """A test run, and its timer due now: the engine's timer loop picks it up like any
    run woken from a wait, walks it from its first step (a test run skips waits), and sends
    every mail to ``recipient``. A test run never counts in entry rules (runs_one_live
    leaves it out) nor in statistics."""
    run_id = uuid.uuid4()
    ws = uuid.UUID(workspace_id)
    await conn.execute(
        "INSERT INTO runs (workspace_id, id, workflow_id, version, contact_id, state, vars,"
        " trigger_event_id, started_at, updated_at, next_wake_at, test_recipient)"
        " VALUES ($1, $2, $3, $4, $5, 'active', $6::jsonb, $7, $8, $8, $8, $9)",
        ws,
        run_id,
        workflow_id,
        version,
        contact_id,
        _jsonb(run_vars),
        f"test/{run_id}",
        now,
        recipient,
    )
    await conn.execute(
        "INSERT INTO timers (timer_key, workspace_id, contact_id, workflow_id, run_id, kind,"
        " due_at) VALUES ($1, $2, $3, $4, $5, 'run', $6)",
        f"run/{run_id}",
        ws,
        contact_id,
        workflow_id,
        run_id,
        now,
    )
    return run_id


# --- statistics -----------------------------------------------------------------------------


async def step_counts(
    conn: asyncpg.Connection, workspace_id: str, workflow_id: uuid.UUID, version: int
) -> list[asyncpg.Record]:
    """Per step of real (not test) runs: how often it was reached, run, and which way."""
    return list(
        await conn.fetch(
            "SELECT s.step_id,"
            " count(*) AS entered,"
            " count(*) FILTER (WHERE s.outcome IN ('done', 'yes', 'no')) AS completed,"
            " count(*) FILTER (WHERE s.outcome = 'yes') AS yes,"
            " count(*) FILTER (WHERE s.outcome = 'no') AS no,"
            " count(*) FILTER (WHERE s.outcome LIKE 'skipped%') AS skipped"
            " FROM run_steps s JOIN runs r ON r.workspace_id = s.workspace_id AND r.id = s.run_id"
            " WHERE s.workspace_id = $1 AND s.workflow_id = $2"
            " AND ($3 = 0 OR s.version = $3) AND r.test_recipient = ''"
            " GROUP BY s.step_id",
            uuid.UUID(workspace_id),
            workflow_id,
            version,
        )
    )


async def waiting_counts(
    conn: asyncpg.Connection, workspace_id: str, workflow_id: uuid.UUID, version: int
) -> list[asyncpg.Record]:
    """Runs asleep now, by the step they will run when they wake."""
    return list(
        await conn.fetch(
            "SELECT position AS step_id, count(*) AS waiting FROM runs"
            " WHERE workspace_id = $1 AND workflow_id = $2 AND ($3 = 0 OR version = $3)"
            " AND state = 'waiting' AND ended_at IS NULL AND test_recipient = ''"
            " AND position IS NOT NULL GROUP BY position",
            uuid.UUID(workspace_id),
            workflow_id,
            version,
        )
    )


async def run_counts(
    conn: asyncpg.Connection, workspace_id: str, workflow_id: uuid.UUID, version: int
) -> dict[str, int]:
    """Real runs by state."""
    rows = await conn.fetch(
        "SELECT state, count(*) AS runs FROM runs"
        " WHERE workspace_id = $1 AND workflow_id = $2 AND ($3 = 0 OR version = $3)"
        " AND test_recipient = '' GROUP BY state",
        uuid.UUID(workspace_id),
        workflow_id,
        version,
    )
    return {row["state"]: int(row["runs"]) for row in rows}
