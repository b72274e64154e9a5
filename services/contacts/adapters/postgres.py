"""The contacts schema in PostgreSQL. Every query names its workspace."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from nudge.contacts.v1 import contacts_pb2

from services.common.errors import NotFound
from services.contacts.domain.model import NewContact, normalize_email
from services.contacts.suppression import suppressed_reason_sql

SCHEMA = "contacts"

CONTACT_COLUMNS = (
    "id, workspace_id, email, external_id, first_name, last_name, locale, time_zone,"
    " birthday_year, birthday_month, birthday_day, signed_up_at, attributes, vip, tags, score,"
    " created_at, updated_at"
)


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as err:
        raise NotFound(f"{what} {value!r} not found") from err


def contact_to_proto(row: asyncpg.Record) -> contacts_pb2.Contact:
    c = contacts_pb2.Contact(
        id=str(row["id"]),
        workspace_id=str(row["workspace_id"]),
        email=row["email"],
        external_id=row["external_id"] or "",
        first_name=row["first_name"],
        last_name=row["last_name"],
        locale=row["locale"],
        time_zone=row["time_zone"],
        attributes=json.loads(row["attributes"]),
        vip=row["vip"],
        tags=list(row["tags"]),
        score=row["score"],
    )
    if row["birthday_month"]:
        c.birthday.year = row["birthday_year"] or 0
        c.birthday.month = row["birthday_month"]
        c.birthday.day = row["birthday_day"]
    if row["signed_up_at"]:
        c.signed_up_at.FromDatetime(row["signed_up_at"])
    c.created_at.FromDatetime(row["created_at"])
    c.updated_at.FromDatetime(row["updated_at"])
    return c


async def insert_workspace(
    conn: asyncpg.Connection, name: str, slug: str, consent_required: bool
) -> uuid.UUID | None:
    """The new workspace's id, or None when the slug is taken."""
    workspace_id = uuid.uuid4()
    inserted = await conn.fetchval(
        "INSERT INTO workspaces (id, name, slug, consent_required_for_campaigns)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (slug) DO NOTHING RETURNING id",
        workspace_id,
        name,
        slug,
        consent_required,
    )
    return inserted  # type: ignore[no-any-return]


async def insert_api_key(
    conn: asyncpg.Connection, workspace_id: uuid.UUID, key_id: str, key_hash: str
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (key_id, workspace_id, key_hash) VALUES ($1, $2, $3)",
        key_id,
        workspace_id,
        key_hash,
    )


async def find_api_key(conn: asyncpg.Connection, key_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT k.key_hash, k.workspace_id, w.name FROM api_keys k"
        " JOIN workspaces w ON w.id = k.workspace_id"
        " WHERE k.key_id = $1 AND k.revoked_at IS NULL",
        key_id,
    )


