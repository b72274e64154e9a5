"""Contacts use cases: load, decide (domain rules), save, publish through the outbox."""

from __future__ import annotations

import uuid

import asyncpg
from nudge.contacts.v1 import contacts_pb2, events_pb2
from nudge.shop.v1 import shop_pb2
from nudge.tracking.v1 import events_pb2 as tracking_pb2

from services.common import clock
from services.common.auth import (
    Principal,
    generate_api_key,
    hash_api_key,
    hashes_match,
    parse_key_id,
)
from services.common.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermanentError,
    Unauthenticated,
    Validator,
)
from services.common.events import new_envelope
from services.common.idempotency import claim_event
from services.common.ids import is_uuid
from services.common.outbox import add_to_outbox
from services.common.topics import CONTACTS_EVENTS, SHOP_EVENTS
from services.contacts.adapters import postgres as db
from services.contacts.domain import model
from services.contacts.domain.model import NewContact


async def create_workspace(
    pool: asyncpg.Pool, name: str, slug: str, consent_required: bool
) -> tuple[str, str]:
    """A new workspace and its first API key (shown once)."""
    model.validate_workspace(name, slug)
    async with pool.acquire() as conn, conn.transaction():
        workspace_id = await db.insert_workspace(conn, name.strip(), slug, consent_required)
        if workspace_id is None:
            raise AlreadyExists(f"workspace slug {slug!r} is taken")
        key_id, api_key = generate_api_key()
        await db.insert_api_key(conn, workspace_id, key_id, hash_api_key(api_key))
    return str(workspace_id), api_key


async def authenticate(pool: asyncpg.Pool, api_key: str) -> tuple[Principal, str]:
    key_id = parse_key_id(api_key)
    async with pool.acquire() as conn:
        row = await db.find_api_key(conn, key_id)
    if row is None or not hashes_match(row["key_hash"], api_key):
        raise Unauthenticated("unknown API key")
    return Principal(workspace_id=str(row["workspace_id"]), key_id=key_id), row["name"]


class LocalApiKeyVerifier:
    """Contacts owns the keys, so it checks them in its own table."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def verify(self, api_key: str) -> Principal:
        principal, _ = await authenticate(self._pool, api_key)
        return principal


async def create_contact(
    pool: asyncpg.Pool, workspace_id: str, new: NewContact
) -> contacts_pb2.Contact:
    now = clock.now()
    model.validate_new_contact(new, now)
    async with pool.acquire() as conn, conn.transaction():
        row = await db.insert_contact(conn, workspace_id, new, now)
        if row is None:
            raise AlreadyExists("a contact with this email or external_id exists in the workspace")
        contact = db.contact_to_proto(row)
        await add_to_outbox(
            conn,
            db.SCHEMA,
            CONTACTS_EVENTS,
            contact.id,
            new_envelope(workspace_id, events_pb2.ContactCreated(contact=contact), occurred_at=now),
        )
        for purpose in sorted(set(new.consents)):
            await _record_consent(
                conn,
                workspace_id,
                row["id"],
                purpose,
                model.ConsentStatus.GRANTED,
                new.consent_source,
                new.consent_wording,
                "api",
            )
    return contact


async def get_contact(
    pool: asyncpg.Pool, workspace_id: str, ref: contacts_pb2.ContactRef
) -> contacts_pb2.Contact:
    """The contact ``ref`` names. A reference that names nobody (none of its fields set, or
    an empty value) is the caller's mistake, not a contact that is missing."""
    v = Validator()
    which = ref.WhichOneof("ref")
    v.check(which is not None, "contact", "is required: one of contact_id, external_id, email")
    if which is not None:
        v.check(bool(getattr(ref, which)), f"contact.{which}", "is empty")
    v.raise_if_any()
    async with pool.acquire() as conn:
        return db.contact_to_proto(await db.find_contact(conn, workspace_id, ref))


async def record_consent(
    pool: asyncpg.Pool, workspace_id: str, request: contacts_pb2.RecordConsentRequest
) -> str:
    v = Validator()
    v.check(request.HasField("contact"), "contact", "is required")
    v.check(
        request.purpose in (1, 2, 3),
        "purpose",
        "must be MARKETING, TARGETED_MESSAGES or AUTOMATIONS",
    )
    v.check(request.status in (1, 2), "status", "must be GRANTED or WITHDRAWN")
    v.check(request.source in (1, 2, 3, 4, 5), "source", "is required")
    v.check(len(request.wording) <= 2000, "wording", "longer than 2000")
    v.raise_if_any()
    async with pool.acquire() as conn, conn.transaction():
        row = await db.find_contact(conn, workspace_id, request.contact)
        return str(
            await _record_consent(
                conn,
                workspace_id,
                row["id"],
                request.purpose,
                request.status,
                request.source,
                request.wording,
                request.actor or "api",
            )
        )


