"""Consent, double opt-in, preferences, suppression and eligibility: who may be mailed, why
not, and the proof of it.

Every consent given or withdrawn is a record of the history (``consent_events``: purpose,
status, source, wording, actor, IP, user agent, when); the state per purpose (``consents``)
is derived from it in the same transaction: the latest record by when it was given. Each
record is one change of the contact: it bumps the contact's version and publishes one
``ConsentChanged`` carrying it (services/contacts/changes.py).

Double opt-in (``workspaces.double_opt_in``): a grant is recorded PENDING and a
confirmation mail is requested from delivery (``DeliveryRequested``, transactional, through
the outbox). Delivery puts a signed, expiring link to tracking in it; tracking verifies the
link and calls :func:`confirm_consent`, which records the grant with the click's IP and
browser. A grant coming from the contact's own mail (preference page, confirmation link)
needs no confirmation: only the mailbox's owner has that link.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from google.protobuf.field_mask_pb2 import FieldMask
from nudge.contacts.v1 import contacts_pb2, events_pb2
from nudge.delivery.v1 import delivery_pb2
from nudge.delivery.v1 import events_pb2 as delivery_events_pb2
from nudge.tracking.v1 import events_pb2 as tracking_pb2

from services.common import clock
from services.common.contact_limits import MAX_FUTURE_SKEW, MAX_TEXT, check_email
from services.common.errors import (
    FailedPrecondition,
    NotFound,
    PermanentError,
    Validator,
)
from services.common.events import new_envelope
from services.common.idempotency import claim_event
from services.common.ids import canonical_uuid, is_uuid
from services.common.outbox import add_to_outbox
from services.common.topics import DELIVERY_REQUESTS
from services.contacts import changes, suppression
from services.contacts.adapters import consent_pg as store
from services.contacts.adapters import filters
from services.contacts.adapters import postgres as db

log = logging.getLogger(__name__)

MARKETING = contacts_pb2.CONSENT_PURPOSE_MARKETING
TARGETED = contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES
AUTOMATIONS = contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
TRANSACTIONAL = contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
GRANTED = contacts_pb2.CONSENT_STATUS_GRANTED
WITHDRAWN = contacts_pb2.CONSENT_STATUS_WITHDRAWN
PENDING = contacts_pb2.CONSENT_STATUS_PENDING
CONSENT_PURPOSES = (MARKETING, TARGETED, AUTOMATIONS)
PURPOSES = (*CONSENT_PURPOSES, TRANSACTIONAL)
SOURCE_API = contacts_pb2.CONSENT_SOURCE_API
SOURCE_UNSUBSCRIBE = contacts_pb2.CONSENT_SOURCE_UNSUBSCRIBE_LINK
SOURCE_PREFERENCES = contacts_pb2.CONSENT_SOURCE_PREFERENCE_PAGE
SOURCE_CONFIRMATION = contacts_pb2.CONSENT_SOURCE_CONFIRMATION_LINK
RECORDABLE_SOURCES = frozenset(contacts_pb2.ConsentSource.values()) - {
    contacts_pb2.CONSENT_SOURCE_UNSPECIFIED,
    SOURCE_CONFIRMATION,  # the double opt-in link's own: nobody records it by hand
}
# Grants that came through a link in the contact's own mail prove the address already.
SELF_CONFIRMING_SOURCES = frozenset({SOURCE_PREFERENCES, SOURCE_CONFIRMATION})

MAX_WORDING = 2000
MAX_IP = 64
MAX_USER_AGENT = 512
MAX_PAGE = 1000
DEFAULT_PAGE = 100
CONFIRMATION_TTL = timedelta(days=7)
CONSUMER = "contacts"
# The confirmation mails' ids derive from the pending record, so a replayed outbox row or a
# retried transaction asks delivery for the same message.
CONFIRMATION_NAMESPACE = uuid.UUID("6d1f0c43-3f5e-4b7a-9a59-2f0e0c1b7a10")


# ---------------------------------------------------------------- rules (pure)


def purpose_name(purpose: int) -> str:
    return (
        contacts_pb2.ConsentPurpose.Name(purpose)  # type: ignore[arg-type]
        .removeprefix("CONSENT_PURPOSE_")
        .lower()
    )


def decide(
    purpose: int, consent: int | None, suppressed_reason: int | None, consent_required: bool
) -> tuple[bool, str]:
    """May a contact be mailed for ``purpose``; when not, why (``reason:detail``).

    A suppressed address gets nothing, transactional mail included (the address bounced, the
    person complained or was erased). Transactional mail needs no consent. A withdrawal or a
    pending double opt-in is never consent. Campaigns and targeted messages go to contacts
    who never answered only when the workspace does not require consent; automations never.
    :func:`services.contacts.adapters.consent_pg.count_eligible` is the same rule in SQL.
    """
    if suppressed_reason is not None:
        return False, f"suppressed:{suppression.reason_name(suppressed_reason)}"
    if purpose == TRANSACTIONAL or consent == GRANTED:
        return True, ""
    if consent == WITHDRAWN:
        return False, f"consent_withdrawn:{purpose_name(purpose)}"
    if consent == PENDING:
        return False, f"consent_pending:{purpose_name(purpose)}"
    if purpose in (MARKETING, TARGETED) and not consent_required:
        return True, ""
    return False, f"no_consent:{purpose_name(purpose)}"


def check_proof(v: Validator, wording: str, actor: str, ip: str, user_agent: str) -> None:
    v.check(len(wording) <= MAX_WORDING, "wording", f"longer than {MAX_WORDING}")
    v.check(len(actor) <= MAX_TEXT, "actor", f"longer than {MAX_TEXT}")
    v.check(len(ip) <= MAX_IP, "ip", f"longer than {MAX_IP}")
    v.check(len(user_agent) <= MAX_USER_AGENT, "user_agent", f"longer than {MAX_USER_AGENT}")
    for field, value in (("wording", wording), ("actor", actor), ("ip", ip)):
        v.check("\x00" not in value, field, "contains a NUL character")
    v.check("\x00" not in user_agent, "user_agent", "contains a NUL character")
    if ip:
        v.check(_is_ip(ip), "ip", "is not an IPv4 or IPv6 address")


def _is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_contact_ref(v: Validator, ref: contacts_pb2.ContactRef, present: bool) -> None:
    """A reference names somebody: one of its fields, not empty (else the caller's mistake,
    not a contact that is missing)."""
    which = ref.WhichOneof("ref") if present else None
    v.check(which is not None, "contact", "is required: one of contact_id, external_id, email")
    if which is not None:
        v.check(bool(getattr(ref, which).strip()), f"contact.{which}", "is empty")


# ---------------------------------------------------------------- recording consent


@dataclass(frozen=True)
class Recorded:
    record_id: uuid.UUID
    pending_confirmation: bool


async def record_consent(
    pool: asyncpg.Pool, workspace_id: str, request: contacts_pb2.RecordConsentRequest
) -> Recorded:
    now = clock.now()
    v = Validator()
    check_contact_ref(v, request.contact, request.HasField("contact"))
    v.check(
        request.purpose in CONSENT_PURPOSES,
        "purpose",
        "must be MARKETING, TARGETED_MESSAGES or AUTOMATIONS",
    )
    v.check(request.status in (GRANTED, WITHDRAWN), "status", "must be GRANTED or WITHDRAWN")
    v.check(request.source in RECORDABLE_SOURCES, "source", "is required: FORM, IMPORT, API, ...")
    check_proof(v, request.wording, request.actor, request.ip, request.user_agent)
    recorded_at = now
    if request.HasField("recorded_at"):
        given = v.timestamp(request.recorded_at, "recorded_at")
        if given is not None:
            v.check(given <= now + MAX_FUTURE_SKEW, "recorded_at", "is in the future")
            recorded_at = min(given, now)
    v.raise_if_any()
    async with pool.acquire() as conn, conn.transaction():
        row = await db.find_contact(conn, workspace_id, request.contact)
        return await _record_consent(
            conn,
            workspace_id,
            row["id"],
            request.purpose,
            request.status,
            request.source,
            request.wording,
            request.actor or "api",
            ip=request.ip,
            user_agent=request.user_agent,
            recorded_at=recorded_at,
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
    *,
    ip: str = "",
    user_agent: str = "",
    recorded_at: datetime | None = None,
) -> Recorded:
    """Record one consent change in the caller's transaction: the history record, the derived
    state, the contact's new version and its one ConsentChanged; in a double opt-in workspace
    a grant becomes PENDING and its confirmation mail is requested."""
    now = clock.now()
    contact = await store.lock_contact(conn, workspace_id, contact_id)
    if contact is None:
        raise NotFound("contact not found")
    pending = (
        status == GRANTED
        and contact["double_opt_in"]
        and source not in SELF_CONFIRMING_SOURCES
        and (await store.current_states(conn, workspace_id, contact_id)).get(purpose, (0,))[0]
        != GRANTED
    )
    record = store.NewConsentRecord(
        purpose=purpose,
        status=PENDING if pending else status,
        source=source,
        wording=wording,
        actor=actor,
        ip=ip,
        user_agent=user_agent,
        recorded_at=recorded_at or now,
    )
    record_id = await store.insert_record(conn, workspace_id, contact_id, record)
    current = await store.derive_current(conn, workspace_id, contact_id, purpose)
    version = await changes.bump_version(conn, workspace_id, contact_id, now)
    await changes.publish(
        conn,
        workspace_id,
        contact_id,
        events_pb2.ConsentChanged(
            contact_id=str(contact_id),
            purpose=purpose,  # type: ignore[arg-type]
            # The state now: a record back-dated behind a later one does not change it, and
            # read models keep the state, not the history.
            status=current or record.status,  # type: ignore[arg-type]
            source=source,  # type: ignore[arg-type]
            wording=wording,
            actor=actor,
            version=version,
        ),
        occurred_at=now,
        event_id=str(record_id),
    )
    if pending:
        await _request_confirmation(
            conn, workspace_id, contact_id, record_id, [purpose], wording, contact, now
        )
    return Recorded(record_id, pending)


async def _request_confirmation(
    conn: asyncpg.Connection,
    workspace_id: str,
    contact_id: uuid.UUID,
    record_id: uuid.UUID,
    purposes: Sequence[int],
    wording: str,
    contact: asyncpg.Record,
    now: datetime,
) -> None:
    message_id = uuid.uuid5(CONFIRMATION_NAMESPACE, str(record_id))
    expires_at = now + CONFIRMATION_TTL
    await store.insert_confirmation(
        conn, workspace_id, message_id, contact_id, purposes, wording, now, expires_at
    )
    names = ", ".join(purpose_name(p).replace("_", " ") for p in purposes)
    request = delivery_pb2.DeliveryRequested(
        message_id=str(message_id),
        contact_id=str(contact_id),
        kind=delivery_pb2.MESSAGE_KIND_TRANSACTIONAL,
        purpose=TRANSACTIONAL,
        content=delivery_pb2.MessageContent(
            subject="Please confirm your subscription to {{ workspace.name }}",
            body_text=(
                "Hello {{ contact.first_name }},\n\n"
                "please confirm that you want to receive e-mails from {{ workspace.name }}"
                f" ({names}) by opening this link:\n\n{{{{ links.confirm }}}}\n\n"
                "The link is valid for 7 days. If you did not ask for this, ignore this mail:"
                " you will not be subscribed.\n"
            ),
        ),
        vars={"confirm_expires_at": str(int(expires_at.timestamp()))},
    )
    await add_to_outbox(
        conn,
        db.SCHEMA,
        DELIVERY_REQUESTS,
        str(contact_id),
        new_envelope(workspace_id, request, occurred_at=now),
    )


async def confirm_consent(
    pool: asyncpg.Pool,
    workspace_id: str,
    request: contacts_pb2.ConfirmConsentRequest,
) -> contacts_pb2.ConfirmConsentResponse:
    """The click on a confirmation link (tracking verified its signature and expiry): grant the
    pending purposes, with the click's IP and browser. A second click grants nothing."""
    v = Validator()
    v.check(is_uuid(request.message_id), "message_id", "is not a message id")
    v.check(is_uuid(request.contact_id), "contact_id", "is not a contact id")
    check_proof(v, "", "", request.ip, request.user_agent)
    v.raise_if_any()
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        pending = await store.lock_confirmation(conn, workspace_id, uuid.UUID(request.message_id))
        if pending is None or str(pending["contact_id"]) != request.contact_id:
            raise NotFound("no such confirmation")
        if pending["expires_at"] <= now:
            raise FailedPrecondition("the confirmation link has expired")
        settings = await store.workspace_settings(conn, workspace_id)
        answer = contacts_pb2.ConfirmConsentResponse(
            contact_id=request.contact_id, workspace_name=settings["name"] if settings else ""
        )
        if pending["confirmed_at"] is not None:
            return answer
        current = await store.current_states(conn, workspace_id, pending["contact_id"])
        for purpose in pending["purposes"]:
            # A withdrawal since the request wins: the click confirms what is still asked.
            if current.get(purpose, (0,))[0] != PENDING:
                continue
            await _record_consent(
                conn,
                workspace_id,
                pending["contact_id"],
                purpose,
                GRANTED,
                SOURCE_CONFIRMATION,
                pending["wording"],
                "contact",
                ip=request.ip,
                user_agent=request.user_agent,
            )
            answer.confirmed.append(purpose)
        await store.mark_confirmed(conn, workspace_id, uuid.UUID(request.message_id), now)
    return answer


