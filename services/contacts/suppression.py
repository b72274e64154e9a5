"""The suppression list of a workspace: addresses never to be mailed again (hard bounce,
complaint, unsubscribe from everything, erasure, or a manager's decision).

An entry is keyed by HMAC-SHA256 of the normalised address (trimmed, lower-cased) under the
workspace's own random key (``workspaces.suppression_key``, made by migration 0020 and never
leaving the database). The address in clear is kept beside it only when the caller says so,
so that the manager can read the list; an erased contact's entry keeps the hash alone, which
still stops a new contact with that address from being mailed. The hash is computed by the
database (the SQL function ``address_hash``) for one address and for a whole audience alike,
so there is one definition of it, not a Python and a SQL one that could drift apart.

Why a key per workspace rather than a deployment secret: nothing new to provision, rotate or
lose (a lost secret would silently empty every list), and the hashes of two workspaces
cannot be linked. What it does not protect against: someone holding the database holds the
keys as well, and can test guessed addresses.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from nudge.contacts.v1 import contacts_pb2

from services.common import clock
from services.common.errors import FieldViolation, InvalidArgument

ERASED = contacts_pb2.SUPPRESSION_REASON_ERASED
# A manager may lift only what they, or the contact's unsubscribe-all, put there: a bounce,
# a complaint or an erasure is the recipient's or the mailbox provider's word, not theirs.
REMOVABLE = frozenset(
    {contacts_pb2.SUPPRESSION_REASON_MANUAL, contacts_pb2.SUPPRESSION_REASON_GLOBAL_UNSUBSCRIBE}
)


def reason_name(reason: int) -> str:
    """``hard_bounce``, ``complaint``... as eligibility reasons name it."""
    return (
        contacts_pb2.SuppressionReason.Name(reason)  # type: ignore[arg-type]
        .removeprefix("SUPPRESSION_REASON_")
        .lower()
    )


def suppressed_reason_sql(contact: str = "c", workspace: str = "w") -> str:
    """An SQL expression: the reason (smallint) a contact's address is suppressed, or NULL;
    ``contact`` aliases a ``contacts`` row and ``workspace`` its ``workspaces`` row."""
    return (
        f"(SELECT sp.reason FROM suppressions sp WHERE sp.workspace_id = {contact}.workspace_id"
        f" AND sp.address_hash = address_hash({workspace}.suppression_key, {contact}.email))"
    )


async def suppress(
    conn: asyncpg.Connection, workspace_id: str, email: str, reason: int, *, keep_address: bool
) -> bool:
    """Put ``email`` on the workspace's list; True when it was not on it before.

    An address already listed keeps its first reason and date, except that an erasure wins:
    its reason becomes ERASED and the address in clear is dropped (``keep_address`` false
    drops it in any case, so erasing someone listed for a bounce leaves no trace of it).
    """
    if not email.strip():
        raise InvalidArgument(FieldViolation("email", "is required"))
    inserted = await conn.fetchval(
        "INSERT INTO suppressions (workspace_id, address_hash, address, reason, created_at)"
        " SELECT w.id, address_hash(w.suppression_key, $2),"
        "   CASE WHEN $4 THEN normalised_address($2) END, $3, $5"
        " FROM workspaces w WHERE w.id = $1"
        " ON CONFLICT (workspace_id, address_hash) DO UPDATE SET"
        "   address = CASE WHEN $4 AND suppressions.reason <> $6 AND EXCLUDED.reason <> $6"
        "            THEN coalesce(suppressions.address, EXCLUDED.address) END,"
        "   reason = CASE WHEN EXCLUDED.reason = $6 THEN EXCLUDED.reason"
        "            ELSE suppressions.reason END"
        " RETURNING xmax = 0",
        uuid.UUID(workspace_id),
        email,
        reason,
        keep_address,
        clock.now(),
        ERASED,
    )
    if inserted is None:
        raise InvalidArgument(FieldViolation("workspace_id", "no such workspace"))
    return bool(inserted)


async def unsuppress(conn: asyncpg.Connection, workspace_id: str, email: str) -> int | None:
    """Lift a MANUAL or GLOBAL_UNSUBSCRIBE entry. The reason of the entry found (removed only
    when in :data:`REMOVABLE`), or None when the address is not listed."""
    row = await conn.fetchrow(
        "SELECT s.reason FROM suppressions s JOIN workspaces w ON w.id = s.workspace_id"
        " WHERE s.workspace_id = $1 AND s.address_hash = address_hash(w.suppression_key, $2)"
        " FOR UPDATE OF s",
        uuid.UUID(workspace_id),
        email,
    )
    if row is None:
        return None
    if row["reason"] in REMOVABLE:
        await conn.execute(
            "DELETE FROM suppressions s USING workspaces w WHERE w.id = s.workspace_id"
            " AND s.workspace_id = $1 AND s.address_hash = address_hash(w.suppression_key, $2)",
            uuid.UUID(workspace_id),
            email,
        )
    return int(row["reason"])


@dataclass(frozen=True)
class Entry:
    """One entry as listed: the address is empty when only its hash is kept."""

    address: str
    reason: int
    created_at: datetime
    address_hash: bytes


async def lookup(conn: asyncpg.Connection, workspace_id: str, email: str) -> Entry | None:
    """The entry of ``email``, or None when it is not suppressed."""
    row = await conn.fetchrow(
        "SELECT s.address, s.reason, s.created_at, s.address_hash FROM suppressions s"
        " JOIN workspaces w ON w.id = s.workspace_id"
        " WHERE s.workspace_id = $1 AND s.address_hash = address_hash(w.suppression_key, $2)",
        uuid.UUID(workspace_id),
        email,
    )
    return None if row is None else _entry(row)


def _entry(row: asyncpg.Record) -> Entry:
    return Entry(row["address"] or "", row["reason"], row["created_at"], row["address_hash"])


def _page_token(entry: Entry) -> str:
    key = f"{entry.created_at.isoformat()}|{entry.address_hash.hex()}"
    return base64.urlsafe_b64encode(key.encode()).decode()


def _parse_page_token(token: str) -> tuple[datetime, bytes]:
    try:
        created, digest = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return datetime.fromisoformat(created), bytes.fromhex(digest)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidArgument(FieldViolation("page_token", "is not a token we gave")) from err


async def list_entries(
    conn: asyncpg.Connection, workspace_id: str, reason: int, page_size: int, page_token: str
) -> tuple[list[Entry], str]:
    """One page of the list, newest first, of one reason (0: all); and the next page's token
    (empty on the last page)."""
    after = _parse_page_token(page_token) if page_token else None
    rows = await conn.fetch(
        "SELECT address, reason, created_at, address_hash FROM suppressions"
        " WHERE workspace_id = $1 AND ($2 = 0 OR reason = $2)"
        "   AND ($3::timestamptz IS NULL OR (created_at, address_hash) < ($3, $4::bytea))"
        " ORDER BY created_at DESC, address_hash DESC LIMIT $5",
        uuid.UUID(workspace_id),
        reason,
        after[0] if after else None,
        after[1] if after else None,
        page_size + 1,
    )
    entries = [_entry(r) for r in rows[:page_size]]
    return entries, _page_token(entries[-1]) if len(rows) > page_size else ""
