"""Consent history, its derived state, double opt-in confirmations and workspace settings in
PostgreSQL. Every query names its workspace."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.common.db import id_array
from services.contacts.suppression import address_hash_sql, suppressed_reason_sql


@dataclass(frozen=True)
class NewConsentRecord:
    purpose: int
    status: int
    source: int
    wording: str
    actor: str
    ip: str
    user_agent: str
    recorded_at: datetime


async def insert_record(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID, record: NewConsentRecord
) -> uuid.UUID:
    record_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO consent_events (id, workspace_id, contact_id, purpose, status, source,"
        " wording, actor, ip, user_agent, recorded_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        record_id,
        uuid.UUID(workspace_id),
        contact_id,
        record.purpose,
        record.status,
        record.source,
        record.wording,
        record.actor,
        record.ip,
        record.user_agent,
        record.recorded_at,
    )
    return record_id


async def derive_current(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID, purpose: int
) -> int | None:
    """Set ``consents`` (the derived state) for one purpose from the history: the latest record
    by when it was given, ties by arrival. The status now, or None when never asked."""
    row = await conn.fetchrow(
        "SELECT status, recorded_at FROM consent_events"
        " WHERE workspace_id = $1 AND contact_id = $2 AND purpose = $3"
        " ORDER BY recorded_at DESC, seq DESC LIMIT 1",
        uuid.UUID(workspace_id),
        contact_id,
        purpose,
    )
    if row is None:
        return None
    await conn.execute(
        "INSERT INTO consents (workspace_id, contact_id, purpose, status, updated_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workspace_id, contact_id, purpose)"
        " DO UPDATE SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
        uuid.UUID(workspace_id),
        contact_id,
        purpose,
        row["status"],
        row["recorded_at"],
    )
    return int(row["status"])


async def lock_contact(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> asyncpg.Record | None:
    """The contact's row with its workspace's consent settings, locked for this transaction
    (consent changes of one contact are serialised, so the derived state cannot interleave)."""
    return await conn.fetchrow(
        "SELECT c.id, c.email, w.double_opt_in, w.consent_required_for_campaigns,"
        " w.name AS workspace_name FROM contacts c JOIN workspaces w ON w.id = c.workspace_id"
        " WHERE c.workspace_id = $1 AND c.id = $2 FOR UPDATE OF c",
        uuid.UUID(workspace_id),
        contact_id,
    )


async def current_states(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> dict[int, tuple[int, datetime]]:
    """Purpose -> (status, since) of a contact."""
    rows = await conn.fetch(
        "SELECT purpose, status, updated_at FROM consents WHERE workspace_id = $1"
        " AND contact_id = $2",
        uuid.UUID(workspace_id),
        contact_id,
    )
    return {r["purpose"]: (r["status"], r["updated_at"]) for r in rows}


async def history_page(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: uuid.UUID,
    page_size: int,
    after: tuple[datetime, int] | None,
) -> list[asyncpg.Record]:
    """Up to ``page_size + 1`` records, newest first, after the ``(recorded_at, seq)`` given."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, contact_id, purpose, status, source, wording, actor, ip, user_agent,"
        " recorded_at, seq FROM consent_events WHERE workspace_id = $1 AND contact_id = $2"
        " AND ($3::timestamptz IS NULL OR (recorded_at, seq) < ($3, $4::bigint))"
        " ORDER BY recorded_at DESC, seq DESC LIMIT $5",
        uuid.UUID(workspace_id),
        contact_id,
        after[0] if after else None,
        after[1] if after else None,
        page_size + 1,
    )
    return rows


async def eligibility_facts(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID, purpose: int
) -> asyncpg.Record | None:
    """What CheckEligibility decides on, in one query: the contact, its consent for
    ``purpose``, whether its address is suppressed (by keyed hash) and the workspace's rule."""
    return await conn.fetchrow(
        "SELECT c.email, c.first_name, c.last_name, c.locale, c.time_zone,"
        " w.name AS workspace_name, w.consent_required_for_campaigns,"
        " (SELECT s.status FROM consents s WHERE s.workspace_id = c.workspace_id"
        "   AND s.contact_id = c.id AND s.purpose = $3) AS consent,"
        f" {suppressed_reason_sql('c', 'w')} AS suppressed_reason"
        " FROM contacts c JOIN workspaces w ON w.id = c.workspace_id"
        " WHERE c.workspace_id = $1 AND c.id = $2",
        uuid.UUID(workspace_id),
        contact_id,
        purpose,
    )