# ---------------------------------------------------------------- reading consent


async def get_consent_history(
    pool: asyncpg.Pool, workspace_id: str, request: contacts_pb2.GetConsentHistoryRequest
) -> contacts_pb2.GetConsentHistoryResponse:
    v = Validator()
    check_contact_ref(v, request.contact, request.HasField("contact"))
    v.check(0 <= request.page_size <= MAX_PAGE, "page_size", f"must be 1-{MAX_PAGE}")
    after = _parse_history_token(v, request.page_token) if request.page_token else None
    v.raise_if_any()
    page_size = request.page_size or DEFAULT_PAGE
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        contact = await db.find_contact(conn, workspace_id, request.contact)
        states = await store.current_states(conn, workspace_id, contact["id"])
        rows = await store.history_page(conn, workspace_id, contact["id"], page_size, after)
    answer = contacts_pb2.GetConsentHistoryResponse()
    for purpose in CONSENT_PURPOSES:
        current = answer.current.add(purpose=purpose)
        if purpose in states:
            status, since = states[purpose]
            current.state = _STATE_OF_STATUS[status]
            current.since.FromDatetime(since)
        else:
            current.state = contacts_pb2.CONSENT_STATE_NEVER_ASKED
    for row in rows[:page_size]:
        record = answer.records.add(
            id=str(row["id"]),
            contact_id=str(row["contact_id"]),
            purpose=row["purpose"],
            status=row["status"],
            source=row["source"],
            wording=row["wording"],
            actor=row["actor"],
            ip=row["ip"],
            user_agent=row["user_agent"],
        )
        record.recorded_at.FromDatetime(row["recorded_at"])
    if len(rows) > page_size:
        last = rows[page_size - 1]
        key = f"{last['recorded_at'].isoformat()}|{last['seq']}"
        answer.next_page_token = base64.urlsafe_b64encode(key.encode()).decode()
    return answer


