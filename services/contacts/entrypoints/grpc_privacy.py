"""gRPC PrivacyService of the contacts service: export and erasure of one contact across
every service (services/contacts/privacy.py has the rules; docs/privacy.md the guide)."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg
import grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.common.auth import current_workspace
from services.contacts import privacy


class PrivacyServicer(contacts_pb2_grpc.PrivacyServiceServicer):
    """ExportContact gathers what every service holds about a contact; EraseContact erases
    it here and announces ContactErased, which the other services follow."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        peers: Mapping[str, privacy.ContactDataPeer],
        export_timeout_s: float,
    ) -> None:
        self.pool = pool
        self.peers = peers
        self.export_timeout_s = export_timeout_s

    async def ExportContact(
        self, request: contacts_pb2.ExportContactRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.ExportContactResponse:
        result = await privacy.export_contact(
            self.pool, current_workspace(), request.contact, self.peers, self.export_timeout_s
        )
        return contacts_pb2.ExportContactResponse(
            contact_id=result.contact_id, json=result.json(), incomplete=result.incomplete
        )

    async def EraseContact(
        self, request: contacts_pb2.EraseContactRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.EraseContactResponse:
        contact_id, erased_at = await privacy.erase_contact(
            self.pool, current_workspace(), request.contact
        )
        answer = contacts_pb2.EraseContactResponse(contact_id=contact_id)
        answer.erased_at.FromDatetime(erased_at)
        return answer
