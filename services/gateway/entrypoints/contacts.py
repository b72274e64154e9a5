"""``/v1/contacts``: create and read contacts, record consent (ContactService, ConsentService)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from nudge.contacts.v1 import contacts_pb2
from pydantic import StringConstraints

from services.gateway import convert, problems, schemas
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.paths import ContactId
from services.gateway.schemas import ConsentIn, ConsentOut, ContactIn, ContactOut

router = APIRouter(prefix="/v1/contacts", tags=["contacts"])


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
    contact_id: ContactId, caller: CallerDep, backends: BackendsDep, response: Response
) -> ContactOut:
    """One contact of the API key's workspace; another workspace's contact is not found.
    Its ETag is its version (`If-Match` of a PATCH)."""
    answer: contacts_pb2.GetContactResponse = await caller.call(
        backends.contacts.GetContact, convert.get_contact_request(contact_id), service="contacts"
    )
    response.headers["ETag"] = f'"{answer.contact.version}"'
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
    """Grants or withdraws consent for one purpose, keeping how (`source`), the words shown
    (`wording`), who recorded it (`actor`), the contact's `ip` and `user_agent` and when it
    was given (`recorded_at`) in the contact's consent history. In a double opt-in workspace
    a grant is pending until the contact confirms it from the mail sent to them."""
    answer: contacts_pb2.RecordConsentResponse = await caller.call(
        backends.consents.RecordConsent,
        convert.record_consent_request(contact_id, body),
        service="contacts",
    )
    return ConsentOut(
        consent_event_id=answer.consent_event_id,
        pending_confirmation=answer.pending_confirmation,
    )


# --- issue 12: contacts and tags -------------------------------------------------------------

ExternalId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        pattern=schemas.NO_NUL,
        description="The shop's own id for the customer.",
    ),
]
AttributeNamePath = Annotated[
    str,
    Path(pattern=schemas.ATTRIBUTE_NAME_PATTERN, description="`[a-z][a-z0-9_]{0,63}`"),
]
ATTRIBUTE_QUERY = r"^[a-z][a-z0-9_]{0,63}:[^\x00]{0,1024}$"
schemas.PATTERN_MESSAGES[ATTRIBUTE_QUERY] = "must be name:value, name a declared attribute"
ConsentQuery = Literal[
    "marketing:granted",
    "marketing:withdrawn",
    "marketing:pending",
    "marketing:never_asked",
    "targeted_messages:granted",
    "targeted_messages:withdrawn",
    "targeted_messages:pending",
    "targeted_messages:never_asked",
    "automations:granted",
    "automations:withdrawn",
    "automations:pending",
    "automations:never_asked",
]
TagList = Annotated[list[schemas.Tag], Query(max_length=100)]


def list_field(field: str) -> str:
    """ListContacts names ``filter.<field>``; here they are query parameters."""
    field = field.removeprefix("filter.")
    if field.startswith("attributes"):
        return "query.attribute"
    if field.startswith("contact_ids"):
        return "query.contact_id"
    if field == "query":
        return "query.q"
    return "query." + field.split("[")[0]


@router.get(
    "",
    response_model=schemas.ContactList,
    summary="List and search contacts",
    responses=problems.responses(401, 422, 503),
)
async def list_contacts(
    caller: CallerDep,
    backends: BackendsDep,
    tags_all: TagList = [],  # noqa: B006  (FastAPI copies defaults)
    tags_any: TagList = [],  # noqa: B006
    tags_none: TagList = [],  # noqa: B006
    vip: Annotated[bool | None, Query()] = None,
    attribute: Annotated[
        list[Annotated[str, StringConstraints(pattern=ATTRIBUTE_QUERY)]],
        Query(max_length=50, description="`name:value`: a declared attribute equals the value."),
    ] = [],  # noqa: B006
    consent: Annotated[
        ConsentQuery | None,
        Query(description="`purpose:state`, e.g. `marketing:granted`, `automations:never_asked`."),
    ] = None,
    created_since: Annotated[schemas.Rfc3339 | None, Query()] = None,
    updated_since: Annotated[schemas.Rfc3339 | None, Query()] = None,
    q: Annotated[
        str,
        Query(
            max_length=254,
            pattern=schemas.NO_NUL,
            description="Case-insensitive prefix of the e-mail, first, last or `first last`.",
        ),
    ] = "",
    contact_id: Annotated[
        list[Annotated[str, StringConstraints(pattern=schemas.UUID_PATTERN)]],
        Query(max_length=100),
    ] = [],  # noqa: B006
    page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
    page_token: Annotated[
        str, Query(max_length=1000, pattern=schemas.NO_NUL, description="From the last page.")
    ] = "",
) -> schemas.ContactList:
    """The workspace's contacts matching every filter given, oldest first, a page at a time
    (keyset pagination: `next_page_token` is tied to these filters)."""
    purpose, _, state = (consent or "").partition(":")
    body = schemas.ContactFilterIn.model_construct(
        tags_all=tags_all,
        tags_any=tags_any,
        tags_none=tags_none,
        vip=vip,
        attributes=dict(a.split(":", 1) for a in attribute),
        consent=schemas.ConsentFilterIn.model_construct(purpose=purpose, state=state)  # type: ignore[arg-type]
        if consent
        else None,
        created_since=created_since,
        updated_since=updated_since,
        query=q,
        contact_ids=contact_id,
    )
    answer: contacts_pb2.ListContactsResponse = await caller.call(
        backends.contacts.ListContacts,
        contacts_pb2.ListContactsRequest(
            filter=convert.contact_filter(body), page_size=page_size, page_token=page_token
        ),
        service="contacts",
        fields=list_field,
    )
    return schemas.ContactList(
        contacts=[convert.contact_json(c) for c in answer.contacts],
        next_page_token=answer.next_page_token,
    )


@router.post(
    "/tags:bulk",
    response_model=schemas.BulkTagsOut,
    summary="Add or remove tags on every contact matching a filter",
    responses=problems.responses(400, 401, 413, 422, 503),
)
async def bulk_tags(
    body: schemas.BulkTagsIn, caller: CallerDep, backends: BackendsDep
) -> schemas.BulkTagsOut:
    """Seed 001's "select all, add tag": one call, every match. Idempotent: contacts that
    already have the result are not changed (and publish nothing)."""
    answer: contacts_pb2.BulkModifyTagsResponse = await caller.call(
        backends.contacts.BulkModifyTags,
        contacts_pb2.BulkModifyTagsRequest(
            filter=convert.contact_filter(body.filter), add=body.add, remove=body.remove
        ),
        service="contacts",
    )
    return schemas.BulkTagsOut(matched=answer.matched, changed=answer.changed)


@router.patch(
    "/{contact_id}",
    response_model=ContactOut,
    summary="Change a contact (JSON merge patch)",
    responses=problems.responses(400, 401, 404, 409, 413, 422, 503),
)
async def patch_contact(
    contact_id: ContactId,
    body: Annotated[schemas.ContactPatchIn, Body(media_type="application/merge-patch+json")],
    caller: CallerDep,
    backends: BackendsDep,
    response: Response,
    if_match: Annotated[
        str,
        Header(
            pattern=r'^(?:"?[1-9][0-9]{0,17}"?)?$',
            description="The contact's `version` (its ETag) the change is meant for: 409 when"
            " it changed since.",
        ),
    ] = "",
) -> ContactOut:
    """Sets the members given, `null` removes (RFC 7396). Another contact's e-mail or
    external id: 409; with `If-Match`, a contact changed meanwhile: 409 too."""
    request = convert.update_contact_request(contact_id, body)
    if request is None:
        return await get_contact(contact_id, caller, backends, response)
    if if_match:
        request.expected_version = int(if_match.strip('"'))
    answer: contacts_pb2.UpdateContactResponse = await caller.call(
        backends.contacts.UpdateContact, request, service="contacts", fields=convert.patch_field
    )
    response.headers["ETag"] = f'"{answer.contact.version}"'
    return convert.contact_json(answer.contact)


@router.delete(
    "/{contact_id}",
    status_code=204,
    summary="Delete a contact",
    responses=problems.responses(401, 404, 422, 503),
)
async def delete_contact(contact_id: ContactId, caller: CallerDep, backends: BackendsDep) -> None:
    """Removes the contact and its consent history (not erasure: its address stays on the
    suppression list if it is there)."""
    await caller.call(
        backends.contacts.DeleteContact,
        contacts_pb2.DeleteContactRequest(contact=contacts_pb2.ContactRef(contact_id=contact_id)),
        service="contacts",
    )


@router.put(
    "/by-external-id/{external_id}",
    response_model=ContactOut,
    summary="Create or update a contact by the shop's customer id",
    responses={
        201: {"model": ContactOut, "description": "Created."},
        **problems.responses(400, 401, 409, 413, 422, 503),
    },
)
async def upsert_contact(
    external_id: ExternalId,
    body: schemas.ContactUpsertIn,
    caller: CallerDep,
    backends: BackendsDep,
    response: Response,
) -> ContactOut:
    """201 with the new contact, or 200 with the existing one after setting the members
    given (members left out stay as they are)."""
    answer: contacts_pb2.UpsertContactResponse = await caller.call(
        backends.contacts.UpsertContact,
        convert.upsert_contact_request(external_id, body),
        service="contacts",
        fields=convert.upsert_field,
    )
    response.status_code = 201 if answer.created else 200
    return convert.contact_json(answer.contact)


# The `Idempotency-Key` header of a change that takes one (its body's member wins).
IdempotencyKeyHeader = Annotated[
    str,
    Header(
        max_length=200,
        pattern=r"^[\x21-\x7e]*$",
        description="As `idempotency_key` in the body (which wins).",
    ),
]


@router.post(
    "/{contact_id}/tags",
    response_model=schemas.TagsChangedOut,
    summary="Add or remove tags on one contact",
    responses=problems.responses(400, 401, 404, 409, 413, 422, 503),
)
async def modify_tags(
    contact_id: ContactId,
    body: schemas.TagsIn,
    caller: CallerDep,
    backends: BackendsDep,
    idempotency_key: IdempotencyKeyHeader = "",
) -> schemas.TagsChangedOut:
    """A tag both added and removed is added. With an idempotency key, a repeat answers the
    first call's version (`duplicate`) and applies nothing; the key used for another change
    is 409."""
    answer: contacts_pb2.ModifyTagsResponse = await caller.call(
        backends.contacts.ModifyTags,
        contacts_pb2.ModifyTagsRequest(
            contact=contacts_pb2.ContactRef(contact_id=contact_id),
            add=body.add,
            remove=body.remove,
            idempotency_key=body.idempotency_key or idempotency_key or "",
        ),
        service="contacts",
    )
    return convert.tags_json(answer)


@router.post(
    "/{contact_id}/score",
    response_model=schemas.ScoreOut,
    summary="Change a contact's score by a delta",
    responses=problems.responses(400, 401, 404, 409, 413, 422, 503),
)
async def adjust_score(
    contact_id: ContactId,
    body: schemas.ScoreIn,
    caller: CallerDep,
    backends: BackendsDep,
    idempotency_key: IdempotencyKeyHeader = "",
) -> schemas.ScoreOut:
    """Atomic: concurrent deltas all count. With an idempotency key, a repeat answers the
    first result (`duplicate`), and the key used with another delta is 409."""
    answer: contacts_pb2.AdjustScoreResponse = await caller.call(
        backends.contacts.AdjustScore,
        contacts_pb2.AdjustScoreRequest(
            contact=contacts_pb2.ContactRef(contact_id=contact_id),
            delta=body.delta,
            idempotency_key=body.idempotency_key or idempotency_key or "",
        ),
        service="contacts",
    )
    return schemas.ScoreOut(score=answer.score, version=answer.version, duplicate=answer.duplicate)


attributes_router = APIRouter(prefix="/v1/attributes", tags=["contacts"])


@attributes_router.get(
    "",
    response_model=schemas.AttributeList,
    summary="List the workspace's custom attributes",
    responses=problems.responses(401, 503),
)
async def list_attributes(caller: CallerDep, backends: BackendsDep) -> schemas.AttributeList:
    answer: contacts_pb2.ListAttributesResponse = await caller.call(
        backends.contacts.ListAttributes, contacts_pb2.ListAttributesRequest(), service="contacts"
    )
    return schemas.AttributeList(attributes=[convert.attribute_json(a) for a in answer.attributes])


@attributes_router.get(
    "/{name}",
    response_model=schemas.AttributeOut,
    summary="Get a custom attribute",
    responses=problems.responses(401, 404, 422, 503),
)
async def get_attribute(
    name: AttributeNamePath, caller: CallerDep, backends: BackendsDep
) -> schemas.AttributeOut:
    listed = await list_attributes(caller, backends)
    for attribute in listed.attributes:
        if attribute.name == name:
            return attribute
    raise problems.Problem(404, "not-found", "Not found", f"no attribute {name!r} is declared")


@attributes_router.put(
    "/{name}",
    response_model=schemas.AttributeOut,
    summary="Declare a custom attribute",
    responses={
        201: {"model": schemas.AttributeOut, "description": "Declared."},
        **problems.responses(400, 401, 409, 413, 422, 503),
    },
)
async def define_attribute(
    name: AttributeNamePath,
    body: schemas.AttributeIn,
    caller: CallerDep,
    backends: BackendsDep,
    response: Response,
) -> schemas.AttributeOut:
    """201 when new; 200 when it was declared with this type (its description is updated);
    409 when it was declared with another type, which never changes."""
    answer: contacts_pb2.DefineAttributeResponse = await caller.call(
        backends.contacts.DefineAttribute,
        convert.define_attribute_request(name, body),
        service="contacts",
        fields=convert.attribute_field,
    )
    response.status_code = 201 if answer.created else 200
    return convert.attribute_json(answer.attribute)