_STATE_OF_STATUS: dict[int, contacts_pb2.ConsentState.ValueType] = {
    GRANTED: contacts_pb2.CONSENT_STATE_GRANTED,
    WITHDRAWN: contacts_pb2.CONSENT_STATE_WITHDRAWN,
    PENDING: contacts_pb2.CONSENT_STATE_PENDING,
}


def _parse_history_token(v: Validator, token: str) -> tuple[datetime, int] | None:
    try:
        when, seq = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return datetime.fromisoformat(when), int(seq)
    except (ValueError, UnicodeDecodeError):
        v.check(False, "page_token", "is not a token we gave")
        return None


async def check_eligibility(
    pool: asyncpg.Pool, workspace_id: str, contact_id: str, purpose: int
) -> contacts_pb2.CheckEligibilityResponse:
    v = Validator()
    v.check(purpose in PURPOSES, "purpose", "is required")
    v.check(bool(contact_id), "contact_id", "is required")
    v.raise_if_any()
    if not is_uuid(contact_id):
        raise NotFound("contact not found")
    async with pool.acquire() as conn:
        facts = await store.eligibility_facts(conn, workspace_id, uuid.UUID(contact_id), purpose)
    if facts is None:
        raise NotFound("contact not found")
    answer = contacts_pb2.CheckEligibilityResponse()
    _fill_answer(answer, purpose, facts)
    return answer


