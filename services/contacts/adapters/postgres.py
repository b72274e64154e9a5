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

from services.common.errors import AlreadyExists, NotFound
from services.contacts.adapters import filters
from services.contacts.domain.model import NewContact, normalize_email

SCHEMA = "contacts"

CONTACT_COLUMNS = (
    "id, workspace_id, email, external_id, first_name, last_name, locale, time_zone,"
    " birthday_year, birthday_month, birthday_day, signed_up_at, attributes, vip, tags, score,"
    " created_at, updated_at, version"
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
    c.version = row["version"]
    return c


def row_to_new_contact(row: asyncpg.Record) -> NewContact:
    """A stored contact's profile as the domain's value, to patch and validate."""
    birthday = (
        (row["birthday_year"] or 0, row["birthday_month"], row["birthday_day"])
        if row["birthday_month"]
        else None
    )
    return NewContact(
        email=row["email"],
        external_id=row["external_id"] or "",
        first_name=row["first_name"],
        last_name=row["last_name"],
        locale=row["locale"],
        time_zone=row["time_zone"],
        birthday=birthday,
        signed_up_at=row["signed_up_at"],
        attributes=json.loads(row["attributes"]),
        vip=row["vip"],
        tags=list(row["tags"]),
    )


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
        " $16, $16, 1) ON CONFLICT DO NOTHING"
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
    conn: asyncpg.Connection,
    workspace_id: str,
    ref: contacts_pb2.ContactRef,
    *,
    for_update: bool = False,
) -> asyncpg.Record:
    """The contact ``ref`` names in the workspace (NotFound otherwise); ``for_update`` locks
    its row until the transaction ends, so a read-modify-write is not lost to another."""
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
        f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE workspace_id = $1 AND {where}"
        + (" FOR UPDATE" if for_update else ""),
        uuid.UUID(workspace_id),
        arg,
    )
    if row is None:
        raise NotFound("contact not found")
    return row


async def find_contact_by_external_id(
    conn: asyncpg.Connection, workspace_id: str, external_id: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE workspace_id = $1 AND external_id = $2"
        " FOR UPDATE",
        uuid.UUID(workspace_id),
        external_id,
    )


async def update_profile(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID, c: NewContact
) -> None:
    """Write every profile field of ``c`` (the caller bumps the version and publishes). An
    e-mail or external id another contact of the workspace has is AlreadyExists, and the
    transaction must then end (PostgreSQL aborted it)."""
    birthday = c.birthday or (None, None, None)
    try:
        await conn.execute(
            "UPDATE contacts SET email = $3, external_id = $4, first_name = $5, last_name = $6,"
            " locale = $7, time_zone = $8, birthday_year = $9, birthday_month = $10,"
            " birthday_day = $11, signed_up_at = $12, attributes = $13::jsonb, vip = $14,"
            " tags = $15 WHERE workspace_id = $1 AND id = $2",
            uuid.UUID(workspace_id),
            contact_id,
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
        )
    except asyncpg.UniqueViolationError as err:
        what = "external_id" if "external_id" in (err.constraint_name or "") else "email"
        raise AlreadyExists(f"another contact of the workspace has this {what}") from err


async def contact_by_id(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace_id),
        contact_id,
    )
    if row is None:
        raise NotFound("contact not found")
    return row


async def set_tags(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID, tags: list[str]
) -> None:
    await conn.execute(
        "UPDATE contacts SET tags = $3 WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace_id),
        contact_id,
        tags,
    )


