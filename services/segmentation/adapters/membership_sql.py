"""SQL of membership evaluation: one statement evaluates every segment of a workspace for a
set of contacts, others write the difference with ``memberships`` set-based.

The predicates come from :mod:`services.segmentation.adapters.rule_sql` (every value a bind
parameter, field names through its whitelist): no input text reaches the SQL built here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.segmentation.adapters.rule_sql import Params, next_transition_sql, predicate_sql
from services.segmentation.domain.rules import Node


@dataclass(frozen=True)
class Compiled:
    """One workspace's evaluation statement and its constant bind values (``$4`` on)."""

    segment_ids: tuple[str, ...]
    versions: tuple[int, ...]
    sql: str
    values: tuple[object, ...]


def compile_workspace(segments: Sequence[tuple[str, int, Node]]) -> Compiled:
    """``SELECT contact_id, ARRAY[member of each segment], next transition`` for the profiles
    ``$2`` (uuid[]) of workspace ``$1``, each evaluated at its own time (``$3``,
    timestamptz[], aligned with ``$2``): a batch evaluates all at now, the sweeper each at
    the moment it fell due."""
    params = Params(4)
    preds = [predicate_sql(node, params, as_of="d.as_of") for _, _, node in segments]
    nexts = [next_transition_sql(node, params, as_of="d.as_of") for _, _, node in segments]
    members = f"ARRAY[{', '.join(f'coalesce({p}, false)' for p in preds)}]::boolean[]"
    # least() ignores NULLs (a segment time alone never changes); NULL when all are.
    next_at = f"least({', '.join(nexts)})" if nexts else "NULL::timestamptz"
    sql = (
        f"SELECT p.contact_id, {members} AS members, {next_at} AS next_at"
        " FROM unnest($2::uuid[], $3::timestamptz[]) AS d(contact_id, as_of)"
        " JOIN profiles p ON p.workspace_id = $1 AND p.contact_id = d.contact_id"
    )
    return Compiled(
        tuple(s for s, _, _ in segments),
        tuple(v for _, v, _ in segments),
        sql,
        tuple(params.values),
    )


async def evaluate(
    conn: asyncpg.Connection,
    compiled: Compiled,
    workspace_id: str,
    contacts: Sequence[tuple[str, datetime]],
) -> dict[str, tuple[list[bool], datetime | None]]:
    """Per (contact, evaluation time) whose contact has a profile: the membership of each
    segment and the next time alone may change one."""
    rows = await conn.fetch(
        compiled.sql,
        uuid.UUID(workspace_id),
        [c for c, _ in contacts],
        [at for _, at in contacts],
        *compiled.values,
    )
    return {str(r["contact_id"]): (list(r["members"]), r["next_at"]) for r in rows}


async def current_memberships(
    conn: asyncpg.Connection, workspace_id: str, contact_ids: Sequence[str]
) -> set[tuple[str, str]]:
    """The stored (segment id, contact id) pairs of these contacts."""
    rows = await conn.fetch(
        "SELECT segment_id, contact_id FROM memberships"
        " WHERE workspace_id = $1 AND contact_id = ANY($2::uuid[])",
        uuid.UUID(workspace_id),
        list(contact_ids),
    )
    return {(r["segment_id"], str(r["contact_id"])) for r in rows}


async def insert_memberships(
    conn: asyncpg.Connection,
    workspace_id: str,
    pairs: Sequence[tuple[str, str]],
    since: Sequence[datetime],
) -> None:
    if not pairs:
        return
    await conn.execute(
        "INSERT INTO memberships (workspace_id, segment_id, contact_id, since)"
        " SELECT $1, s, c, t FROM unnest($2::text[], $3::uuid[], $4::timestamptz[]) AS d(s, c, t)"
        " ON CONFLICT DO NOTHING",
        uuid.UUID(workspace_id),
        [s for s, _ in pairs],
        [c for _, c in pairs],
        list(since),
    )


async def delete_memberships(
    conn: asyncpg.Connection, workspace_id: str, pairs: Sequence[tuple[str, str]]
) -> None:
    if not pairs:
        return
    await conn.execute(
        "DELETE FROM memberships m USING unnest($2::text[], $3::uuid[]) AS d(s, c)"
        " WHERE m.workspace_id = $1 AND m.segment_id = d.s AND m.contact_id = d.c",
        uuid.UUID(workspace_id),
        [s for s, _ in pairs],
        [c for _, c in pairs],
    )


async def remove_contacts(
    conn: asyncpg.Connection, workspace_id: str, contact_ids: Sequence[str]
) -> list[tuple[str, str]]:
    """Delete every membership of these (removed) contacts; the (segment, contact) gone."""
    rows = await conn.fetch(
        "DELETE FROM memberships WHERE workspace_id = $1 AND contact_id = ANY($2::uuid[])"
        " RETURNING segment_id, contact_id",
        uuid.UUID(workspace_id),
        list(contact_ids),
    )
    return sorted((r["segment_id"], str(r["contact_id"])) for r in rows)