MAX_ELIGIBILITY_CHECKS = 1000


async def check_eligibility_batch(
    pool: asyncpg.Pool, workspace_id: str, request: contacts_pb2.CheckEligibilityBatchRequest
) -> contacts_pb2.CheckEligibilityBatchResponse:
    """:func:`check_eligibility` for up to :data:`MAX_ELIGIBILITY_CHECKS` contacts in one
    query, answered in the order asked: delivery asks once per batch of mail instead of once
    per mail (an RPC and a query each cost more than the check itself).

    A contact that does not exist here (unknown, erased, another workspace's) answers
    ``found = false`` rather than failing the batch. A malformed id, however, fails the whole
    call with INVALID_ARGUMENT naming the check: a caller that sends one has a bug, and
    answering "not found" would hide it among contacts that were really erased.
    """
    checks = request.checks
    v = Validator()
    if len(checks) > MAX_ELIGIBILITY_CHECKS:
        v.check(False, "checks", f"at most {MAX_ELIGIBILITY_CHECKS} per call, got {len(checks)}")
        v.raise_if_any()
    ids, purposes = _batch_keys(v, checks)
    v.raise_if_any()
    if not checks:
        return contacts_pb2.CheckEligibilityBatchResponse()
    async with pool.acquire() as conn:
        if request.exceptions_only:
            # Only the checks that are not plainly mailable, chosen by the query.
            facts = await store.eligibility_exceptions(conn, workspace_id, ids, purposes, GRANTED)
        else:
            facts = list(
                enumerate(await store.eligibility_facts_many(conn, workspace_id, ids, purposes))
            )
    response = contacts_pb2.CheckEligibilityBatchResponse()
    add = response.answers.add  # cheaper than a message object per answer, then a list
    for index, row in facts:
        contact_id = checks[index].contact_id
        if row is None:
            add(contact_id=contact_id, found=False)
        else:
            _fill_answer(add(contact_id=contact_id, found=True).eligibility, purposes[index], row)
    return response


