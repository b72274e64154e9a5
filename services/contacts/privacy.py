"""Export and erasure of one contact's personal data, across every service (issue 12; the
user's guide is docs/privacy.md).

Export (the right of access): contacts' own rows about the contact, plus what each other
service answers to ``nudge.privacy.v1.ContactDataService.ExportContactData``, asked in
parallel with the internal token on behalf of the workspace. A service that does not answer
within the deadline (or fails) is named in ``incomplete``; the export is still given.

Erasure (the right to be forgotten), in one transaction here: the contact's version is
bumped (its row locked, so no other change of it commits in between), every row keyed by it
is deleted with the contact, the events not yet published for it are dropped, the address is
suppressed as ERASED without keeping it in clear (a keyed hash, services/contacts/
suppression.py), the erasure is recorded (id, version, time: no personal data) and one
``ContactErased`` is queued. Every other service forgets the contact when it consumes that
event, so a service that is down erases when it comes back.

Erasing an erased contact again (by its id) answers the same result as the first time, and
changes and publishes nothing: a retried call cannot tell whether its first try committed.
By e-mail or external id an erased contact is NOT_FOUND: those are gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import grpc
from google.protobuf.json_format import MessageToDict
from nudge.contacts.v1 import contacts_pb2, events_pb2
from nudge.privacy.v1 import privacy_pb2, privacy_pb2_grpc

from services.common import clock
from services.common.auth import internal_metadata
from services.common.errors import NotFound, Validator
from services.common.privacy import forget_pending_events
from services.contacts import changes, suppression
from services.contacts.adapters import privacy_pg as db

log = logging.getLogger(__name__)

SERVICE = "contacts"
MAX_REF_LENGTH = 320


class ContactDataPeer(Protocol):
    """Another service's ``ExportContactData``."""

    async def export(
        self, workspace_id: str, contact_id: str, timeout_s: float
    ) -> dict[str, Any]: ...


class GrpcContactDataPeer:
    """A peer reached over gRPC with the internal token, the workspace in metadata."""

    def __init__(self, channel: grpc.aio.Channel, internal_token: str) -> None:
        self._stub = privacy_pb2_grpc.ContactDataServiceStub(channel)
        self._token = internal_token

    async def export(self, workspace_id: str, contact_id: str, timeout_s: float) -> dict[str, Any]:
        answer = await self._stub.ExportContactData(
            privacy_pb2.ExportContactDataRequest(contact_id=contact_id),
            metadata=internal_metadata(self._token, workspace_id),
            timeout=timeout_s,
        )
        return MessageToDict(answer.data)


@dataclass(frozen=True)
class ExportResult:
    contact_id: str
    document: dict[str, Any]
    incomplete: list[str]

    def json(self) -> str:
        return json.dumps(self.document, sort_keys=True, default=str)


def check_ref(ref: contacts_pb2.ContactRef, field: str = "contact") -> None:
    """A reference must name somebody: one identity, not empty, not absurdly long."""
    v = Validator()
    which = ref.WhichOneof("ref")
    v.check(which is not None, field, "is required: one of contact_id, external_id, email")
    if which is not None:
        value = getattr(ref, which)
        v.check(bool(value.strip()), f"{field}.{which}", "is empty")
        v.check(len(value) <= MAX_REF_LENGTH, f"{field}.{which}", f"longer than {MAX_REF_LENGTH}")
        v.check("\x00" not in value, f"{field}.{which}", "contains a NUL character")
    v.raise_if_any()


async def _ask(
    name: str, peer: ContactDataPeer, workspace_id: str, contact_id: str, timeout_s: float
) -> dict[str, Any] | None:
    try:
        return await asyncio.wait_for(peer.export(workspace_id, contact_id, timeout_s), timeout_s)
    except (TimeoutError, grpc.aio.AioRpcError) as err:
        code = err.code() if isinstance(err, grpc.aio.AioRpcError) else "timeout"
        log.warning("export of contact %s: %s did not answer (%s)", contact_id, name, code)
        return None


async def export_contact(
    pool: asyncpg.Pool,
    workspace_id: str,
    ref: contacts_pb2.ContactRef,
    peers: Mapping[str, ContactDataPeer],
    timeout_s: float,
) -> ExportResult:
    """One JSON document ``{"contacts": {...}, "<service>": {...}, ...}``. An erased contact
    (named by id) exports as ``{"contacts": {"erasure": {...}}}`` with whatever the other
    services still hold (nothing, once they have consumed ContactErased)."""
    check_ref(ref)
    async with pool.acquire() as conn:
        found = await db.resolve(conn, workspace_id, ref, lock=False)
        if found is not None:
            contact_id = found[0]
            own = await db.contact_data(conn, workspace_id, contact_id)
            own.update(await suppression_data(conn, workspace_id, found[1]))
        else:
            erasure = await db.find_erasure(conn, workspace_id, ref)
            if erasure is None:
                raise NotFound("contact not found")
            contact_id = erasure.contact_id
            own = {
                "erasure": {
                    "contact_id": str(erasure.contact_id),
                    "version": erasure.version,
                    "erased_at": erasure.erased_at.isoformat(),
                }
            }
    names = sorted(peers)
    answers = await asyncio.gather(
        *(_ask(n, peers[n], workspace_id, str(contact_id), timeout_s) for n in names)
    )
    document: dict[str, Any] = {SERVICE: own}
    incomplete = []
    for name, answer in zip(names, answers, strict=True):
        if answer is None:
            incomplete.append(name)
        else:
            document[name] = answer
    return ExportResult(str(contact_id), document, incomplete)


async def suppression_data(
    conn: asyncpg.Connection, workspace_id: str, email: str
) -> dict[str, Any]:
    """The suppression entry of the contact's address, when there is one."""
    entry = await suppression.lookup(conn, workspace_id, email)
    if entry is None:
        return {}
    return {
        "suppression": {
            "address": entry.address,
            "reason": suppression.reason_name(entry.reason),
            "created_at": entry.created_at.isoformat(),
        }
    }


async def erase_contact(
    pool: asyncpg.Pool, workspace_id: str, ref: contacts_pb2.ContactRef
) -> tuple[str, datetime]:
    """Erase the contact ``ref`` names; its id and when it was erased (the first time)."""
    check_ref(ref)
    async with pool.acquire() as conn, conn.transaction():
        found = await db.resolve(conn, workspace_id, ref, lock=True)
        if found is None:
            erasure = await db.find_erasure(conn, workspace_id, ref)
            if erasure is None:
                raise NotFound("contact not found")
            return str(erasure.contact_id), erasure.erased_at
        contact_id, email = found
        now = clock.now()
        version = await changes.bump_version(conn, workspace_id, contact_id, now)
        await db.delete_contact(conn, workspace_id, contact_id)
        await forget_pending_events(conn, contact_id)
        await suppression.suppress(
            conn,
            workspace_id,
            email,
            contacts_pb2.SUPPRESSION_REASON_ERASED,
            keep_address=False,
        )
        await db.record_erasure(conn, workspace_id, db.Erasure(contact_id, version, now))
        await changes.publish(
            conn,
            workspace_id,
            contact_id,
            events_pb2.ContactErased(contact_id=str(contact_id), version=version),
            occurred_at=now,
        )
    log.info("erased contact %s (version %s)", contact_id, version)
    return str(contact_id), now
