"""What the trigger engine holds about a contact, and how it forgets it (issue 12,
docs/privacy.md): its runs and the steps they took, their pending timers, what the engine
knows of the contact (``contact_facts``: tags, attributes, segments, money spent), its
recent events, the mail sent to it (``contact_sends``) and the tag and score commands not
yet carried out. Every table of the triggers schema with a ``workspace_id`` and a
``contact_id`` is exported, and on ``ContactErased`` emptied of the contact's rows: the runs
end, their timers are cancelled (deleted, so they never fire), pending commands are
dropped, and messages not yet published for the contact are dropped too.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from services.common.privacy import (
    delete_contact_rows,
    export_contact_tables,
    forget_pending_events,
)
from services.triggers.runtime.erasure import ERASURE_LOCK

CONSUMER = "triggers-privacy"
SERVICE = "triggers"


async def export_contact(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> dict[str, Any]:
    """``{table: [rows]}`` about the contact (``runs``, ``timers``...), empty when none."""
    return await export_contact_tables(conn, workspace_id, contact_id)


async def hold_for_erasure(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> None:
    """The erasure's first step: its lock, exclusive (waiting for the events being recorded
    about the contact), then the contact's runs, locked (waiting for those being advanced)."""
    await conn.execute(
        f"SELECT {ERASURE_LOCK.format('')} FROM (VALUES ($1::uuid, $2::uuid)) AS q(w, c)",
        workspace_id,
        contact_id,
    )
    await conn.execute(
        "SELECT 1 FROM runs WHERE workspace_id = $1 AND contact_id = $2 FOR UPDATE",
        uuid.UUID(workspace_id),
        contact_id,
    )


async def erase_contact(conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID) -> None:
    """Delete the contact's runs and per-contact state, and its pending events, in the
    caller's transaction (with the consumer's claim of the ``ContactErased``).

    Events being recorded about the contact are waited for first (the erasure lock,
    runtime/erasure.py), and so are the runs being advanced (their row locks): what they
    write is committed before the rows are deleted, and what comes after them sees the
    erasure and writes nothing; the timer loop drops the timers of a contact held here
    rather than fire them or put them back behind the deletes (runtime/timers.py)."""
    await hold_for_erasure(conn, workspace_id, contact_id)
    await delete_contact_rows(conn, workspace_id, contact_id)
    await forget_pending_events(conn, contact_id)
    # Later events about the contact (segmentation's REMOVAL exits...) must not write its
    # facts back: the event path skips erased contacts.
    await conn.execute(
        "INSERT INTO erased_contacts (workspace_id, erased_contact) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING",
        uuid.UUID(workspace_id),
        contact_id,
    )