def _batch_keys(
    v: Validator, checks: Sequence[contacts_pb2.CheckEligibilityRequest]
) -> tuple[list[str], list[int]]:
    """The contact ids (canonical text, which asyncpg reads as uuid in C) and purposes of
    ``checks``, each bad one a violation naming its check. An id already in canonical form,
    as every service sends it, is taken after one regular expression instead of being parsed
    into a uuid.UUID twice; any other form uuid.UUID accepts is still accepted."""
    ids: list[str] = []
    purposes: list[int] = []
    for n, check in enumerate(checks):
        contact_id, purpose = check.contact_id, check.purpose
        if purpose not in PURPOSES:
            v.check(False, f"checks[{n}].purpose", "is required")
        canonical = canonical_uuid(contact_id)
        if canonical is not None:
            ids.append(canonical)
        elif not contact_id:
            v.check(False, f"checks[{n}].contact_id", "is required")
        else:
            v.check(False, f"checks[{n}].contact_id", "is not a contact id")
        purposes.append(purpose)
    return ids, purposes


def _fill_answer(
    answer: contacts_pb2.CheckEligibilityResponse, purpose: int, facts: asyncpg.Record
) -> None:
    """One answer from :func:`store.eligibility_facts`'s row, for the single and batch RPCs,
    set in place: the batch fills each answer where it lies in the response, about half the
    cost of building a message that the response then copies."""
    eligible, reason = decide(
        purpose,
        facts["consent"],
        facts["suppressed_reason"],
        facts["consent_required_for_campaigns"],
    )
    answer.eligible = eligible
    answer.reason = reason
    answer.email = facts["email"]
    answer.first_name = facts["first_name"]
    answer.last_name = facts["last_name"]
    answer.locale = facts["locale"]
    answer.workspace_name = facts["workspace_name"]
    answer.time_zone = facts["time_zone"]
    answer.consented = facts["consent"] == GRANTED


# ---------------------------------------------------------------- unsubscribe, preferences


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
    contact_id = uuid.UUID(request.contact_id)
    async with pool.acquire() as conn, conn.transaction():
        if not await claim_event(conn, CONSUMER, event_id):
            return 0
        if await store.lock_contact(conn, workspace_id, contact_id) is None:
            return 0  # erased since the mail was sent: nothing left to withdraw
        current = await store.current_states(conn, workspace_id, contact_id)
        for purpose in CONSENT_PURPOSES:
            if current.get(purpose, (0,))[0] == WITHDRAWN:
                continue
            await _record_consent(
                conn,
                workspace_id,
                contact_id,
                purpose,
                WITHDRAWN,
                SOURCE_UNSUBSCRIBE,
                f"{how} in message {request.message_id}",
                "contact",
            )
            changed += 1
    return changed


async def get_preferences(
    pool: asyncpg.Pool, workspace_id: str, contact_id: str
) -> contacts_pb2.Preferences:
    v = Validator()
    v.check(is_uuid(contact_id), "contact_id", "is not a contact id")
    v.raise_if_any()
    async with pool.acquire() as conn:
        return await _preferences(conn, workspace_id, uuid.UUID(contact_id))


