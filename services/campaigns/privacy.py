"""What campaigns holds about a contact, and how it forgets it (issue 12, docs/privacy.md).

Per campaign, one ``recipients`` row per contact the fan-out reached (mailed or left out,
with the outcome and engagement the report counts) and, for an order attributed to a
campaign, an ``attributions`` row. No address or name is stored: the call list asks
contacts for them page by page.

``ExportContactData`` returns every row of the campaigns schema with the contact's id
(:func:`services.common.privacy.export_contact_tables`). On ``ContactErased`` the rows stay,
so that a sent campaign's report does not change after the fact, but pseudonymised: the
contact id is replaced by a random id, one per erasure, in both tables (the contact's rows
still count as one recipient, and nothing links them to the old id). The frequency cap no
longer sees them, which does not matter: the contact cannot be mailed again.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from services.common.privacy import export_contact_tables

CONSUMER = "campaigns-privacy"
SERVICE = "campaigns"


async def export_contact(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> dict[str, Any]:
    return await export_contact_tables(conn, workspace_id, contact_id)


async def erase_contact(conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID) -> None:
    """Pseudonymise the contact's recipients and attributions rows, in the caller's
    transaction (with the consumer's claim of the ``ContactErased``)."""
    alias = uuid.uuid4()
    for table in ("recipients", "attributions"):
        await conn.execute(
            f"UPDATE {table} SET contact_id = $3 WHERE workspace_id = $1 AND contact_id = $2",
            uuid.UUID(workspace_id),
            contact_id,
            alias,
        )
