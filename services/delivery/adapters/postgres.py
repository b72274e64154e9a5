"""The delivery ledger in PostgreSQL: one row per message (``messages``), and the requests
to hand over again later (``pending_sends``, migrations/0010_outcomes.sql)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.delivery.domain.ledger import Status

SCHEMA = "delivery"


@dataclass(frozen=True)
class Claim:
    """A claim taken: ``new`` when this is the message's first claim; ``attempts`` counts
    the claims of the message that reached the server (this one included)."""

    new: bool
    attempts: int
    first_claimed_at: datetime


@dataclass(frozen=True)
class Origin:
    """What the ledger keeps of a request at its first claim, for the story of the mail: the
    trace id current at the claim, the consent purpose asked about, and the workflow run and
    step of an automation mail."""

    trace_id: str = ""
    purpose: int = 0
    run_id: str = ""
    step_id: str = ""
    requested_at: datetime | None = None  # the request envelope's occurred_at


async def claim(
    conn: asyncpg.Connection,
    message_id: str,
    workspace_id: str,
    contact_id: str,
    kind: int,
    campaign_id: str,
    workflow_id: str,
    now: datetime,
    reclaimable: Sequence[Status] = (Status.QUEUED,),
    origin: Origin | None = None,
) -> Claim | None:
    """Claim the message id; a :class:`Claim` when this attempt may hand the message to SMTP.

    A row in one of the ``reclaimable`` statuses may be claimed again (QUEUED: paused before
    the hand-off; DEFERRED and UNKNOWN: by the retry loop only); any other existing row means
    the message was handled, or may have been: never twice. ``origin`` is written on the
    first claim only (the story of the mail, services/delivery/story.py).
    """
    origin = origin or Origin()
    row = await conn.fetchrow(
        "INSERT INTO messages (message_id, workspace_id, contact_id, kind, campaign_id,"
        " workflow_id, status, claimed_at, updated_at, trace_id, purpose, run_id, step_id,"
        " requested_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $10, $11, $12, $13, $14)"
        " ON CONFLICT (message_id) DO UPDATE SET status = $7, attempts = messages.attempts + 1,"
        "   updated_at = $8"
        " WHERE messages.status = ANY($9::smallint[])"
        " RETURNING (xmax = 0) AS new, attempts, claimed_at",
        uuid.UUID(message_id),
        uuid.UUID(workspace_id),
        uuid.UUID(contact_id),
        kind,
        campaign_id,
        workflow_id,
        Status.CLAIMED,
        now,
        [int(s) for s in reclaimable],
        origin.trace_id,
        origin.purpose,
        origin.run_id,
        origin.step_id,
        origin.requested_at,
    )
    if row is None:
        return None
    return Claim(new=row["new"], attempts=row["attempts"], first_claimed_at=row["claimed_at"])


async def status_of(conn: asyncpg.Connection, message_id: str) -> Status | None:
    value = await conn.fetchval(
        "SELECT status FROM messages WHERE message_id = $1", uuid.UUID(message_id)
    )
    return None if value is None else Status(value)


async def set_status(
    conn: asyncpg.Connection,
    message_id: str,
    status: Status,
    detail: str,
    now: datetime,
    next_attempt_at: datetime | None = None,
) -> None:
    """``next_attempt_at``: a DEFERRED message's next attempt (kept in its history)."""
    await conn.execute(
        "UPDATE messages SET status = $2, detail = $3, updated_at = $4, next_attempt_at = $5"
        " WHERE message_id = $1",
        uuid.UUID(message_id),
        status,
        detail[:1000],
        now,
        next_attempt_at,
    )


async def release_claim(
    conn: asyncpg.Connection, message_id: str, status: Status, detail: str, now: datetime
) -> None:
    """Give a claim back without a hand-off (sending paused): the attempt does not count."""
    await conn.execute(
        "UPDATE messages SET status = $2, detail = $3, updated_at = $4,"
        " attempts = greatest(attempts - 1, 0) WHERE message_id = $1 AND status = $5",
        uuid.UUID(message_id),
        status,
        detail[:1000],
        now,
        Status.CLAIMED,
    )