async def _preferences(
    conn: asyncpg.Connection, workspace_id: str, contact_id: uuid.UUID
) -> contacts_pb2.Preferences:
    on: dict[int, bool] = {}
    facts = None
    for purpose in CONSENT_PURPOSES:
        facts = await store.eligibility_facts(conn, workspace_id, contact_id, purpose)
        if facts is None:
            raise NotFound("contact not found")
        # What is on is what the contact's consent says, suppression aside (shown apart).
        on[purpose] = decide(
            purpose, facts["consent"], None, facts["consent_required_for_campaigns"]
        )[0]
    assert facts is not None
    return contacts_pb2.Preferences(
        contact_id=str(contact_id),
        targeted_messages=on[TARGETED],
        automations=on[AUTOMATIONS],
        marketing=on[MARKETING],
        suppressed=facts["suppressed_reason"] is not None,
        workspace_name=facts["workspace_name"],
        email=facts["email"],
    )


async def set_preferences(
    pool: asyncpg.Pool, workspace_id: str, request: contacts_pb2.SetPreferencesRequest
) -> contacts_pb2.Preferences:
    """The preference page's answer: record a change for each purpose switched, with the
    page's wording and the contact's IP and browser; purposes left as they were record
    nothing (no event, no version)."""
    v = Validator()
    v.check(is_uuid(request.contact_id), "contact_id", "is not a contact id")
    check_proof(v, request.wording, "", request.ip, request.user_agent)
    v.raise_if_any()
    contact_id = uuid.UUID(request.contact_id)
    wanted = {
        MARKETING: request.marketing,
        TARGETED: request.targeted_messages,
        AUTOMATIONS: request.automations,
    }
    async with pool.acquire() as conn, conn.transaction():
        if await store.lock_contact(conn, workspace_id, contact_id) is None:
            raise NotFound("contact not found")
        shown = await _preferences(conn, workspace_id, contact_id)
        now_on = {
            MARKETING: shown.marketing,
            TARGETED: shown.targeted_messages,
            AUTOMATIONS: shown.automations,
        }
        for purpose in CONSENT_PURPOSES:
            if wanted[purpose] == now_on[purpose]:
                continue
            await _record_consent(
                conn,
                workspace_id,
                contact_id,
                purpose,
                GRANTED if wanted[purpose] else WITHDRAWN,
                SOURCE_PREFERENCES,
                request.wording,
                "contact",
                ip=request.ip,
                user_agent=request.user_agent,
            )
        return await _preferences(conn, workspace_id, contact_id)


# ---------------------------------------------------------------- suppression list


def _check_address(v: Validator, email: str) -> None:
    v.check(bool(email.strip()), "email", "is required")
    v.check(len(email) <= 254, "email", "longer than 254")
    v.check("\x00" not in email, "email", "contains a NUL character")
    if email.strip() and "\x00" not in email:
        # The same maintained syntax check as a contact's address, with its reason.
        _, reason = check_email(email.strip())
        v.check(not reason, "email", f"is not a valid e-mail address: {reason}")


def _suppression_proto(entry: suppression.Entry) -> contacts_pb2.Suppression:
    answer = contacts_pb2.Suppression(email=entry.address, reason=entry.reason)  # type: ignore[arg-type]
    answer.created_at.FromDatetime(entry.created_at)
    return answer


async def add_suppression(
    pool: asyncpg.Pool, workspace_id: str, request: contacts_pb2.AddSuppressionRequest
) -> contacts_pb2.AddSuppressionResponse:
    reason = request.reason or contacts_pb2.SUPPRESSION_REASON_MANUAL
    v = Validator()
    _check_address(v, request.email)
    v.check(
        reason in contacts_pb2.SuppressionReason.values(), "reason", "is not a suppression reason"
    )
    v.check(reason != suppression.ERASED, "reason", "ERASED is set by erasing the contact")
    v.raise_if_any()
    async with pool.acquire() as conn, conn.transaction():
        created = await suppress_contact_address(conn, workspace_id, request.email, reason)
        entry = await suppression.lookup(conn, workspace_id, request.email)
    assert entry is not None
    return contacts_pb2.AddSuppressionResponse(
        suppression=_suppression_proto(entry), created=created
    )