_FACTS_OF_CHECKS = (
    "SELECT q.n, c.id IS NOT NULL AS found, c.email, c.first_name, c.last_name, c.locale,"
    " c.time_zone, w.name AS workspace_name, w.consent_required_for_campaigns,"
    " (SELECT s.status FROM consents s WHERE s.workspace_id = c.workspace_id"
    "   AND s.contact_id = c.id AND s.purpose = q.purpose) AS consent,"
    f" {suppressed_reason_sql('c', 'w')} AS suppressed_reason"
    " FROM unnest(uuids($2), ints($3)) WITH ORDINALITY AS q(contact_id, purpose, n)"
)


async def eligibility_facts_many(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_ids: Sequence[uuid.UUID | str],
    purposes: Sequence[int],
) -> list[asyncpg.Record | None]:
    """:func:`eligibility_facts` for many (contact, purpose) pairs in one statement, in the
    order given (None where the contact is not in this workspace): the pairs are joined as
    an ``unnest`` with their position, so a batch costs one round trip and one plan."""
    rows = await conn.fetch(
        _FACTS_OF_CHECKS + " JOIN contacts c ON c.workspace_id = $1 AND c.id = q.contact_id"
        " JOIN workspaces w ON w.id = c.workspace_id",
        uuid.UUID(workspace_id),
        # One text parameter each: asyncpg checks every element of a list (id_array).
        id_array(contact_ids),
        id_array(map(str, purposes)),
    )
    found: list[asyncpg.Record | None] = [None] * len(contact_ids)
    for row in rows:
        found[row["n"] - 1] = row
    return found


async def eligibility_exceptions(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_ids: Sequence[str],
    purposes: Sequence[int],
    granted: int,
) -> list[tuple[int, asyncpg.Record | None]]:
    """The checks of :func:`eligibility_facts_many` that are not plainly mailable, as
    (position from 0, row or None when not found), in order. Plainly mailable is found, not
    suppressed, consent ``granted`` for the purpose and an address: what
    ``consent.decide`` answers eligible with consent, said in SQL so that the rows of a
    mostly mailable audience are neither sent nor read (CheckEligibilityBatch's
    ``exceptions_only``)."""
    rows = await conn.fetch(
        "SELECT * FROM (" + _FACTS_OF_CHECKS + " LEFT JOIN contacts c ON c.workspace_id = $1"
        "  AND c.id = q.contact_id LEFT JOIN workspaces w ON w.id = c.workspace_id"
        # A fence: the outer WHERE must not copy the subqueries, each runs once a row.
        "  OFFSET 0) f"
        # coalesce: without a consent row the conjunction is NULL, and that is an exception.
        " WHERE NOT coalesce(f.found AND f.suppressed_reason IS NULL AND f.consent = $4"
        "  AND f.email <> '', false)"
        " ORDER BY f.n",
        uuid.UUID(workspace_id),
        id_array(contact_ids),
        id_array(map(str, purposes)),
        granted,
    )
    return [(row["n"] - 1, row if row["found"] else None) for row in rows]


# ------------------------------------------------------------------ double opt-in