async def save_pending(
    conn: asyncpg.Connection,
    message_id: str,
    workspace_id: str,
    contact_id: str,
    due_at: datetime | None,
    first_attempt_at: datetime,
    envelope: bytes,
) -> None:
    """Keep the request to hand it over again at ``due_at`` (None: only if reported UNKNOWN)."""
    await conn.execute(
        "INSERT INTO pending_sends (message_id, workspace_id, contact_id, due_at,"
        " first_attempt_at, envelope) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (message_id) DO UPDATE SET due_at = EXCLUDED.due_at",
        uuid.UUID(message_id),
        uuid.UUID(workspace_id),
        uuid.UUID(contact_id),
        due_at,
        first_attempt_at,
        envelope,
    )


async def set_due(conn: asyncpg.Connection, message_id: str, due_at: datetime) -> bool:
    """Make a kept request due at ``due_at``; False when none is kept."""
    done = await conn.execute(
        "UPDATE pending_sends SET due_at = $2 WHERE message_id = $1",
        uuid.UUID(message_id),
        due_at,
    )
    return str(done) != "UPDATE 0"


async def drop_pending(conn: asyncpg.Connection, message_id: str) -> None:
    await conn.execute("DELETE FROM pending_sends WHERE message_id = $1", uuid.UUID(message_id))


async def take_due(
    conn: asyncpg.Connection, now: datetime, lease_until: datetime, limit: int
) -> list[bytes]:
    """The requests due by ``now`` (at most ``limit``), leased until ``lease_until``: another
    worker skips them meanwhile, and a crash makes them due again when the lease ends."""
    rows = await conn.fetch(
        "UPDATE pending_sends SET due_at = $2 WHERE message_id IN ("
        "  SELECT message_id FROM pending_sends WHERE due_at <= $1"
        "  ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
        " RETURNING envelope",
        now,
        lease_until,
        limit,
    )
    return [bytes(row["envelope"]) for row in rows]