async def suppress_contact_address(
    conn: asyncpg.Connection, workspace_id: str, email: str, reason: int
) -> bool:
    """List the address (kept in clear); when it is newly listed and a contact has it, that
    contact changed: its version is bumped and one ContactSuppressed published."""
    created = await suppression.suppress(conn, workspace_id, email, reason, keep_address=True)
    if created:
        contact_id = await conn.fetchval(
            "SELECT id FROM contacts WHERE workspace_id = $1 AND lower(email) = lower(btrim($2))",
            uuid.UUID(workspace_id),
            email,
        )
        if contact_id is not None:
            now = clock.now()
            version = await changes.bump_version(conn, workspace_id, contact_id, now)
            await changes.publish(
                conn,
                workspace_id,
                contact_id,
                events_pb2.ContactSuppressed(
                    contact_id=str(contact_id),
                    reason=reason,  # type: ignore[arg-type]
                    version=version,
                ),
                occurred_at=now,
            )
    return created


async def remove_suppression(
    pool: asyncpg.Pool, workspace_id: str, request: contacts_pb2.RemoveSuppressionRequest
) -> contacts_pb2.RemoveSuppressionResponse:
    v = Validator()
    _check_address(v, request.email)
    v.raise_if_any()
    async with pool.acquire() as conn, conn.transaction():
        reason = await suppression.unsuppress(conn, workspace_id, request.email)
    if reason is None:
        return contacts_pb2.RemoveSuppressionResponse(removed=False)
    if reason not in suppression.REMOVABLE:
        raise FailedPrecondition(
            f"suppressed for {suppression.reason_name(reason)}: only manual and unsubscribe"
            " entries can be removed"
        )
    return contacts_pb2.RemoveSuppressionResponse(removed=True)


async def list_suppressions(
    pool: asyncpg.Pool, workspace_id: str, request: contacts_pb2.ListSuppressionsRequest
) -> contacts_pb2.ListSuppressionsResponse:
    v = Validator()
    v.check(request.reason in contacts_pb2.SuppressionReason.values(), "reason", "is not a reason")
    v.check(0 <= request.page_size <= MAX_PAGE, "page_size", f"must be 1-{MAX_PAGE}")
    v.raise_if_any()
    async with pool.acquire() as conn:
        entries, token = await suppression.list_entries(
            conn,
            workspace_id,
            request.reason,
            request.page_size or DEFAULT_PAGE,
            request.page_token,
        )
    return contacts_pb2.ListSuppressionsResponse(
        suppressions=[_suppression_proto(e) for e in entries], next_page_token=token
    )


async def on_bounce(
    pool: asyncpg.Pool, workspace_id: str, event_id: str, bounce: delivery_events_pb2.MessageBounced
) -> bool:
    """A permanent bounce lists the contact's address (HARD_BOUNCE); a temporary one does
    nothing. Claimed once per event. True when the address was newly listed."""
    if not bounce.permanent:
        return False
    if not (is_uuid(bounce.contact_id) and is_uuid(workspace_id)):
        raise PermanentError(f"bounce with malformed ids: {bounce.contact_id!r}")
    async with pool.acquire() as conn, conn.transaction():
        if not await claim_event(conn, CONSUMER, event_id):
            return False
        email = await conn.fetchval(
            "SELECT email FROM contacts WHERE workspace_id = $1 AND id = $2",
            uuid.UUID(workspace_id),
            uuid.UUID(bounce.contact_id),
        )
        if email is None:
            return False  # erased since: its address is listed by the erasure already
        return await suppress_contact_address(
            conn, workspace_id, email, contacts_pb2.SUPPRESSION_REASON_HARD_BOUNCE
        )


async def on_complaint(
    pool: asyncpg.Pool,
    workspace_id: str,
    event_id: str,
    complaint: delivery_events_pb2.MessageComplained,
) -> bool:
    """A complaint (the recipient marked the mail as spam, reported by a feedback loop) lists
    the contact's address (COMPLAINT): mailing someone who said "spam" again is what gets a
    sender blocked. Claimed once per event. True when the address was newly listed."""
    if not (is_uuid(complaint.contact_id) and is_uuid(workspace_id)):
        raise PermanentError(f"complaint with malformed ids: {complaint.contact_id!r}")
    async with pool.acquire() as conn, conn.transaction():
        if not await claim_event(conn, CONSUMER, event_id):
            return False
        email = await conn.fetchval(
            "SELECT email FROM contacts WHERE workspace_id = $1 AND id = $2",
            uuid.UUID(workspace_id),
            uuid.UUID(complaint.contact_id),
        )
        if email is None:
            return False  # erased since: its address is listed by the erasure already
        return await suppress_contact_address(
            conn, workspace_id, email, contacts_pb2.SUPPRESSION_REASON_COMPLAINT
        )


# ---------------------------------------------------------------- workspace settings


