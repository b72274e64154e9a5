"""Contacts use cases: load, decide (domain rules), save, publish through the outbox."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

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
from services.common.outbox import add_many_to_outbox, add_to_outbox
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
    """Contacts owns the keys, so it checks them in its own table, and remembers a valid key
    for ``ttl_s`` (by its hash, in this process): a query per call was a fifth of the cost of
    ingesting an event. A revoked key therefore stops working within ``ttl_s``, as keys
    cached by the other services do within their Redis cache's minute. Unknown keys are
    not remembered."""

    def __init__(self, pool: asyncpg.Pool, *, ttl_s: float = 30.0, max_keys: int = 10_000) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._max_keys = max_keys
        self._valid: dict[str, tuple[Principal, float]] = {}

    async def verify(self, api_key: str) -> Principal:
        digest = hash_api_key(api_key)
        now = time.monotonic()
        cached = self._valid.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        principal, _ = await authenticate(self._pool, api_key)
        if len(self._valid) >= self._max_keys:
            self._valid.clear()  # crude, but bounded; keys in use come back on their next call
        self._valid[digest] = (principal, now + self._ttl_s)
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
    model.check_consent_change(v, request.purpose, request.status, request.source)
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
        purpose,
        facts["consent"],
        facts["suppressed_reason"] is not None,
        facts["consent_required_for_campaigns"],
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


MAX_EVENTS_PER_CALL = 1000


@dataclass(frozen=True)
class SubmittedEvent:
    """One event to ingest, with what its caller's context contributes: the workspace and the
    trace context, which ride with the event through a group commit run on another task."""

    workspace_id: str
    request: shop_pb2.TrackEventRequest
    trace_headers: dict[str, str]


def check_event(
    request: shop_pb2.TrackEventRequest, now: datetime
) -> tuple[list[FieldViolation], datetime]:
    """Every field violation of one event, and when it occurred (``now`` when not given)."""
    v = Validator()
    v.strings(request, "", model.MAX_EVENT_STRING)
    model.check_idempotency_key(v, request.idempotency_key)
    v.check(request.HasField("contact"), "contact", "is required")
    v.check(
        request.event.WhichOneof("kind") is not None,
        "event.kind",
        "one of signed_up, cart_updated, order_placed, ... is required",
    )
    occurred_at = (
        v.timestamp(request.event.occurred_at, "event.occurred_at")
        if request.event.HasField("occurred_at")
        else now
    )
    if occurred_at is not None:
        v.check(occurred_at <= now + model.MAX_FUTURE_SKEW, "event.occurred_at", "in the future")
    return v.violations, occurred_at or now


def event_fingerprint(contact_id: uuid.UUID, event: shop_pb2.ShopEvent) -> bytes:
    """What makes two events with one idempotency key the same event: the contact they
    resolve to (whichever identity named it) and the event as sent (its ``occurred_at`` only
    when given, so a retry without one matches). The event's own ``contact_id`` is ignored,
    as ingestion ignores it."""
    if event.contact_id:
        event = shop_pb2.ShopEvent.FromString(event.SerializeToString())
        event.contact_id = ""
    digest = hashlib.sha256(contact_id.bytes)
    digest.update(event.SerializeToString(deterministic=True))
    return digest.digest()


def _result(status: int, **fields: object) -> shop_pb2.TrackEventResult:
    return shop_pb2.TrackEventResult(status=status, **fields)  # type: ignore[arg-type]


def _conflict(key: str, held: db.HeldClaim) -> shop_pb2.TrackEventResult:
    return _result(
        shop_pb2.TRACK_EVENT_STATUS_CONFLICT,
        event_id=str(held.event_id),
        detail=f"idempotency key {key!r} was used for a different event"
        f" (event {held.event_id}); send a new key for a new event",
    )


def _same_event(held: db.HeldClaim, contact_id: uuid.UUID, fingerprint: bytes) -> bool:
    if held.payload_hash is None:  # claimed before fingerprints were kept
        return held.contact_id == contact_id
    return hmac.compare_digest(held.payload_hash, fingerprint)


async def track_events(
    pool: asyncpg.Pool, events: Sequence[SubmittedEvent]
) -> list[shop_pb2.TrackEventResult]:
    """Ingest many events, of any workspaces, in one transaction with set-based SQL; one
    result per event, in order. Each event is judged on its own: invalid events, events of
    unknown contacts and conflicting keys are answered and leave nothing written, without
    keeping the others out. Accepted events are queued on shop.events.v1 in the given order.

    A key seen before (or earlier in ``events``) answers the event that holds it: a
    duplicate when the event is the same (see :func:`event_fingerprint`), a conflict naming
    the key when it is not, as payment APIs answer a reused idempotency key.
    """
    now = clock.now()
    results: list[shop_pb2.TrackEventResult | None] = [None] * len(events)
    occurred: dict[int, datetime] = {}
    for n, submitted in enumerate(events):
        violations, occurred_at = check_event(submitted.request, now)
        if violations:
            results[n] = _result(
                shop_pb2.TRACK_EVENT_STATUS_INVALID,
                violations=[
                    shop_pb2.FieldViolation(field=v.field, description=v.description)
                    for v in violations
                ],
                detail="; ".join(f"{v.field}: {v.description}" for v in violations),
            )
        else:
            occurred[n] = occurred_at
    if not occurred:
        return [r for r in results if r is not None]

    valid = list(occurred)
    async with pool.acquire() as conn, conn.transaction():
        contact_ids = await db.resolve_contacts(
            conn,
            [(uuid.UUID(events[n].workspace_id), events[n].request.contact) for n in valid],
        )
        # The first event with a key claims it; later ones in this call are answered by it.
        claimants: dict[tuple[uuid.UUID, str], int] = {}
        followers: list[tuple[int, tuple[uuid.UUID, str]]] = []
        claims: list[db.IngestionClaim] = []
        fingerprints: dict[int, tuple[uuid.UUID, bytes]] = {}
        for n, contact_id in zip(valid, contact_ids, strict=True):
            request = events[n].request
            if contact_id is None:
                results[n] = _result(
                    shop_pb2.TRACK_EVENT_STATUS_CONTACT_NOT_FOUND,
                    detail="contact not found: create it before reporting its events",
                )
                continue
            fingerprints[n] = (contact_id, event_fingerprint(contact_id, request.event))
            key = (uuid.UUID(events[n].workspace_id), request.idempotency_key)
            if key in claimants:
                followers.append((n, key))
                continue
            claimants[key] = n
            claims.append(
                db.IngestionClaim(key[0], key[1], uuid.uuid4(), contact_id, fingerprints[n][1])
            )
        held_before = await db.claim_ingestions(conn, claims, now) if claims else {}

        holders: dict[tuple[uuid.UUID, str], db.HeldClaim] = {}
        accepted: list[tuple[int, db.IngestionClaim]] = []
        for claim in claims:
            key = (claim.workspace_id, claim.idempotency_key)
            n = claimants[key]
            held = held_before.get(key)
            if held is None:
                holders[key] = db.HeldClaim(claim.event_id, claim.contact_id, claim.payload_hash)
                accepted.append((n, claim))
            else:
                holders[key] = held
                results[n] = _answer_reused(key[1], held, *fingerprints[n])
        for n, key in followers:
            results[n] = _answer_reused(key[1], holders[key], *fingerprints[n])

        accepted.sort()
        queued = []
        for n, claim in accepted:
            event = shop_pb2.ShopEvent()
            event.CopyFrom(events[n].request.event)
            event.contact_id = str(claim.contact_id)
            event.occurred_at.FromDatetime(occurred[n])
            envelope = new_envelope(
                events[n].workspace_id,
                event,
                event_id=str(claim.event_id),
                occurred_at=occurred[n],
            )
            queued.append((event.contact_id, envelope, events[n].trace_headers))
            results[n] = _result(
                shop_pb2.TRACK_EVENT_STATUS_ACCEPTED,
                event_id=str(claim.event_id),
                contact_id=event.contact_id,
            )
        await add_many_to_outbox(conn, db.SCHEMA, SHOP_EVENTS, queued)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def _answer_reused(
    key: str, held: db.HeldClaim, contact_id: uuid.UUID, fingerprint: bytes
) -> shop_pb2.TrackEventResult:
    if _same_event(held, contact_id, fingerprint):
        return _result(
            shop_pb2.TRACK_EVENT_STATUS_DUPLICATE,
            event_id=str(held.event_id),
            contact_id=str(held.contact_id),
        )
    return _conflict(key, held)


def single_event_answer(result: shop_pb2.TrackEventResult) -> shop_pb2.TrackEventResponse:
    """The answer of TrackEvent for its one event's result, or the error it stands for."""
    if result.status == shop_pb2.TRACK_EVENT_STATUS_INVALID:
        raise InvalidArgument([FieldViolation(v.field, v.description) for v in result.violations])
    if result.status == shop_pb2.TRACK_EVENT_STATUS_CONTACT_NOT_FOUND:
        raise NotFound(result.detail)
    if result.status == shop_pb2.TRACK_EVENT_STATUS_CONFLICT:
        raise AlreadyExists(result.detail)
    return shop_pb2.TrackEventResponse(
        event_id=result.event_id,
        duplicate=result.status == shop_pb2.TRACK_EVENT_STATUS_DUPLICATE,
        contact_id=result.contact_id,
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
