"""Contacts use cases: load, decide (domain rules), save, publish through the outbox."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from nudge.contacts.v1 import contacts_pb2, events_pb2
from nudge.shop.v1 import shop_pb2

from services.common import clock
from services.common.auth import (
    generate_api_key,
    hash_api_key,
)
from services.common.errors import (
    Aborted,
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Validator,
)
from services.common.events import new_envelope
from services.common.outbox import add_many_to_outbox
from services.common.topics import CONTACTS_EVENTS, SHOP_EVENTS
from services.common.tracing import current_traceparent
from services.contacts import changes
from services.contacts.adapters import filters
from services.contacts.adapters import postgres as db

# Consent use cases live in services/contacts/consent.py; these names stay importable here.
from services.contacts.consent import CONSUMER as CONSUMER
from services.contacts.consent import _record_consent as _record_consent
from services.contacts.consent import check_eligibility as check_eligibility
from services.contacts.consent import record_consent as record_consent
from services.contacts.consent import unsubscribe as unsubscribe
from services.contacts.domain import attributes as attribute_rules
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


async def create_contact(
    pool: asyncpg.Pool, workspace_id: str, new: NewContact
) -> contacts_pb2.Contact:
    async with pool.acquire() as conn, conn.transaction():
        return await _create(conn, workspace_id, new, clock.now())


async def _create(
    conn: asyncpg.Connection, workspace_id: str, new: NewContact, now: datetime
) -> contacts_pb2.Contact:
    """Insert the contact (version 1) and publish ContactCreated, then record the consents
    given at creation, in the caller's transaction."""
    declared = await db.declared_attributes(conn, workspace_id)
    model.validate_new_contact(new, now, declared)
    row = await db.insert_contact(conn, workspace_id, new, now)
    if row is None:
        raise AlreadyExists("a contact with this email or external_id exists in the workspace")
    contact = db.contact_to_proto(row)
    await changes.publish(
        conn,
        workspace_id,
        contact.id,
        events_pb2.ContactCreated(contact=contact),
        occurred_at=now,
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
    # The consents bumped the version: answer the contact as committed.
    return db.contact_to_proto(await db.contact_by_id(conn, workspace_id, row["id"]))


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


def _check_ref(
    v: Validator, ref: contacts_pb2.ContactRef, has: bool, field: str = "contact"
) -> None:
    which = ref.WhichOneof("ref") if has else None
    v.check(which is not None, field, "is required: one of contact_id, external_id, email")
    if which is not None:
        v.check(bool(getattr(ref, which)), f"{field}.{which}", "is empty")


async def update_contact(
    pool: asyncpg.Pool,
    workspace_id: str,
    ref: contacts_pb2.ContactRef,
    patch: NewContact,
    paths: list[str],
    expected_version: int,
) -> tuple[contacts_pb2.Contact, bool]:
    """Set the ``paths`` of ``patch`` on the contact: the contact after, and whether anything
    changed. A change bumps the version once and publishes one ContactUpdated naming the
    fields that changed; values already so change nothing and publish nothing. With
    ``expected_version`` (not 0) a contact at another version is refused (Aborted), so that
    two editors do not overwrite each other unknowingly."""
    v = Validator()
    _check_ref(v, ref, True)
    model.check_mask(v, paths)
    v.check(expected_version >= 0, "expected_version", "must not be negative")
    v.raise_if_any()
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        row = await db.find_contact(conn, workspace_id, ref, for_update=True)
        if expected_version and row["version"] != expected_version:
            raise Aborted(
                f"the contact is at version {row['version']}, not {expected_version}:"
                " read it again and retry"
            )
        changed = await _apply(conn, workspace_id, row, patch, paths, now, "contact_patch")
        if not changed:
            return db.contact_to_proto(row), False
        return db.contact_to_proto(await db.contact_by_id(conn, workspace_id, row["id"])), True


async def _apply(
    conn: asyncpg.Connection,
    workspace_id: str,
    row: asyncpg.Record,
    patch: NewContact,
    paths: list[str],
    now: datetime,
    prefix: str,
) -> bool:
    """Patch the locked contact ``row``; publish ContactUpdated when something changed."""
    current = db.row_to_new_contact(row)
    new, changed, touched = model.apply_patch(current, patch, paths)
    declared = await db.declared_attributes(conn, workspace_id)
    model.validate_new_contact(new, now, declared, prefix=prefix, attributes_to_check=touched)
    if not changed:
        return False
    await db.update_profile(conn, workspace_id, row["id"], new)
    version = await changes.bump_version(conn, workspace_id, row["id"], now)
    contact = db.contact_to_proto(await db.contact_by_id(conn, workspace_id, row["id"]))
    assert contact.version == version
    await changes.publish(
        conn,
        workspace_id,
        row["id"],
        events_pb2.ContactUpdated(contact=contact, changed_fields=changed),
        occurred_at=now,
    )
    return True


async def upsert_contact(
    pool: asyncpg.Pool, workspace_id: str, new: NewContact, paths: list[str]
) -> tuple[contacts_pb2.Contact, bool, bool]:
    """Create the contact with ``new.external_id``, or set ``paths`` of ``new`` on the one
    that has it: (contact, created, changed). Two calls racing to create the same external id
    both succeed: the second finds the first's contact once it commits and updates it."""
    v = Validator()
    v.check(bool(new.external_id), "contact.external_id", "is required: the shop's customer id")
    model.check_mask(v, paths)
    v.check("external_id" not in paths, "update_mask.paths", "external_id is the key")
    v.raise_if_any()
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        row = await db.find_contact_by_external_id(conn, workspace_id, new.external_id)
        if row is None:
            async with conn.transaction():  # a savepoint: a lost race leaves the rest usable
                try:
                    return await _create(conn, workspace_id, new, now), True, True
                except AlreadyExists:
                    pass
            row = await db.find_contact_by_external_id(conn, workspace_id, new.external_id)
            if row is None:  # not the external id: the e-mail is another contact's
                raise AlreadyExists("another contact of the workspace has this email")
        changed = await _apply(conn, workspace_id, row, new, paths, now, "contact")
        return (
            db.contact_to_proto(await db.contact_by_id(conn, workspace_id, row["id"])),
            False,
            changed,
        )


async def delete_contact(
    pool: asyncpg.Pool, workspace_id: str, ref: contacts_pb2.ContactRef, has_ref: bool
) -> str:
    """Remove the contact and its consent history; ContactDeleted (with the version the
    deletion takes) tells the read models to drop it. Not erasure: suppressions stay."""
    v = Validator()
    _check_ref(v, ref, has_ref)
    v.raise_if_any()
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        row = await db.find_contact(conn, workspace_id, ref, for_update=True)
        version = await changes.bump_version(conn, workspace_id, row["id"], now)
        await changes.publish(
            conn,
            workspace_id,
            row["id"],
            events_pb2.ContactDeleted(contact_id=str(row["id"]), version=version),
            occurred_at=now,
        )
        await db.delete_contact(conn, workspace_id, row["id"])
    return str(row["id"])


MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


def _page_token(workspace_id: str, f: contacts_pb2.ContactFilter, row: asyncpg.Record) -> str:
    position = {
        "c": row["created_at"].isoformat(),
        "i": str(row["id"]),
        "f": filters.fingerprint(f, workspace_id),
    }
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def _read_page_token(
    v: Validator, token: str, workspace_id: str, f: contacts_pb2.ContactFilter
) -> tuple[datetime, uuid.UUID] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        position = json.loads(raw)
        after = (datetime.fromisoformat(position["c"]), uuid.UUID(position["i"]))
        same_filter = position["f"] == filters.fingerprint(f, workspace_id)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        v.check(False, "page_token", "not a page token of this API: pass next_page_token back")
        return None
    v.check(same_filter, "page_token", "was made for another filter: list again from the start")
    return after


async def list_contacts(
    pool: asyncpg.Pool,
    workspace_id: str,
    f: contacts_pb2.ContactFilter,
    page_size: int,
    page_token: str,
) -> tuple[list[contacts_pb2.Contact], str]:
    """One page of the contacts ``f`` matches, oldest first, and the token of the next page
    ("" on the last). The token is the position (created_at, id) of the page's last contact,
    bound to the filter: a contact created meanwhile never shifts a page."""
    v = Validator()
    filters.validate_filter(v, f)
    v.check(0 <= page_size <= MAX_PAGE_SIZE, "page_size", f"must be 1-{MAX_PAGE_SIZE} (0: default)")
    v.check(len(page_token) <= 1000, "page_token", "longer than 1000 characters")
    after = _read_page_token(v, page_token[:1000], workspace_id, f)
    v.raise_if_any()
    size = page_size or DEFAULT_PAGE_SIZE
    async with pool.acquire() as conn:
        await filters.check_attribute_types(conn, v, f, workspace_id)
        v.raise_if_any()
        rows = await db.list_contacts(conn, workspace_id, f, after, size + 1)
    token = _page_token(workspace_id, f, rows[size - 1]) if len(rows) > size else ""
    return [db.contact_to_proto(r) for r in rows[:size]], token


def _check_optional_key(v: Validator, key: str) -> None:
    """An idempotency key a call may carry (AdjustScore, ModifyTags): empty or a short text."""
    v.check(
        len(key) <= model.MAX_IDEMPOTENCY_KEY,
        "idempotency_key",
        f"longer than {model.MAX_IDEMPOTENCY_KEY}",
    )
    v.check("\x00" not in key, "idempotency_key", "contains a NUL character")


async def modify_tags(
    pool: asyncpg.Pool,
    workspace_id: str,
    ref: contacts_pb2.ContactRef,
    has_ref: bool,
    add: list[str],
    remove: list[str],
    idempotency_key: str = "",
) -> contacts_pb2.ModifyTagsResponse:
    """Add and remove tags on one contact; one TagsChanged when the tags changed. With an
    idempotency key, the same key again answers the first call's version (``duplicate``)
    and applies nothing, whatever changed since; the key used for another contact or change
    is a conflict."""
    v = Validator()
    _check_ref(v, ref, has_ref)
    model.check_tag_change(v, add, remove)
    _check_optional_key(v, idempotency_key)
    v.raise_if_any()
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        row = await db.find_contact(conn, workspace_id, ref, for_update=True)
        if idempotency_key:
            first = await db.claim_tag_change(
                conn, workspace_id, idempotency_key, row["id"], add, remove, now
            )
            if first is not None:
                if (
                    first["contact_id"] != row["id"]
                    or list(first["add_tags"]) != sorted(set(add))
                    or list(first["remove_tags"]) != sorted(set(remove))
                ):
                    raise AlreadyExists(
                        f"idempotency key {idempotency_key!r} was used for another tag change;"
                        " send a new key for a new change"
                    )
                return contacts_pb2.ModifyTagsResponse(
                    contact=db.contact_to_proto(row), duplicate=True, version=first["version"]
                )
        old = sorted(set(row["tags"]))
        new = model.modify_tags(old, add, remove)
        if new == old:
            if idempotency_key:
                await db.record_tag_change(conn, workspace_id, idempotency_key, row["version"])
            return contacts_pb2.ModifyTagsResponse(
                contact=db.contact_to_proto(row), version=row["version"]
            )
        v.check(
            len(new) <= model.MAX_TAGS,
            "add",
            f"the contact would have more than {model.MAX_TAGS} tags",
        )
        v.raise_if_any()
        await db.set_tags(conn, workspace_id, row["id"], new)
        version = await changes.bump_version(conn, workspace_id, row["id"], now)
        await changes.publish(
            conn,
            workspace_id,
            row["id"],
            events_pb2.TagsChanged(
                contact_id=str(row["id"]),
                added=sorted(set(new) - set(old)),
                removed=sorted(set(old) - set(new)),
                tags=new,
                version=version,
            ),
            occurred_at=now,
        )
        if idempotency_key:
            await db.record_tag_change(conn, workspace_id, idempotency_key, version)
        return contacts_pb2.ModifyTagsResponse(
            contact=db.contact_to_proto(await db.contact_by_id(conn, workspace_id, row["id"])),
            changed=True,
            version=version,
        )


async def bulk_modify_tags(
    pool: asyncpg.Pool,
    workspace_id: str,
    f: contacts_pb2.ContactFilter,
    add: list[str],
    remove: list[str],
) -> tuple[int, int]:
    """Add and remove tags on every contact ``f`` matches, in one transaction of set-based
    SQL: (matched, changed). Each changed contact gets its version bumped once and one
    TagsChanged; the rest are left alone, so a repeat changes nothing."""
    v = Validator()
    filters.validate_filter(v, f)
    model.check_tag_change(v, add, remove)
    v.raise_if_any()
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        await filters.check_attribute_types(conn, v, f, workspace_id)
        v.raise_if_any()
        matched, changed = await db.bulk_modify_tags(conn, workspace_id, f, add, remove, now)
        over = [c for c in changed if len(c.tags) > model.MAX_TAGS]
        if over:
            raise InvalidArgument(
                FieldViolation(
                    "add",
                    f"contact {over[0].contact_id} would have more than {model.MAX_TAGS} tags",
                )
            )
        await add_many_to_outbox(
            conn,
            db.SCHEMA,
            CONTACTS_EVENTS,
            [
                (
                    str(c.contact_id),
                    new_envelope(
                        workspace_id,
                        events_pb2.TagsChanged(
                            contact_id=str(c.contact_id),
                            added=c.added,
                            removed=c.removed,
                            tags=c.tags,
                            version=c.version,
                        ),
                        occurred_at=now,
                    ),
                    current_traceparent(),
                )
                for c in changed
            ],
        )
    return matched, len(changed)


async def adjust_score(
    pool: asyncpg.Pool,
    workspace_id: str,
    ref: contacts_pb2.ContactRef,
    has_ref: bool,
    delta: int,
    idempotency_key: str,
) -> contacts_pb2.AdjustScoreResponse:
    """``score += delta`` atomically (concurrent deltas all count), one ScoreChanged. With
    an idempotency key, the same key again answers the first result (``duplicate``) and
    applies nothing; the key used for another contact or delta is a conflict. A sum beyond
    int64 is refused and changes nothing."""
    v = Validator()
    _check_ref(v, ref, has_ref)
    v.check(delta != 0, "delta", "must not be 0")
    _check_optional_key(v, idempotency_key)
    v.raise_if_any()
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        row = await db.find_contact(conn, workspace_id, ref)
        contact_id: uuid.UUID = row["id"]
        if idempotency_key and not await db.claim_score_adjustment(
            conn, workspace_id, idempotency_key, contact_id, delta, now
        ):
            first = await db.find_score_adjustment(conn, workspace_id, idempotency_key)
            if first is None or first["contact_id"] != contact_id or first["delta"] != delta:
                raise AlreadyExists(
                    f"idempotency key {idempotency_key!r} was used for another score change;"
                    " send a new key for a new change"
                )
            return contacts_pb2.AdjustScoreResponse(
                score=first["score"], version=first["version"], duplicate=True
            )
        result = await db.adjust_score(conn, workspace_id, contact_id, delta, now)
        if result is None:
            raise InvalidArgument(
                FieldViolation("delta", "the score would leave the 64-bit integer range")
            )
        score, version = result
        if idempotency_key:
            await db.record_score_adjustment(conn, workspace_id, idempotency_key, score, version)
        await changes.publish(
            conn,
            workspace_id,
            contact_id,
            events_pb2.ScoreChanged(
                contact_id=str(contact_id), delta=delta, score=score, version=version
            ),
            occurred_at=now,
        )
    return contacts_pb2.AdjustScoreResponse(score=score, version=version)


def _definition(row: asyncpg.Record) -> contacts_pb2.AttributeDefinition:
    d = contacts_pb2.AttributeDefinition(
        name=row["name"],
        type=row["type"],
        description=row["description"],
    )
    d.created_at.FromDatetime(row["created_at"])
    return d


async def define_attribute(
    pool: asyncpg.Pool, workspace_id: str, definition: contacts_pb2.AttributeDefinition
) -> tuple[contacts_pb2.AttributeDefinition, bool]:
    """Declare a custom attribute (or update the description of one declared with this type):
    (definition, created). Its type never changes: values stored under it were checked
    against it, so another type is refused."""
    v = Validator()
    attribute_rules.check_definition(
        v, definition.name, definition.type, definition.description, "attribute"
    )
    v.raise_if_any()
    async with pool.acquire() as conn, conn.transaction():
        row, created = await db.define_attribute(
            conn,
            workspace_id,
            definition.name,
            definition.type,
            definition.description,
            clock.now(),
        )
        if row["type"] != definition.type:
            kind = attribute_rules.AttributeType(row["type"]).name
            raise AlreadyExists(
                f"attribute {definition.name!r} is declared as {kind}: its type cannot change"
            )
        if created and (
            await db.count_attribute_definitions(conn, workspace_id)
            > attribute_rules.MAX_DEFINITIONS
        ):
            raise InvalidArgument(
                FieldViolation(
                    "attribute.name",
                    f"the workspace has {attribute_rules.MAX_DEFINITIONS} attributes already",
                )
            )
    return _definition(row), created


async def list_attributes(
    pool: asyncpg.Pool, workspace_id: str
) -> list[contacts_pb2.AttributeDefinition]:
    async with pool.acquire() as conn:
        return [_definition(r) for r in await db.list_attributes(conn, workspace_id)]


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