async def delete_contact(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> None:
    """The contact and its consent history (not its suppressions: those are about the
    address, which a deleted contact's shop may still not mail)."""
    ws = uuid.UUID(workspace_id)
    await conn.execute(
        "DELETE FROM consent_events WHERE workspace_id = $1 AND contact_id = $2", ws, contact_id
    )
    await conn.execute(
        "DELETE FROM consents WHERE workspace_id = $1 AND contact_id = $2", ws, contact_id
    )
    await conn.execute("DELETE FROM contacts WHERE workspace_id = $1 AND id = $2", ws, contact_id)


async def list_contacts(
    conn: asyncpg.Connection,
    workspace_id: str,
    f: contacts_pb2.ContactFilter,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Up to ``limit`` contacts matching ``f``, in (created_at, id) order, after ``after``
    (keyset pagination: no OFFSET, a page costs the same wherever it is)."""
    where, params = filters.where_clause(f, uuid.UUID(workspace_id), alias="c", first_param=1)
    n = len(params)
    if after is not None:
        where += f" AND (c.created_at, c.id) > (${n + 1}::timestamptz, ${n + 2}::uuid)"
        params += [after[0], after[1]]
    params.append(limit)
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {', '.join('c.' + col.strip() for col in CONTACT_COLUMNS.split(','))}"
        f" FROM contacts AS c WHERE {where} ORDER BY c.created_at, c.id LIMIT ${len(params)}",
        *params,
    )
    return rows


@dataclass(frozen=True)
class TagChange:
    contact_id: uuid.UUID
    tags: list[str]
    added: list[str]
    removed: list[str]
    version: int


async def bulk_modify_tags(
    conn: asyncpg.Connection,
    workspace_id: str,
    f: contacts_pb2.ContactFilter,
    add: list[str],
    remove: list[str],
    now: datetime,
) -> tuple[int, list[TagChange]]:
    """Add and remove tags on every contact ``f`` matches, in one statement: how many it
    matched, and the contacts it changed (each with its version bumped once). A contact
    whose tags are already so is not touched. Rows are locked in id order, so two bulk
    changes over overlapping contacts wait for each other instead of deadlocking."""
    where, params = filters.where_clause(f, uuid.UUID(workspace_id), alias="c", first_param=1)
    n = len(params)
    rows = await conn.fetch(
        "WITH matched AS ("
        f"  SELECT c.workspace_id, c.id, c.tags FROM contacts AS c WHERE {where}"
        "   ORDER BY c.id FOR UPDATE),"
        " target AS ("
        "  SELECT m.workspace_id, m.id, m.tags AS old_tags,"
        f"   ARRAY(SELECT DISTINCT t FROM unnest(m.tags || ${n + 1}::text[]) AS t"
        f"         WHERE NOT (t = ANY(${n + 2}::text[])) OR t = ANY(${n + 1}::text[])"
        "         ORDER BY t) AS new_tags"
        "  FROM matched m),"
        " changed AS ("
        "  UPDATE contacts AS u SET tags = t.new_tags, version = u.version + 1,"
        f"   updated_at = ${n + 3}"
        "  FROM target t WHERE u.workspace_id = t.workspace_id AND u.id = t.id"
        "   AND t.new_tags <> t.old_tags"
        "  RETURNING u.id, u.tags, u.version, t.old_tags)"
        " SELECT NULL::uuid AS id, NULL::text[] AS tags, NULL::bigint AS version,"
        "  NULL::text[] AS old_tags, (SELECT count(*) FROM matched) AS matched"
        " UNION ALL SELECT id, tags, version, old_tags, NULL FROM changed",
        *params,
        sorted(set(add)),
        sorted(set(remove) - set(add)),
        now,
    )
    matched = 0
    changes = []
    for row in rows:
        if row["id"] is None:
            matched = int(row["matched"])
            continue
        old, new = set(row["old_tags"]), list(row["tags"])
        changes.append(
            TagChange(
                contact_id=row["id"],
                tags=new,
                added=sorted(set(new) - old),
                removed=sorted(old - set(new)),
                version=int(row["version"]),
            )
        )
    changes.sort(key=lambda c: c.contact_id)
    return matched, changes


async def adjust_score(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: uuid.UUID,
    delta: int,
    now: datetime,
) -> tuple[int, int] | None:
    """``score = score + delta`` in one statement (no read-modify-write to lose an update),
    the version bumped with it: the new (score, version), or None when the sum would leave
    int64 (then nothing changed)."""
    try:
        row = await conn.fetchrow(
            "UPDATE contacts SET score = score + $3, version = version + 1, updated_at = $4"
            " WHERE workspace_id = $1 AND id = $2 RETURNING score, version",
            uuid.UUID(workspace_id),
            contact_id,
            delta,
            now,
        )
    except asyncpg.NumericValueOutOfRangeError:
        return None
    if row is None:
        raise NotFound("contact not found")
    return int(row["score"]), int(row["version"])


async def find_score_adjustment(
    conn: asyncpg.Connection, workspace_id: str, key: str
) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT contact_id, delta, score, version FROM score_adjustments"
        " WHERE workspace_id = $1 AND idempotency_key = $2",
        uuid.UUID(workspace_id),
        key,
    )


async def claim_score_adjustment(
    conn: asyncpg.Connection,
    workspace_id: str,
    key: str,
    contact_id: uuid.UUID,
    delta: int,
    now: datetime,
) -> bool:
    """Claim the idempotency key (placeholder result, filled by
    :func:`record_score_adjustment`); False when it is taken. A concurrent call with the same
    key waits here for the first to commit, then finds it taken."""
    inserted = await conn.fetchval(
        "INSERT INTO score_adjustments (workspace_id, idempotency_key, contact_id, delta, score,"
        " version, created_at) VALUES ($1, $2, $3, $4, 0, 0, $5)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        uuid.UUID(workspace_id),
        key,
        contact_id,
        delta,
        now,
    )
    return inserted is not None


async def record_score_adjustment(
    conn: asyncpg.Connection, workspace_id: str, key: str, score: int, version: int
) -> None:
    await conn.execute(
        "UPDATE score_adjustments SET score = $3, version = $4"
        " WHERE workspace_id = $1 AND idempotency_key = $2",
        uuid.UUID(workspace_id),
        key,
        score,
        version,
    )


async def claim_tag_change(
    conn: asyncpg.Connection,
    workspace_id: str,
    key: str,
    contact_id: uuid.UUID,
    add: list[str],
    remove: list[str],
    now: datetime,
) -> asyncpg.Record | None:
    """Claim the idempotency key for this change (its version filled by
    :func:`record_tag_change`): None when claimed now, else the first call's row. A
    concurrent call with the same key waits here for the first to commit."""
    inserted = await conn.fetchval(
        "INSERT INTO tag_changes (workspace_id, idempotency_key, contact_id, add_tags,"
        " remove_tags, version, created_at) VALUES ($1, $2, $3, $4, $5, 0, $6)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        uuid.UUID(workspace_id),
        key,
        contact_id,
        sorted(set(add)),
        sorted(set(remove)),
        now,
    )
    if inserted is not None:
        return None
    return await conn.fetchrow(
        "SELECT contact_id, add_tags, remove_tags, version FROM tag_changes"
        " WHERE workspace_id = $1 AND idempotency_key = $2",
        uuid.UUID(workspace_id),
        key,
    )


async def record_tag_change(
    conn: asyncpg.Connection, workspace_id: str, key: str, version: int
) -> None:
    await conn.execute(
        "UPDATE tag_changes SET version = $3 WHERE workspace_id = $1 AND idempotency_key = $2",
        uuid.UUID(workspace_id),
        key,
        version,
    )


async def declared_attributes(conn: asyncpg.Connection, workspace_id: str) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT name, type FROM attribute_definitions WHERE workspace_id = $1",
        uuid.UUID(workspace_id),
    )
    return {r["name"]: int(r["type"]) for r in rows}


async def define_attribute(
    conn: asyncpg.Connection,
    workspace_id: str,
    name: str,
    kind: int,
    description: str,
    now: datetime,
) -> tuple[asyncpg.Record, bool]:
    """The definition as stored, and whether this call created it. An existing definition
    keeps its type (the caller refuses another); its description is updated."""
    ws = uuid.UUID(workspace_id)
    row = await conn.fetchrow(
        "INSERT INTO attribute_definitions (workspace_id, name, type, description, created_at)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (workspace_id, name) DO NOTHING"
        " RETURNING name, type, description, created_at",
        ws,
        name,
        kind,
        description,
        now,
    )
    if row is not None:
        return row, True
    row = await conn.fetchrow(
        "UPDATE attribute_definitions SET description = CASE WHEN type = $3 THEN $4"
        " ELSE description END WHERE workspace_id = $1 AND name = $2"
        " RETURNING name, type, description, created_at",
        ws,
        name,
        kind,
        description,
    )
    assert row is not None
    return row, False


async def count_attribute_definitions(conn: asyncpg.Connection, workspace_id: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM attribute_definitions WHERE workspace_id = $1",
            uuid.UUID(workspace_id),
        )
    )


async def list_attributes(conn: asyncpg.Connection, workspace_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT name, type, description, created_at FROM attribute_definitions"
        " WHERE workspace_id = $1 ORDER BY name",
        uuid.UUID(workspace_id),
    )
    return rows


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
