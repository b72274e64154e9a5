"""Delivery: check eligibility, claim the message id, hand over to SMTP, record the outcome.

The order matters. Eligibility is asked first because asking has no side effect. The claim
(a unique row per message id) comes before the SMTP hand-off, so a redelivered request or a
second worker never mails twice; the outcome and its event commit together afterwards. A
crash between the claim and the outcome leaves the row CLAIMED: that message is not retried
(at most once), and the Message-ID header lets the relay drop a duplicate if one ever slips.
"""

from __future__ import annotations

import email.policy
import logging
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

import aiosmtplib
import asyncpg
from nudge.delivery.v1 import delivery_pb2, events_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import clock, links
from services.common.errors import FieldViolation, InvalidArgument, NotFound, Validator
from services.common.events import deterministic_id, new_envelope
from services.common.ids import is_uuid
from services.common.outbox import add_to_outbox
from services.common.topics import DELIVERY_EVENTS, DELIVERY_REQUESTS
from services.delivery import guard
from services.delivery.adapters import postgres as db
from services.delivery.adapters.contacts import EligibilityClient
from services.delivery.adapters.smtp import AmbiguousHandoff, SmtpSender
from services.delivery.domain.ledger import Status, smtp_failure_is_permanent
from services.delivery.domain.rendering import MailLinks, Rendered, RenderError, render
from services.delivery.domain.requests import TRANSACTIONAL_PURPOSE, is_actionable

log = logging.getLogger(__name__)

# CRLF line ends, and headers folded only past RFC 5322's hard limit: the default policy folds
# at 78 and RFC 2047-encodes an unbreakable URL (List-Unsubscribe), which clients cannot use.
MAIL_POLICY = email.policy.SMTP.clone(max_line_length=998)


@dataclass
class Deps:
    pool: asyncpg.Pool
    eligibility: EligibilityClient
    smtp: SmtpSender
    from_address: str
    tracking_url: str
    link_secret: str


async def deliver(deps: Deps, envelope: Envelope) -> None:
    """Handle one DeliveryRequested from delivery.requests.v1 (at-least-once, idempotent)."""
    if envelope.WhichOneof("payload") != "delivery_requested":
        return
    request = envelope.delivery_requested
    workspace_id = envelope.workspace_id
    if not (is_uuid(request.message_id) and is_uuid(request.contact_id) and is_uuid(workspace_id)):
        log.error("dropping a delivery request with malformed ids: %s", request.message_id)
        return

    if not is_actionable(request.purpose, request.kind):
        # No retry can fix it; a request that is never finished would block its partition.
        await _finish_unsent(deps, envelope, Status.FAILED, "invalid request: purpose or kind")
        return
    if await guard.refusal(deps.pool, workspace_id) is not None:  # the anti-spam guard
        await _finish_unsent(deps, envelope, Status.SKIPPED, guard.SKIP_REASON)
        return
    facts = await deps.eligibility.check(workspace_id, request.contact_id, request.purpose)
    if facts is None or not facts.eligible:
        reason = "contact_not_found" if facts is None else facts.reason
        await _finish_unsent(deps, envelope, Status.SKIPPED, reason)
        return
    context: dict[str, object] = {
        "contact": {
            "first_name": facts.first_name,
            "last_name": facts.last_name,
            "email": facts.email,
            "locale": facts.locale,
        },
        "workspace": {"name": facts.workspace_name},
        "vars": dict(request.vars),
    }
    try:
        rendered = render(
            request.content.subject,
            request.content.body_text,
            request.content.body_html,
            context,
            mail_links(deps, workspace_id, request),
        )
    except RenderError as err:
        await _finish_unsent(deps, envelope, Status.FAILED, f"template: {err}")
        return

    now = clock.now()
    async with deps.pool.acquire() as conn:
        claimed = await db.claim(
            conn,
            request.message_id,
            workspace_id,
            request.contact_id,
            request.kind,
            request.campaign_id,
            request.workflow_id,
            now,
        )
    if not claimed:
        log.info("message %s already claimed; not sending it again", request.message_id)
        return

    message = build_email(
        request.message_id,
        workspace_id,
        deps.from_address,
        facts.workspace_name,
        (f"{facts.first_name} {facts.last_name}".strip(), facts.email),
        rendered,
    )
    if request.kind != delivery_pb2.MESSAGE_KIND_TRANSACTIONAL:
        # RFC 8058 one-click unsubscribe: mailbox providers show an "Unsubscribe" button and
        # POST to the link; large senders without it are filtered as spam.
        path = links.sign_unsubscribe(
            deps.link_secret, workspace_id, request.message_id, request.contact_id
        )
        message["List-Unsubscribe"] = f"<{deps.tracking_url.rstrip('/')}{path}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    try:
        reply = await deps.smtp.send(message, deps.from_address, facts.email)
    except AmbiguousHandoff as err:
        # Like a crash between the claim and the answer: the row stays CLAIMED, never retried.
        log.warning("message %s: unknown SMTP outcome, not retried: %s", request.message_id, err)
        async with deps.pool.acquire() as conn:
            await db.set_status(
                conn, request.message_id, Status.CLAIMED, f"unknown outcome: {err}", clock.now()
            )
        return
    except aiosmtplib.SMTPResponseException as err:
        if smtp_failure_is_permanent(err.code):
            await _record(deps, envelope, Status.BOUNCED, f"{err.code} {err.message}")
            return
        await _mark_retry(deps, request.message_id, f"{err.code} {err.message}")
        raise
    except (aiosmtplib.SMTPException, OSError) as err:
        await _mark_retry(deps, request.message_id, repr(err))
        raise
    await _record(deps, envelope, Status.SENT, reply)


