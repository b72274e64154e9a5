"""How a committed change of a contact is published: exactly one event on contacts.events.v1,
written to the outbox in the change's own transaction and carrying the contact's version
after it. Every use case that changes a contact goes through here, so that the version
sequence of a contact has no gaps or repeats a read model could trip on.

A rolled-back transaction publishes nothing (the outbox row rolls back with it); a change
that changes nothing must not call :func:`bump_version` (no event, no new version).
"""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg
from google.protobuf.message import Message

from services.common.errors import NotFound
from services.common.events import new_envelope
from services.common.outbox import add_to_outbox
from services.common.topics import CONTACTS_EVENTS

SCHEMA = "contacts"


async def bump_version(
    conn: asyncpg.Connection, workspace_id: str | uuid.UUID, contact_id: uuid.UUID, now: datetime
) -> int:
    """Lock the contact's row, increment its version and ``updated_at``; the new version.
    Call it once per change, in the change's transaction, before publishing."""
    version = await conn.fetchval(
        "UPDATE contacts SET version = version + 1, updated_at = $3"
        " WHERE workspace_id = $1 AND id = $2 RETURNING version",
        uuid.UUID(str(workspace_id)),
        contact_id,
        now,
    )
    if version is None:
        raise NotFound("contact not found")
    return int(version)


async def publish(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: uuid.UUID | str,
    payload: Message,
    *,
    occurred_at: datetime,
    event_id: str | None = None,
) -> None:
    """Queue ``payload`` (a contacts.events.v1 message with its version set) for the topic,
    keyed by the contact, in the caller's transaction."""
    await add_to_outbox(
        conn,
        SCHEMA,
        CONTACTS_EVENTS,
        str(contact_id),
        new_envelope(workspace_id, payload, event_id=event_id, occurred_at=occurred_at),
    )
