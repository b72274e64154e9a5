"""The contacts schema's side of export and erasure: one contact's rows, and their removal.
Every query names its workspace."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from nudge.contacts.v1 import contacts_pb2

from services.common.ids import is_uuid
from services.common.privacy import delete_contact_rows, export_contact_tables
from services.contacts.domain.model import normalize_email


@dataclass(frozen=True)
class Erasure:
    contact_id: uuid.UUID
    version: int
    erased_at: datetime


async def resolve(
    conn: asyncpg.Connection, workspace_id: str, ref: contacts_pb2.ContactRef, *, lock: bool
) -> tuple[uuid.UUID, str] | None:
    """The id and address of the contact ``ref`` names, or None; ``lock`` holds its row
    until the transaction ends (no change of it commits in between)."""
    which = ref.WhichOneof("ref")
    arg: Any
    if which == "contact_id":
        if not is_uuid(ref.contact_id):
            return None
        where, arg = "id = $2", uuid.UUID(ref.contact_id)
    elif which == "external_id":
        where, arg = "external_id = $2", ref.external_id
    else:
        where, arg = "lower(email) = $2", normalize_email(ref.email)
    row = await conn.fetchrow(
        f"SELECT id, email FROM contacts WHERE workspace_id = $1 AND {where}"
        + (" FOR UPDATE" if lock else ""),
        uuid.UUID(workspace_id),
        arg,
    )
    return None if row is None else (row["id"], row["email"])


async def find_erasure(
    conn: asyncpg.Connection, workspace_id: str, ref: contacts_pb2.ContactRef
) -> Erasure | None:
    """The erasure of the contact ``ref`` names, when it names one by id (an erased
    contact's address and external id are gone, so only its id can still name it)."""
    if ref.WhichOneof("ref") != "contact_id" or not is_uuid(ref.contact_id):
        return None
    row = await conn.fetchrow(
        "SELECT erased_id, version, erased_at FROM erasures"
        " WHERE workspace_id = $1 AND erased_id = $2",
        uuid.UUID(workspace_id),
        uuid.UUID(ref.contact_id),
    )
    return None if row is None else Erasure(row["erased_id"], row["version"], row["erased_at"])


async def contact_data(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> dict[str, Any]:
    """Everything the contacts schema keeps about the contact: its row (every column) under
    ``contact``, and the rows of every table keyed by it (consent history with IP and user
    agent, current consents, ingested-event claims, ...) under their table's name."""
    row = await conn.fetchval(
        "SELECT to_jsonb(c)::text FROM contacts c WHERE c.workspace_id = $1 AND c.id = $2",
        uuid.UUID(workspace_id),
        contact_id,
    )
    data: dict[str, Any] = {"contact": json.loads(row)} if row is not None else {}
    data.update(await export_contact_tables(conn, workspace_id, contact_id))
    return data


async def delete_contact(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> None:
    """Delete the contact's rows from every table keyed by it, then the contact itself."""
    await delete_contact_rows(conn, workspace_id, contact_id)
    await conn.execute(
        "DELETE FROM contacts WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace_id),
        contact_id,
    )


async def record_erasure(conn: asyncpg.Connection, workspace_id: str, erasure: Erasure) -> None:
    await conn.execute(
        "INSERT INTO erasures (workspace_id, erased_id, version, erased_at)"
        " VALUES ($1, $2, $3, $4)",
        uuid.UUID(workspace_id),
        erasure.contact_id,
        erasure.version,
        erasure.erased_at,
    )
