"""What delivery holds about a contact, and how it forgets it (issue 12, docs/privacy.md).

The message ledger keeps one row per message: which contact, which campaign or workflow,
what happened, and the SMTP server's answer (``detail``), which may quote the recipient's
address (``550 5.1.1 <ada@example.com>: no such user``). The address itself and the
rendered mail are never stored (the mail is built from contacts' answer just before the
hand-off, services/delivery/handlers.py).

On ``ContactErased`` the rows stay, so that sends, bounces and skips still count in the
statistics, but pseudonymised: the SMTP answer is cleared and the contact id is replaced
by a random id, one per erasure (messages of one recipient still count as one recipient,
and nothing links them to the old id, which old Kafka records still pair with the address).
Events not yet published for the contact are dropped.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from services.common.privacy import export_contact_tables, forget_pending_events

CONSUMER = "delivery-privacy"
SERVICE = "delivery"
ERASED_DETAIL = "erased"


async def export_contact(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> dict[str, Any]:
    """The ledger's rows about the contact (``{"messages": [...]}``), empty when none."""
    return await export_contact_tables(conn, workspace_id, contact_id)


async def erase_contact(conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID) -> None:
    """Pseudonymise the contact's ledger rows and drop its pending events, in the caller's
    transaction (with the consumer's claim of the ``ContactErased``). Requests kept to be
    sent again (``pending_sends``: a deferred or transactional mail) are deleted: their
    content is the contact's, and the contact can no longer be mailed."""
    await conn.execute(
        "DELETE FROM pending_sends WHERE workspace_id = $1 AND contact_id = $2",
        uuid.UUID(workspace_id),
        contact_id,
    )
    await conn.execute(
        "DELETE FROM transactional_keys WHERE workspace_id = $1 AND contact_id = $2",
        uuid.UUID(workspace_id),
        contact_id,
    )
    # The history's SMTP answers may quote the address too (migrations/0070).
    await conn.execute(
        "UPDATE message_history SET detail = $3 WHERE message_id IN ("
        " SELECT message_id FROM messages WHERE workspace_id = $1 AND contact_id = $2)",
        uuid.UUID(workspace_id),
        contact_id,
        ERASED_DETAIL,
    )
    await conn.execute(
        "UPDATE messages SET contact_id = $3, detail = $4"
        " WHERE workspace_id = $1 AND contact_id = $2",
        uuid.UUID(workspace_id),
        contact_id,
        uuid.uuid4(),
        ERASED_DETAIL,
    )
    await forget_pending_events(conn, contact_id)