async def insert_confirmation(
    conn: asyncpg.Connection,
    workspace_id: str,
    message_id: uuid.UUID,
    contact_id: uuid.UUID,
    purposes: Sequence[int],
    wording: str,
    now: datetime,
    expires_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO consent_confirmations (workspace_id, message_id, contact_id, purposes,"
        " wording, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        uuid.UUID(workspace_id),
        message_id,
        contact_id,
        list(purposes),
        wording,
        now,
        expires_at,
    )


async def lock_confirmation(
    conn: asyncpg.Connection, workspace_id: str, message_id: uuid.UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT contact_id, purposes, wording, expires_at, confirmed_at"
        " FROM consent_confirmations WHERE workspace_id = $1 AND message_id = $2 FOR UPDATE",
        uuid.UUID(workspace_id),
        message_id,
    )


async def mark_confirmed(
    conn: asyncpg.Connection, workspace_id: str, message_id: uuid.UUID, now: datetime
) -> None:
    await conn.execute(
        "UPDATE consent_confirmations SET confirmed_at = $3"
        " WHERE workspace_id = $1 AND message_id = $2",
        uuid.UUID(workspace_id),
        message_id,
        now,
    )


# ------------------------------------------------------------------ workspace settings


async def workspace_settings(conn: asyncpg.Connection, workspace_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, name, consent_required_for_campaigns, double_opt_in FROM workspaces"
        " WHERE id = $1",
        uuid.UUID(workspace_id),
    )


async def update_workspace_settings(
    conn: asyncpg.Connection, workspace_id: str, changes: dict[str, Any]
) -> asyncpg.Record | None:
    """Set the given columns (names checked by the caller against a fixed list)."""
    allowed = {"name", "consent_required_for_campaigns", "double_opt_in"}
    if not changes:
        return await workspace_settings(conn, workspace_id)
    assert set(changes) <= allowed
    columns = sorted(changes)
    assignments = ", ".join(f"{name} = ${n + 2}" for n, name in enumerate(columns))
    return await conn.fetchrow(
        f"UPDATE workspaces SET {assignments} WHERE id = $1"
        " RETURNING id, name, consent_required_for_campaigns, double_opt_in",
        uuid.UUID(workspace_id),
        *(changes[name] for name in columns),
    )


# ------------------------------------------------------------------ counting an audience


async def count_eligible(
    conn: asyncpg.Connection,
    workspace_id: str,
    purpose: int,
    audience_sql: str,
    audience_params: Sequence[Any],
) -> asyncpg.Record:
    """Total, and how many contacts of the audience fall under each reason, each contact
    once, in one set-based statement. ``audience_sql`` is a condition over ``contacts AS a``
    whose parameters start at ``$3``. The reasons are decided in the order of
    :func:`services.contacts.consent.decide`: suppressed, then the consent's state.

    The keyed hash of every address is computed with the workspace's HMAC pads
    (:func:`services.contacts.suppression.address_hash_sql`)."""
    return await conn.fetchrow(
        "WITH ws AS MATERIALIZED ("
        "   SELECT w.consent_required_for_campaigns AS required,"
        "     w.suppression_ipad AS ipad, w.suppression_opad AS opad"
        "   FROM workspaces w WHERE w.id = $1),"
        # Materialised: each contact's facts once (inlined, the suppression probe ran once
        # per count below); suppressions join by hash, one hash join for the audience.
        " facts AS MATERIALIZED ("
        "   SELECT s.status, sp.address_hash IS NOT NULL AS suppressed, ws.required"
        "   FROM contacts a CROSS JOIN ws"
        "   LEFT JOIN consents s ON s.workspace_id = a.workspace_id AND s.contact_id = a.id"
        "     AND s.purpose = $2"
        "   LEFT JOIN suppressions sp ON sp.workspace_id = a.workspace_id"
        f"    AND sp.address_hash = {address_hash_sql('ws.ipad', 'ws.opad', 'a.email')}"
        f"  WHERE a.workspace_id = $1 AND ({audience_sql}))"
        " SELECT count(*) AS total,"
        "   count(*) FILTER (WHERE suppressed) AS suppressed,"
        "   count(*) FILTER (WHERE NOT suppressed AND $2 <> 4 AND status = 2) AS consent_withdrawn,"
        "   count(*) FILTER (WHERE NOT suppressed AND $2 <> 4 AND status = 3) AS consent_pending,"
        "   count(*) FILTER (WHERE NOT suppressed AND $2 <> 4 AND status IS NULL"
        "     AND NOT ($2 IN (1, 2) AND NOT required)) AS no_consent"
        " FROM facts",
        uuid.UUID(workspace_id),
        purpose,
        *audience_params,
    )