def mail_links(deps: Deps, workspace_id: str, request: delivery_pb2.DeliveryRequested) -> MailLinks:
    """The preference page link of a non-transactional mail; the confirmation link of a double
    opt-in mail (contacts asks for one with the ``confirm_expires_at`` var)."""
    base = deps.tracking_url.rstrip("/")
    ids = (workspace_id, request.message_id, request.contact_id)
    if request.kind != delivery_pb2.MESSAGE_KIND_TRANSACTIONAL:
        return MailLinks(preferences=base + links.sign_preferences(deps.link_secret, *ids))
    expires = request.vars.get("confirm_expires_at", "")
    if expires.isdigit() and int(expires) > 0:
        return MailLinks(confirm=base + links.sign_confirm(deps.link_secret, *ids, int(expires)))
    return MailLinks()


def build_email(
    message_id: str,
    workspace_id: str,
    from_address: str,
    workspace_name: str,
    to: tuple[str, str],
    rendered: Rendered,
) -> EmailMessage:
    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = formataddr((workspace_name, from_address))
    message["To"] = formataddr(to)
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(clock.now())
    message["Message-ID"] = f"<{message_id}@{from_address.rpartition('@')[2]}>"
    message["X-Nudge-Message-Id"] = message_id
    message["X-Nudge-Workspace-Id"] = workspace_id
    message.set_content(rendered.body_text)
    if rendered.body_html:
        message.add_alternative(rendered.body_html, subtype="html")
    return message


async def _finish_unsent(deps: Deps, envelope: Envelope, status: Status, reason: str) -> None:
    request = envelope.delivery_requested
    async with deps.pool.acquire() as conn, conn.transaction():
        claimed = await db.claim(
            conn,
            request.message_id,
            envelope.workspace_id,
            request.contact_id,
            request.kind,
            request.campaign_id,
            request.workflow_id,
            clock.now(),
        )
        if claimed:
            await _record_in(conn, envelope, status, reason)


async def _mark_retry(deps: Deps, message_id: str, detail: str) -> None:
    async with deps.pool.acquire() as conn:
        await db.set_status(conn, message_id, Status.RETRY, detail, clock.now())


async def _record(deps: Deps, envelope: Envelope, status: Status, detail: str) -> None:
    async with deps.pool.acquire() as conn, conn.transaction():
        await _record_in(conn, envelope, status, detail)


async def _record_in(
    conn: asyncpg.Connection, envelope: Envelope, status: Status, detail: str
) -> None:
    """Write the outcome and its event in the caller's transaction."""
    request = envelope.delivery_requested
    await db.set_status(conn, request.message_id, status, detail, clock.now())
    ids = {"message_id": request.message_id, "contact_id": request.contact_id}
    event = (
        events_pb2.MessageSent(
            **ids,
            kind=request.kind,
            campaign_id=request.campaign_id,
            workflow_id=request.workflow_id,
            smtp_response=detail,
        )
        if status == Status.SENT
        else events_pb2.MessageBounced(**ids, permanent=True, smtp_response=detail)
        if status == Status.BOUNCED
        else events_pb2.MessageSkipped(
            **ids,
            reason=detail,
            campaign_id=request.campaign_id,
            workflow_id=request.workflow_id,
        )
    )
    await add_to_outbox(
        conn,
        db.SCHEMA,
        DELIVERY_EVENTS,
        request.contact_id,
        new_envelope(
            envelope.workspace_id,
            event,
            event_id=deterministic_id("delivery-outcome", request.message_id),
        ),
    )


async def send_transactional(
    pool: asyncpg.Pool, workspace_id: str, request: delivery_pb2.SendTransactionalRequest
) -> str:
    """Queue a transactional message (order details, password reset) once per idempotency key."""
    v = Validator()
    v.check(0 < len(request.idempotency_key) <= 200, "idempotency_key", "1-200 characters")
    v.check(is_uuid(request.contact_id), "contact_id", "not a contact id")
    v.check(0 < len(request.content.subject) <= 200, "content.subject", "1-200 characters")
    v.check(
        0 < len(request.content.body_text) <= 100_000, "content.body_text", "1-100000 characters"
    )
    v.raise_if_any()
    try:
        render(request.content.subject, request.content.body_text, request.content.body_html, {})
    except RenderError as err:
        raise InvalidArgument(FieldViolation("content", f"template error: {err}")) from err
    message_id = deterministic_id(workspace_id, "transactional", request.idempotency_key)
    requested = delivery_pb2.DeliveryRequested(
        message_id=message_id,
        contact_id=request.contact_id,
        kind=delivery_pb2.MESSAGE_KIND_TRANSACTIONAL,
        purpose=TRANSACTIONAL_PURPOSE,
        content=request.content,
        vars=dict(request.vars),
    )
    async with pool.acquire() as conn, conn.transaction():
        await add_to_outbox(
            conn,
            db.SCHEMA,
            DELIVERY_REQUESTS,
            request.contact_id,
            new_envelope(workspace_id, requested, event_id=message_id),
        )
    return message_id


async def message_status(
    pool: asyncpg.Pool, workspace_id: str, message_id: str
) -> delivery_pb2.GetMessageStatusResponse:
    if not is_uuid(message_id):
        raise NotFound("message not found")
    async with pool.acquire() as conn:
        row = await db.find(conn, workspace_id, uuid.UUID(message_id))
    if row is None:
        raise NotFound("message not found")
    answer = delivery_pb2.GetMessageStatusResponse(
        message_id=str(row["message_id"]),
        status=row["status"],
        detail=row["detail"],
    )
    answer.updated_at.FromDatetime(row["updated_at"])
    return answer