def _settings_proto(row: asyncpg.Record) -> contacts_pb2.WorkspaceSettings:
    return contacts_pb2.WorkspaceSettings(
        workspace_id=str(row["id"]),
        name=row["name"],
        consent_required_for_campaigns=row["consent_required_for_campaigns"],
        double_opt_in=row["double_opt_in"],
    )


SETTINGS_FIELDS = ("name", "consent_required_for_campaigns", "double_opt_in")


async def get_workspace_settings(
    pool: asyncpg.Pool, workspace_id: str
) -> contacts_pb2.WorkspaceSettings:
    async with pool.acquire() as conn:
        row = await store.workspace_settings(conn, workspace_id)
    if row is None:
        raise NotFound("workspace not found")
    return _settings_proto(row)


async def update_workspace_settings(
    pool: asyncpg.Pool,
    workspace_id: str,
    settings: contacts_pb2.WorkspaceSettings,
    mask: FieldMask,
) -> contacts_pb2.WorkspaceSettings:
    """Set the fields the mask names (all three when it is empty)."""
    v = Validator()
    paths = list(mask.paths) or list(SETTINGS_FIELDS)
    for n, path in enumerate(paths):
        v.check(path in SETTINGS_FIELDS, f"update_mask.paths[{n}]", f"{path!r} cannot be updated")
    v.check(len(set(paths)) == len(paths), "update_mask.paths", "names a field twice")
    if "name" in paths:
        v.check(
            0 < len(settings.name.strip()) <= MAX_TEXT, "settings.name", f"1-{MAX_TEXT} characters"
        )
        v.check("\x00" not in settings.name, "settings.name", "contains a NUL character")
    v.check(
        not settings.workspace_id or settings.workspace_id == workspace_id,
        "settings.workspace_id",
        "is not the caller's workspace",
    )
    v.raise_if_any()
    values: dict[str, Any] = {
        "name": settings.name.strip(),
        "consent_required_for_campaigns": settings.consent_required_for_campaigns,
        "double_opt_in": settings.double_opt_in,
    }
    async with pool.acquire() as conn, conn.transaction():
        row = await store.update_workspace_settings(
            conn, workspace_id, {p: values[p] for p in paths}
        )
    if row is None:
        raise NotFound("workspace not found")
    return _settings_proto(row)


# ---------------------------------------------------------------- counting an audience


# The current members of a segment (workspace id, segment id) -> contact ids.
SegmentMembers = Callable[[str, str], Awaitable[list[uuid.UUID]]]

INELIGIBLE_REASONS = ("no_consent", "consent_withdrawn", "consent_pending", "suppressed")


async def count_eligible(
    pool: asyncpg.Pool,
    workspace_id: str,
    request: contacts_pb2.CountEligibleRequest,
    segment_members: SegmentMembers | None = None,
) -> contacts_pb2.CountEligibleResponse:
    """How many of the audience (a filter, or a segment's members as ``segment_members``
    answers them) may be mailed for the purpose, and why the others may not."""
    v = Validator()
    v.check(request.purpose in PURPOSES, "purpose", "is required")
    audience = request.WhichOneof("audience")
    if audience == "filter":
        filters.validate_filter(v, request.filter)
    elif audience == "segment_id":
        v.check(bool(request.segment_id.strip()), "segment_id", "is empty")
        v.check(len(request.segment_id) <= MAX_TEXT, "segment_id", f"longer than {MAX_TEXT}")
    v.raise_if_any()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        if audience == "segment_id":
            if segment_members is None:
                raise FailedPrecondition("counting a segment needs segmentation, not configured")
            ids = await segment_members(workspace_id, request.segment_id)
            sql, params = "a.id = ANY($3::uuid[])", [ids]
        else:
            contact_filter = (
                request.filter if audience == "filter" else contacts_pb2.ContactFilter()
            )
            await filters.check_attribute_types(conn, v, contact_filter, workspace_id)
            v.raise_if_any()
            sql, params = filters.where_clause(
                contact_filter, uuid.UUID(workspace_id), alias="a", first_param=3
            )
        row = await store.count_eligible(conn, workspace_id, request.purpose, sql, params)
    counts = {reason: int(row[reason]) for reason in INELIGIBLE_REASONS}
    total = int(row["total"])
    return contacts_pb2.CountEligibleResponse(
        total=total,
        eligible=total - sum(counts.values()),
        ineligible=[contacts_pb2.IneligibleCount(reason=r, count=c) for r, c in counts.items()],
    )
