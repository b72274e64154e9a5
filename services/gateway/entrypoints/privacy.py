"""``/v1/contacts/{id}/export`` and ``/v1/contacts/{id}/erasure``: a contact's right of access
and right to be forgotten (contacts' PrivacyService; docs/privacy.md).

Erasure is ``POST /v1/contacts/{id}/erasure`` (it creates the erasure, whose record the
export then shows), not ``DELETE /v1/contacts/{id}?erase=true``: it is a different act from
deleting a contact (it also suppresses the address for good and is followed by every
service), and a query flag that turns a delete into something irreversible and wider is
easy to add or drop by mistake. Nor the custom-method form ``POST /v1/contacts/{id}:erase``
(as ``/v1/events:batch``): the id segment of ``GET /v1/contacts/{id}`` swallows ``:erase``
in the router, so ``OPTIONS`` on it advertised a GET that is not there (schemathesis ST205).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from nudge.contacts.v1 import contacts_pb2
from pydantic import Field

from services.gateway import problems
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.paths import ContactId
from services.gateway.schemas import ResponseModel

router = APIRouter(prefix="/v1/contacts", tags=["contacts"])


class ContactExport(ResponseModel):
    contact_id: str
    complete: bool = Field(description="False when a service did not answer in time.")
    incomplete: list[str] = Field(description="The services whose part is missing.")
    services: dict[str, Any] = Field(
        description="What each service holds, by service name (`contacts`, `segmentation`,"
        " `delivery`, `triggers`, `campaigns`); `{}` when it holds nothing."
    )


class ErasureOut(ResponseModel):
    contact_id: str
    erased_at: datetime = Field(description="When the contact was erased (the first time).")


def _ref(contact_id: str) -> contacts_pb2.ContactRef:
    return contacts_pb2.ContactRef(contact_id=contact_id)


@router.get(
    "/{contact_id}/export",
    response_model=ContactExport,
    summary="Export everything held about a contact",
    responses=problems.responses(400, 401, 404, 422, 503),
)
async def export_contact(
    contact_id: ContactId, caller: CallerDep, backends: BackendsDep
) -> JSONResponse:
    """One JSON document (a download: `Content-Disposition: attachment`) with what every
    service holds about the contact. A service that did not answer in time is listed in
    `incomplete` and its part is missing; ask again later. An erased contact exports as its
    erasure record and nothing else."""
    answer: contacts_pb2.ExportContactResponse = await caller.call(
        backends.privacy.ExportContact,
        contacts_pb2.ExportContactRequest(contact=_ref(contact_id)),
        service="contacts",
    )
    body = ContactExport(
        contact_id=answer.contact_id,
        complete=not answer.incomplete,
        incomplete=list(answer.incomplete),
        services=json.loads(answer.json),
    )
    return JSONResponse(
        body.model_dump(mode="json"),
        headers={
            "Content-Disposition": f'attachment; filename="contact-{answer.contact_id}.json"',
            "Cache-Control": "no-store",
        },
    )


@router.post(
    "/{contact_id}/erasure",
    response_model=ErasureOut,
    summary="Erase a contact (right to be forgotten)",
    responses=problems.responses(400, 401, 404, 422, 503),
)
async def erase_contact(
    contact_id: ContactId, caller: CallerDep, backends: BackendsDep
) -> ErasureOut:
    """Deletes the contact's personal data here at once and suppresses its address for good
    (kept only as a keyed hash); every other service forgets the contact when it receives
    the `ContactErased` event, within seconds. Irreversible. Repeating the call answers the
    same `erased_at`; an unknown id is 404."""
    answer: contacts_pb2.EraseContactResponse = await caller.call(
        backends.privacy.EraseContact,
        contacts_pb2.EraseContactRequest(contact=_ref(contact_id)),
        service="contacts",
    )
    return ErasureOut(
        contact_id=answer.contact_id, erased_at=answer.erased_at.ToDatetime(tzinfo=UTC)
    )
