"""What campaigns holds about a contact (issue 12, docs/privacy.md).

Today: nothing. Campaigns keep segment ids, never recipients; the audience is read from
segmentation when a send is built (a later issue). ``ExportContactData`` nevertheless looks
at every table of the campaigns schema with a ``workspace_id`` and a ``contact_id``
column, so a recipient list added later shows in exports at once. Erasure has nothing to
remove, so campaigns does not consume ``ContactErased``; the issue that adds per-recipient
rows must add that consumer too (services/common/privacy.py ``ContactErasedConsumer``).
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from services.common.privacy import export_contact_tables

SERVICE = "campaigns"


async def export_contact(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> dict[str, Any]:
    return await export_contact_tables(conn, workspace_id, contact_id)
