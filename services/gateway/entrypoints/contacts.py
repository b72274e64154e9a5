"""``/v1/contacts``: create and read contacts, record consent (ContactService, ConsentService)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from nudge.contacts.v1 import contacts_pb2

from services.gateway import convert, problems
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.schemas import ConsentIn, ConsentOut, ContactIn, ContactOut

router = APIRouter(prefix="/v1/contacts", tags=["contacts"])

ContactId = Annotated[str, Path(min_length=1, max_length=64, description="The contact's id.")]


@router.post(
    "",
    status_code=201,
    response_model=ContactOut,
    summary="Create a contact",
    responses=problems.responses(400, 401, 409, 413, 422, 503),
)
async def create_contact(
    body: ContactIn,
    caller: CallerDep,
    backends: BackendsDep,
    request: Request,
    response: Response,
) -> ContactOut:
    """Creates a contact in the API key's workspace, with the consents given at signup
    (recorded with source `api`). E-mail and `external_id` are unique in the workspace: 409."""
    answer: contacts_pb2.CreateContactResponse = await caller.call(
        backends.contacts.CreateContact,
        convert.create_contact_request(body),
        service="contacts",
        fields=convert.contact_field,
    )
    contact = convert.contact_json(answer.contact)
    response.headers["Location"] = request.app.url_path_for("get_contact", contact_id=contact.id)
    return contact


@router.get(
    "/{contact_id}",
    response_model=ContactOut,
    summary="Get a contact",
    responses=problems.responses(401, 404, 422, 503),
)
async def get_contact(
    contact_id: ContactId, caller: CallerDep, backends: BackendsDep
) -> ContactOut:
    """One contact of the API key's workspace; another workspace's contact is not found."""
    answer: contacts_pb2.GetContactResponse = await caller.call(
        backends.contacts.GetContact, convert.get_contact_request(contact_id), service="contacts"
    )
    return convert.contact_json(answer.contact)


@router.post(
    "/{contact_id}/consents",
    status_code=201,
    response_model=ConsentOut,
    summary="Record a consent change",
    responses=problems.responses(400, 401, 404, 413, 422, 503),
)
async def record_consent(
    contact_id: ContactId, body: ConsentIn, caller: CallerDep, backends: BackendsDep
) -> ConsentOut:
    """Grants or withdraws consent for one purpose, keeping how (`source`) and the words
    shown (`wording`) in the contact's consent history."""
    answer: contacts_pb2.RecordConsentResponse = await caller.call(
        backends.consents.RecordConsent,
        convert.record_consent_request(contact_id, body),
        service="contacts",
    )
    return ConsentOut(consent_event_id=answer.consent_event_id)
