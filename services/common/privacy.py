"""What every service that holds data about contacts needs for export and erasure (issue 12):
the rows it keeps about one contact, the pending events keyed by that contact, and the two
entry points: ``nudge.privacy.v1.ContactDataService.ExportContactData`` (asked by contacts'
PrivacyService with the internal token) and a consumer of ``ContactErased`` on
contacts.events.v1 (so a service that is down erases when it comes back).

"Rows about a contact" are found in the catalog, not listed by hand: every table of the
service's schema that has both a ``workspace_id`` and a ``contact_id`` column. A table a
later issue adds (pending timers, recipient lists) is exported, and erased where the service
deletes, without anyone remembering to add it here. The schema is the connection's
``search_path`` (services/common/db.py ``create_pool``).

The outbox and its dead letters hold serialized events keyed by the contact whose order
matters (every topic of DESIGN.md is keyed by contact id except carts): the events not yet
published for an erased contact are dropped with :func:`forget_pending_events`, so its
personal data does not reach Kafka after the erasure. What Kafka already holds stays until
the topics' retention (docs/privacy.md).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import grpc
from aiokafka import ConsumerRecord
from google.protobuf import struct_pb2
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.privacy.v1 import privacy_pb2, privacy_pb2_grpc

from services.common.auth import current_workspace
from services.common.errors import FieldViolation, InvalidArgument
from services.common.idempotency import claim_event
from services.common.ids import is_uuid

log = logging.getLogger(__name__)

CONTACT_DATA_SERVICE = "nudge.privacy.v1.ContactDataService"
# Only Nudge's own services may ask what a service holds about a contact (contacts'
# PrivacyService asks on behalf of the workspace); an API key is refused.
CONTACT_DATA_POLICY = {f"/{CONTACT_DATA_SERVICE}/ExportContactData": "internal"}

Export = Callable[[asyncpg.Connection, str, uuid.UUID], Awaitable[dict[str, Any]]]
Erase = Callable[[asyncpg.Connection, str, uuid.UUID], Awaitable[None]]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def contact_tables(conn: asyncpg.Connection, *, exclude: tuple[str, ...] = ()) -> list[str]:
    """The tables of the connection's schema with a ``workspace_id`` and a ``contact_id``
    column, by name."""
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND column_name IN ('workspace_id', 'contact_id')"
        " GROUP BY table_name HAVING count(*) = 2 ORDER BY table_name"
    )
    return [r["table_name"] for r in rows if r["table_name"] not in exclude]


async def rows_about(
    conn: asyncpg.Connection, table: str, workspace_id: str, contact_id: uuid.UUID
) -> list[dict[str, Any]]:
    """Every row of ``table`` about the contact, as JSON objects (PostgreSQL's ``to_jsonb``:
    every column, whatever a later migration adds; bytea as ``\\x`` hex)."""
    rows = await conn.fetch(
        f"SELECT to_jsonb(t)::text AS row FROM {_quote(table)} t"
        " WHERE t.workspace_id = $1 AND t.contact_id = $2",
        uuid.UUID(workspace_id),
        contact_id,
    )
    return [json.loads(r["row"]) for r in rows]


async def export_contact_tables(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: uuid.UUID,
    *,
    exclude: tuple[str, ...] = (),
) -> dict[str, Any]:
    """``{table: [rows]}`` for every contact table holding something about the contact."""
    found: dict[str, Any] = {}
    for table in await contact_tables(conn, exclude=exclude):
        rows = await rows_about(conn, table, workspace_id, contact_id)
        if rows:
            found[table] = rows
    return found


async def delete_contact_rows(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: uuid.UUID,
    *,
    exclude: tuple[str, ...] = (),
) -> dict[str, int]:
    """Delete the contact's rows from every contact table; how many per table."""
    deleted: dict[str, int] = {}
    for table in await contact_tables(conn, exclude=exclude):
        status = await conn.execute(
            f"DELETE FROM {_quote(table)} WHERE workspace_id = $1 AND contact_id = $2",
            uuid.UUID(workspace_id),
            contact_id,
        )
        deleted[table] = int(status.split()[-1])
    return deleted


async def forget_pending_events(conn: asyncpg.Connection, contact_id: uuid.UUID) -> int:
    """Drop the outbox rows and dead letters keyed by the contact (events not published yet,
    or refused by the broker, that may carry its personal data); how many. Call it in the
    erasure's transaction, before queueing the ``ContactErased`` that supersedes them."""
    key = str(contact_id).encode()
    pending = await conn.execute("DELETE FROM outbox WHERE key = $1", key)
    dead = await conn.execute("DELETE FROM outbox_dead_letters WHERE key = $1", key)
    return int(pending.split()[-1]) + int(dead.split()[-1])


def contact_id_of(request: privacy_pb2.ExportContactDataRequest) -> uuid.UUID:
    if not is_uuid(request.contact_id):
        raise InvalidArgument(FieldViolation("contact_id", "is not a contact id (a UUID)"))
    return uuid.UUID(request.contact_id)


def to_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


class ContactDataServicer(privacy_pb2_grpc.ContactDataServiceServicer):
    """``ExportContactData`` of one service: what ``export`` finds about the contact in the
    caller's workspace, as JSON (empty when nothing). Register it with
    :data:`CONTACT_DATA_POLICY` so that only the internal token reaches it."""

    def __init__(self, service: str, pool: asyncpg.Pool, export: Export) -> None:
        self.service = service
        self.pool = pool
        self.export = export

    async def ExportContactData(
        self, request: privacy_pb2.ExportContactDataRequest, context: grpc.aio.ServicerContext
    ) -> privacy_pb2.ExportContactDataResponse:
        contact_id = contact_id_of(request)
        workspace_id = current_workspace()
        async with self.pool.acquire() as conn:
            data = await self.export(conn, workspace_id, contact_id)
        return privacy_pb2.ExportContactDataResponse(service=self.service, data=to_struct(data))


class ContactErasedConsumer:
    """A :class:`services.common.consumer.KafkaConsumerLoop` handler of contacts.events.v1
    that runs ``erase`` for each ``ContactErased``, once per event (``consumer`` names the
    claim in ``processed_events``), in one transaction with the claim; other events are
    ignored."""

    def __init__(self, pool: asyncpg.Pool, consumer: str, erase: Erase) -> None:
        self.pool = pool
        self.consumer = consumer
        self.erase = erase
        self.erased = 0  # for tests and metrics

    async def __call__(self, envelope: Envelope, record: ConsumerRecord) -> None:
        if envelope.WhichOneof("payload") != "contact_erased":
            return
        contact_id = envelope.contact_erased.contact_id
        if not (is_uuid(contact_id) and is_uuid(envelope.workspace_id)):
            log.error("ignoring a ContactErased with malformed ids: %s", envelope.event_id)
            return
        async with self.pool.acquire() as conn, conn.transaction():
            if not await claim_event(conn, self.consumer, envelope.event_id):
                return
            await self.erase(conn, envelope.workspace_id, uuid.UUID(contact_id))
        self.erased += 1
        log.info("erased what %s held about contact %s", self.consumer, contact_id)