async def find_workspace_by_slug(conn: asyncpg.Connection, slug: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, name FROM workspaces WHERE slug = $1", slug)


async def insert_contact(
    conn: asyncpg.Connection, workspace_id: str, c: NewContact, now: datetime
) -> asyncpg.Record | None:
    """The new row, or None when the e-mail or external id is already in the workspace."""
    birthday = c.birthday or (None, None, None)
    return await conn.fetchrow(
        f"INSERT INTO contacts ({CONTACT_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14, $15, 0,"
        " $16, $16) ON CONFLICT DO NOTHING"
        f" RETURNING {CONTACT_COLUMNS}",
        uuid.uuid4(),
        uuid.UUID(workspace_id),
        c.email.strip(),
        c.external_id or None,
        c.first_name,
        c.last_name,
        c.locale,
        c.time_zone,
        birthday[0] or None,
        birthday[1],
        birthday[2],
        c.signed_up_at,
        json.dumps(c.attributes),
        c.vip,
        sorted(set(c.tags)),
        now,
    )


async def find_contact(
    conn: asyncpg.Connection, workspace_id: str, ref: contacts_pb2.ContactRef
) -> asyncpg.Record:
    which = ref.WhichOneof("ref")
    where: str
    arg: Any
    if which == "contact_id":
        where, arg = "id = $2", _uuid(ref.contact_id, "contact")
    elif which == "external_id":
        where, arg = "external_id = $2", ref.external_id
    elif which == "email":
        where, arg = "lower(email) = $2", normalize_email(ref.email)
    else:
        raise NotFound("contact not found")
    row = await conn.fetchrow(
        f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE workspace_id = $1 AND {where}",
        uuid.UUID(workspace_id),
        arg,
    )
    if row is None:
        raise NotFound("contact not found")
    return row


async def record_consent(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: uuid.UUID,
    purpose: int,
    status: int,
    source: int,
    wording: str,
    actor: str,
    now: datetime,
) -> uuid.UUID:
    event_id = uuid.uuid4()
    ws = uuid.UUID(workspace_id)
    await conn.execute(
        "INSERT INTO consent_events (id, workspace_id, contact_id, purpose, status, source,"
        " wording, actor, recorded_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        event_id,
        ws,
        contact_id,
        purpose,
        status,
        source,
        wording,
        actor,
        now,
    )
    await conn.execute(
        "INSERT INTO consents (workspace_id, contact_id, purpose, status, updated_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workspace_id, contact_id, purpose)"
        " DO UPDATE SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
        ws,
        contact_id,
        purpose,
        status,
        now,
    )
    return event_id


async def eligibility_facts(
    conn: asyncpg.Connection, workspace_id: str, contact_id: str, purpose: int
) -> asyncpg.Record:
    row = await conn.fetchrow(
        "SELECT c.email, c.first_name, c.last_name, c.locale, w.name AS workspace_name,"
        " w.consent_required_for_campaigns,"
        " (SELECT status FROM consents s WHERE s.workspace_id = c.workspace_id"
        "   AND s.contact_id = c.id AND s.purpose = $3) AS consent,"
        f" {suppressed_reason_sql('c', 'w')} AS suppressed_reason"
        " FROM contacts c JOIN workspaces w ON w.id = c.workspace_id"
        " WHERE c.workspace_id = $1 AND c.id = $2",
        uuid.UUID(workspace_id),
        _uuid(contact_id, "contact"),
        purpose,
    )
    if row is None:
        raise NotFound("contact not found")
    return row


async def resolve_contacts(
    conn: asyncpg.Connection, refs: Sequence[tuple[uuid.UUID, contacts_pb2.ContactRef]]
) -> list[uuid.UUID | None]:
    """The contact each ``(workspace, ref)`` names, or None, in one query for all of them
    (an id that is not a UUID names no contact)."""
    by_kind: dict[str, tuple[list[int], list[uuid.UUID], list[Any]]] = {
        "contact_id": ([], [], []),
        "external_id": ([], [], []),
        "email": ([], [], []),
    }
    for n, (workspace_id, ref) in enumerate(refs):
        which = ref.WhichOneof("ref")
        if which == "contact_id":
            try:
                value: Any = uuid.UUID(ref.contact_id)
            except ValueError:
                continue
        elif which == "external_id":
            value = ref.external_id
        elif which == "email":
            value = normalize_email(ref.email)
        else:
            continue
        ns, workspaces, values = by_kind[which]
        ns.append(n)
        workspaces.append(workspace_id)
        values.append(value)
    rows = await conn.fetch(
        "SELECT r.n, c.id FROM unnest($1::int[], $2::uuid[], $3::uuid[]) AS r(n, ws, v)"
        " JOIN contacts c ON c.workspace_id = r.ws AND c.id = r.v"
        " UNION ALL"
        " SELECT r.n, c.id FROM unnest($4::int[], $5::uuid[], $6::text[]) AS r(n, ws, v)"
        " JOIN contacts c ON c.workspace_id = r.ws AND c.external_id = r.v"
        " UNION ALL"
        " SELECT r.n, c.id FROM unnest($7::int[], $8::uuid[], $9::text[]) AS r(n, ws, v)"
        " JOIN contacts c ON c.workspace_id = r.ws AND lower(c.email) = r.v",
        *by_kind["contact_id"],
        *by_kind["external_id"],
        *by_kind["email"],
    )
    found: list[uuid.UUID | None] = [None] * len(refs)
    for row in rows:
        found[row["n"]] = row["id"]
    return found


@dataclass(frozen=True)
class IngestionClaim:
    """An idempotency key to claim for a new event."""

    workspace_id: uuid.UUID
    idempotency_key: str
    event_id: uuid.UUID
    contact_id: uuid.UUID
    payload_hash: bytes


@dataclass(frozen=True)
class HeldClaim:
    """Who holds a key already: the event first sent with it."""

    event_id: uuid.UUID
    contact_id: uuid.UUID
    payload_hash: bytes | None  # None for claims older than migration 0002


async def claim_ingestions(
    conn: asyncpg.Connection, claims: Sequence[IngestionClaim], now: datetime
) -> dict[tuple[uuid.UUID, str], HeldClaim]:
    """Claim every key not seen before (one statement); returns the claims that were held
    already, by ``(workspace, key)``. Keys must be distinct. Rows are inserted in key order,
    so two transactions claiming overlapping keys wait for each other instead of deadlocking;
    a key another transaction is claiming right now is answered once that one commits."""
    ordered = sorted(claims, key=lambda c: (c.workspace_id, c.idempotency_key))
    inserted = await conn.fetch(
        "INSERT INTO ingested_events (workspace_id, idempotency_key, event_id, contact_id,"
        " created_at, payload_hash)"
        " SELECT ws, k, e, c, $5, h FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[],"
        " $6::bytea[]) WITH ORDINALITY AS r(ws, k, e, c, h, n) ORDER BY n"
        " ON CONFLICT DO NOTHING RETURNING workspace_id, idempotency_key",
        [c.workspace_id for c in ordered],
        [c.idempotency_key for c in ordered],
        [c.event_id for c in ordered],
        [c.contact_id for c in ordered],
        now,
        [c.payload_hash for c in ordered],
    )
    new = {(r["workspace_id"], r["idempotency_key"]) for r in inserted}
    seen = [c for c in ordered if (c.workspace_id, c.idempotency_key) not in new]
    if not seen:
        return {}
    rows = await conn.fetch(
        "SELECT e.workspace_id, e.idempotency_key, e.event_id, e.contact_id, e.payload_hash"
        " FROM unnest($1::uuid[], $2::text[]) AS r(ws, k)"
        " JOIN ingested_events e ON e.workspace_id = r.ws AND e.idempotency_key = r.k",
        [c.workspace_id for c in seen],
        [c.idempotency_key for c in seen],
    )
    return {
        (r["workspace_id"], r["idempotency_key"]): HeldClaim(
            r["event_id"], r["contact_id"], r["payload_hash"]
        )
        for r in rows
    }


async def consent_statuses(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> dict[int, int] | None:
    """Purpose -> current status, or None when the contact does not exist."""
    rows = await conn.fetch(
        "SELECT c.id, s.purpose, s.status FROM contacts c"
        " LEFT JOIN consents s ON s.workspace_id = c.workspace_id AND s.contact_id = c.id"
        " WHERE c.workspace_id = $1 AND c.id = $2 FOR UPDATE OF c",
        uuid.UUID(workspace_id),
        contact_id,
    )
    if not rows:
        return None
    return {r["purpose"]: r["status"] for r in rows if r["purpose"] is not None}