async def stale_claims(
    conn: asyncpg.Connection, claimed_before: datetime, limit: int
) -> list[asyncpg.Record]:
    """Messages CLAIMED since before ``claimed_before``, locked for the caller's transaction
    (another sweeper skips them)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT message_id, workspace_id, contact_id, kind, campaign_id, workflow_id, attempts,"
        # A literal status, so that the partial index messages_claimed serves the query.
        f" updated_at FROM messages WHERE status = {int(Status.CLAIMED)} AND updated_at < $1"
        " ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        claimed_before,
        limit,
    )
    return rows


async def find(
    conn: asyncpg.Connection, workspace_id: str, message_id: uuid.UUID
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT message_id, status, detail, updated_at FROM messages"
        " WHERE workspace_id = $1 AND message_id = $2",
        uuid.UUID(workspace_id),
        message_id,
    )


# -- many rows in one statement (services/delivery/writes.py, the group commit) -----------
#
# Each is ONE statement (data-modifying CTEs): atomic without BEGIN and COMMIT, so a group
# costs one round trip. The outbox rows are written as services/common/outbox.py
# add_many_to_outbox writes them (its statement trigger notifies the relay at commit).


@dataclass(frozen=True)
class ClaimRow:
    message_id: str
    workspace_id: str
    contact_id: str
    kind: int
    campaign_id: str
    workflow_id: str
    queued: bytes  # the MessageQueued envelope, queued on the first claim only
    trace: str  # its outbox headers (JSON)
    pending: bytes | None  # the request, kept on the first claim (kinds resent when UNKNOWN)
    origin: Origin = Origin()  # kept on the first claim, for the story of the mail


async def claim_many(
    conn: asyncpg.Connection | asyncpg.Pool, rows: Sequence[ClaimRow], topic: str, now: datetime
) -> dict[str, Claim]:
    """:func:`claim` for many messages at once (distinct ids; only a QUEUED row is claimed
    again), with the MessageQueued outbox row and the kept request of each first claim:
    message id -> the claim taken; a message missing from the answer was handled, or may
    have been (never twice)."""
    if not rows:
        return {}
    found = await conn.fetch(
        "WITH claimed AS ("
        "  INSERT INTO messages (message_id, workspace_id, contact_id, kind, campaign_id,"
        "   workflow_id, status, claimed_at, updated_at, trace_id, purpose, run_id, step_id,"
        "   requested_at)"
        "  SELECT m, w, c, k, ca, wf, $7, $8, $8, tr, pu, ru, st, ra"
        "  FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::smallint[], $5::text[],"
        "   $6::text[], $14::text[], $15::smallint[], $16::text[], $17::text[],"
        "   $18::timestamptz[]) AS r(m, w, c, k, ca, wf, tr, pu, ru, st, ra)"
        "  ON CONFLICT (message_id) DO UPDATE SET status = $7,"
        "   attempts = messages.attempts + 1, updated_at = $8"
        f"  WHERE messages.status = {int(Status.QUEUED)}"
        "  RETURNING message_id, (xmax = 0) AS new, attempts, claimed_at"
        "), queued AS ("
        "  INSERT INTO outbox (topic, key, value, headers)"
        "  SELECT $9, q.k, q.v, q.h::jsonb"
        "  FROM unnest($1::uuid[], $10::bytea[], $11::bytea[], $12::text[])"
        "   WITH ORDINALITY AS q(m, k, v, h, n)"
        "  JOIN claimed ON claimed.message_id = q.m AND claimed.new ORDER BY q.n"
        "), kept AS ("
        "  INSERT INTO pending_sends (message_id, workspace_id, contact_id, first_attempt_at,"
        "   envelope)"
        "  SELECT p.m, p.w, p.c, claimed.claimed_at, p.e"
        "  FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $13::bytea[]) AS p(m, w, c, e)"
        "  JOIN claimed ON claimed.message_id = p.m AND claimed.new WHERE p.e IS NOT NULL"
        "  ON CONFLICT (message_id) DO UPDATE SET due_at = EXCLUDED.due_at"
        ") SELECT message_id, new, attempts, claimed_at FROM claimed",
        [uuid.UUID(r.message_id) for r in rows],
        [uuid.UUID(r.workspace_id) for r in rows],
        [uuid.UUID(r.contact_id) for r in rows],
        [r.kind for r in rows],
        [r.campaign_id for r in rows],
        [r.workflow_id for r in rows],
        Status.CLAIMED,
        now,
        topic,
        [r.contact_id.encode() for r in rows],
        [r.queued for r in rows],
        [r.trace for r in rows],
        [r.pending for r in rows],
        [r.origin.trace_id for r in rows],
        [r.origin.purpose for r in rows],
        [r.origin.run_id for r in rows],
        [r.origin.step_id for r in rows],
        [r.origin.requested_at for r in rows],
    )
    return {
        str(row["message_id"]): Claim(
            new=row["new"], attempts=row["attempts"], first_claimed_at=row["claimed_at"]
        )
        for row in found
    }


@dataclass(frozen=True)
class OutcomeRow:
    message_id: str
    status: Status
    detail: str
    drop_pending: bool
    key: str  # the event's key (the contact id)
    event: bytes  # the outcome's envelope
    trace: str  # its outbox headers (JSON)


async def record_many(
    conn: asyncpg.Connection | asyncpg.Pool, rows: Sequence[OutcomeRow], topic: str, now: datetime
) -> None:
    """:func:`set_status` for many messages in one UPDATE, :func:`drop_pending` for those
    that say so, and each outcome's event in the outbox."""
    if not rows:
        return
    await conn.execute(
        "WITH done AS ("
        "  UPDATE messages SET status = u.status, detail = u.detail, updated_at = $4"
        "  FROM unnest($1::uuid[], $2::smallint[], $3::text[]) AS u(id, status, detail)"
        "  WHERE messages.message_id = u.id"
        "), dropped AS ("
        "  DELETE FROM pending_sends WHERE message_id = ANY($5::uuid[])"
        "), events AS ("
        "  INSERT INTO outbox (topic, key, value, headers)"
        "  SELECT $6, k, v, h::jsonb FROM unnest($7::bytea[], $8::bytea[], $9::text[])"
        "   WITH ORDINALITY AS r(k, v, h, n) ORDER BY n"
        ") SELECT 1",
        [uuid.UUID(r.message_id) for r in rows],
        [int(r.status) for r in rows],
        [r.detail[:1000] for r in rows],
        now,
        [uuid.UUID(r.message_id) for r in rows if r.drop_pending],
        topic,
        [r.key.encode() for r in rows],
        [r.event for r in rows],
        [r.trace for r in rows],
    )