async def set_next_transitions(
    conn: asyncpg.Connection,
    workspace_id: str,
    next_at: Sequence[tuple[str, datetime | None]],
) -> None:
    if not next_at:
        return
    await conn.execute(
        "UPDATE profiles p SET next_transition_at = d.n"
        " FROM unnest($2::uuid[], $3::timestamptz[]) AS d(c, n)"
        " WHERE p.workspace_id = $1 AND p.contact_id = d.c"
        "   AND p.next_transition_at IS DISTINCT FROM d.n",
        uuid.UUID(workspace_id),
        [c for c, _ in next_at],
        [n for _, n in next_at],
    )


async def lock_workspace(conn: asyncpg.Connection, workspace_id: str, *, shared: bool) -> None:
    """Evaluations of changed contacts (shared) exclude a definition change (exclusive) in the
    same workspace until the end of the transaction: see docs/segment-membership.md."""
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await conn.execute(f"SELECT {fn}(hashtext('membership:' || $1::text))", workspace_id)


async def segment_versions(
    conn: asyncpg.Connection, workspace_ids: Sequence[str]
) -> dict[str, tuple[tuple[str, int], ...]]:
    """Per workspace, its custom segments' (id, version), sorted: the cache's fingerprint."""
    rows = await conn.fetch(
        "SELECT workspace_id, id, version FROM segments WHERE workspace_id = ANY($1::uuid[])"
        " ORDER BY workspace_id, id",
        list(workspace_ids),
    )
    out: dict[str, list[tuple[str, int]]] = {ws: [] for ws in workspace_ids}
    for r in rows:
        out[str(r["workspace_id"])].append((r["id"], int(r["version"])))
    return {ws: tuple(v) for ws, v in out.items()}


async def segment_rules(
    conn: asyncpg.Connection, workspace_id: str
) -> dict[str, tuple[int, object]]:
    """The workspace's custom segments: id -> (version, rule document)."""
    import json

    rows = await conn.fetch(
        "SELECT id, version, rule FROM segments WHERE workspace_id = $1", uuid.UUID(workspace_id)
    )
    return {r["id"]: (int(r["version"]), json.loads(r["rule"])) for r in rows}


_SEGMENT_DIFF = """
WITH now_in AS (
    SELECT p.contact_id FROM profiles p WHERE p.workspace_id = $1 AND coalesce({pred}, false)
), entered AS (
    INSERT INTO memberships (workspace_id, segment_id, contact_id, since)
    SELECT $1, $2, n.contact_id, $3 FROM now_in n
    ON CONFLICT DO NOTHING
    RETURNING contact_id
), exited AS (
    DELETE FROM memberships m
    WHERE m.workspace_id = $1 AND m.segment_id = $2
      AND NOT EXISTS (SELECT 1 FROM now_in n WHERE n.contact_id = m.contact_id)
    RETURNING contact_id
)
SELECT true AS entered, contact_id FROM entered
UNION ALL
SELECT false, contact_id FROM exited
ORDER BY contact_id
"""


async def reevaluate_segment(
    conn: asyncpg.Connection, workspace_id: str, segment_id: str, node: Node, as_of: datetime
) -> list[tuple[bool, str]]:
    """Evaluate one segment over the whole workspace at ``as_of`` and store the result;
    the (entered?, contact id) of every contact whose membership changed."""
    params = Params(4)
    pred = predicate_sql(node, params, as_of="$3::timestamptz")
    rows = await conn.fetch(
        _SEGMENT_DIFF.format(pred=pred),
        uuid.UUID(workspace_id),
        segment_id,
        as_of,
        *params.values,
    )
    return [(bool(r["entered"]), str(r["contact_id"])) for r in rows]


async def lower_next_transitions(
    conn: asyncpg.Connection, workspace_id: str, node: Node, as_of: datetime
) -> None:
    """Bring each profile's next transition forward to when time alone may change ``node``
    (a new or changed segment): the sweeper then re-evaluates every segment of the contact."""
    params = Params(3)
    nxt = next_transition_sql(node, params, as_of="$2::timestamptz")
    if nxt == "NULL::timestamptz":  # time alone never changes this rule
        return
    await conn.execute(
        f"UPDATE profiles p SET next_transition_at = d.n"
        f" FROM (SELECT p.contact_id, {nxt} AS n FROM profiles p WHERE p.workspace_id = $1"
        # A rule that reads no time leaves $2 unused: PostgreSQL could not type it.
        "   AND $2::timestamptz IS NOT NULL) d"
        " WHERE p.workspace_id = $1 AND p.contact_id = d.contact_id AND d.n IS NOT NULL"
        "   AND (p.next_transition_at IS NULL OR d.n < p.next_transition_at)",
        uuid.UUID(workspace_id),
        as_of,
        *params.values,
    )


_CLAIM_DUE = """
SELECT workspace_id, contact_id, next_transition_at FROM profiles
WHERE next_transition_at <= $1
ORDER BY next_transition_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""


async def claim_due(
    conn: asyncpg.Connection, now: datetime, limit: int
) -> list[tuple[str, str, datetime]]:
    """Lock up to ``limit`` profiles whose next transition is due (across workspaces), the
    earliest first; others sweeping skip them."""
    rows = await conn.fetch(_CLAIM_DUE, now, limit)
    return [(str(r["workspace_id"]), str(r["contact_id"]), r["next_transition_at"]) for r in rows]


async def earliest_due(conn: asyncpg.Connection | asyncpg.Pool) -> datetime | None:
    value = await conn.fetchval("SELECT min(next_transition_at) FROM profiles")
    return value if isinstance(value, datetime) else None