async def _record_consent(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: uuid.UUID,
    purpose: int,
    status: int,
    source: int,
    wording: str,
    actor: str,
) -> uuid.UUID:
    now = clock.now()
    event_id = await db.record_consent(
        conn, workspace_id, contact_id, purpose, status, source, wording, actor, now
    )
    changed = events_pb2.ConsentChanged(
        contact_id=str(contact_id),
        purpose=purpose,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        source=source,  # type: ignore[arg-type]
        wording=wording,
        actor=actor,
    )
    await add_to_outbox(
        conn,
        db.SCHEMA,
        CONTACTS_EVENTS,
        str(contact_id),
        new_envelope(workspace_id, changed, event_id=str(event_id), occurred_at=now),
    )
    return event_id


async def check_eligibility(
    pool: asyncpg.Pool, workspace_id: str, contact_id: str, purpose: int
) -> contacts_pb2.CheckEligibilityResponse:
    if purpose not in model.Purpose.__members__.values():
        raise InvalidArgument(FieldViolation("purpose", "is required"))
    async with pool.acquire() as conn:
        facts = await db.eligibility_facts(conn, workspace_id, contact_id, purpose)
    eligible, reason = model.is_eligible(
        purpose, facts["consent"], facts["suppressed"], facts["consent_required_for_campaigns"]
    )
    return contacts_pb2.CheckEligibilityResponse(
        eligible=eligible,
        reason=reason,
        email=facts["email"],
        first_name=facts["first_name"],
        last_name=facts["last_name"],
        locale=facts["locale"],
        workspace_name=facts["workspace_name"],
    )


async def track_event(
    pool: asyncpg.Pool, workspace_id: str, request: shop_pb2.TrackEventRequest
) -> shop_pb2.TrackEventResponse:
    """Accept a shop event once per idempotency key and queue it on shop.events.v1."""
    v = Validator()
    v.strings(request, "", model.MAX_EVENT_STRING)
    model.check_idempotency_key(v, request.idempotency_key)
    v.check(request.HasField("contact"), "contact", "is required")
    v.check(
        request.event.WhichOneof("kind") is not None,
        "event.kind",
        "one of signed_up, cart_updated, order_placed, ... is required",
    )
    now = clock.now()
    occurred_at = (
        v.timestamp(request.event.occurred_at, "event.occurred_at")
        if request.event.HasField("occurred_at")
        else now
    )
    if occurred_at is not None:
        v.check(occurred_at <= now + model.MAX_FUTURE_SKEW, "event.occurred_at", "in the future")
    v.raise_if_any()
    assert occurred_at is not None
    async with pool.acquire() as conn, conn.transaction():
        try:
            contact = await db.find_contact(conn, workspace_id, request.contact)
        except NotFound as err:
            raise NotFound("contact not found: create it before reporting its events") from err
        claim = await db.claim_ingestion(
            conn, workspace_id, request.idempotency_key, uuid.uuid4(), contact["id"], now
        )
        if claim["inserted"]:
            event = shop_pb2.ShopEvent()
            event.CopyFrom(request.event)
            event.contact_id = str(contact["id"])
            event.occurred_at.FromDatetime(occurred_at)
            await add_to_outbox(
                conn,
                db.SCHEMA,
                SHOP_EVENTS,
                event.contact_id,
                new_envelope(
                    workspace_id, event, event_id=str(claim["event_id"]), occurred_at=occurred_at
                ),
            )
    return shop_pb2.TrackEventResponse(
        event_id=str(claim["event_id"]),
        duplicate=not claim["inserted"],
        contact_id=str(claim["contact_id"]),
    )


CONSUMER = "contacts"

UNSUBSCRIBED_PURPOSES = (
    model.Purpose.MARKETING,
    model.Purpose.TARGETED_MESSAGES,
    model.Purpose.AUTOMATIONS,
)


async def unsubscribe(
    pool: asyncpg.Pool,
    workspace_id: str,
    event_id: str,
    request: tracking_pb2.UnsubscribeRequested,
) -> int:
    """A recipient unsubscribed from a mail: withdraw every consent but transactional mail's.

    The link does not say which kind of mail it came from, and a person who presses
    "unsubscribe" expects no more promotional or automated mail from this sender; order
    details and password resets still arrive. Every post of the link is a new event, so a
    contact who subscribed again and uses an old mail's link is unsubscribed again; repeats
    change nothing because a consent already withdrawn is left alone, and a redelivery of
    one event is claimed once. Returns how many consents changed.
    """
    if not (is_uuid(request.contact_id) and is_uuid(workspace_id)):
        raise PermanentError(f"unsubscribe with malformed ids: {request.contact_id!r}")
    how = "one-click unsubscribe" if request.one_click else "unsubscribe page"
    changed = 0
    async with pool.acquire() as conn, conn.transaction():
        if not await claim_event(conn, CONSUMER, event_id):
            return 0
        current = await db.consent_statuses(conn, workspace_id, uuid.UUID(request.contact_id))
        if current is None:
            return 0  # erased since the mail was sent: nothing left to withdraw
        for purpose in UNSUBSCRIBED_PURPOSES:
            if current.get(purpose) == model.ConsentStatus.WITHDRAWN:
                continue
            await _record_consent(
                conn,
                workspace_id,
                uuid.UUID(request.contact_id),
                purpose,
                model.ConsentStatus.WITHDRAWN,
                model.ConsentSource.UNSUBSCRIBE_LINK,
                f"{how} in message {request.message_id}",
                "contact",
            )
            changed += 1
    return changed
