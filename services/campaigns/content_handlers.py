"""The content part of campaigns: CheckContent, PreviewMessage, SendTestMessage.

A preview renders the campaign for one contact (or the sample contact, every field missing)
in the sandbox delivery uses (services/campaigns/domain/content.py), with the A/B variant's
subject, and says who it comes from: "Workspace name <no-reply address>" and the manager's
Reply-To. A test send hands delivery the same templates as a MESSAGE_KIND_TEST request
for the manager's own address (delivery sends it without consent checks or tracking, marked
"[Test]", and counts it nowhere: docs/campaigns.md), at most
``Settings.test_sends_per_hour`` per campaign and hour (``test_sends`` rows).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from email.headerregistry import Address

import asyncpg
from email_validator import EmailNotValidError, validate_email
from nudge.delivery.v1 import delivery_pb2

from services.campaigns.adapters import content as store
from services.campaigns.domain.checks import ContentWarning, content_warnings
from services.campaigns.domain.content import (
    SAMPLE_CONTACT,
    MessageTemplates,
    RenderedMessage,
    context_for,
    message_templates,
    render_message,
)
from services.common import clock, templating
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    NudgeError,
    Validator,
)
from services.common.ids import is_uuid

log = logging.getLogger(__name__)

MAX_EMAIL = 254  # RFC 5321's limit of a forward path


class TestSendLimit(NudgeError):
    """Too many test sends of one campaign in the last hour (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class ContentDeps:
    pool: asyncpg.Pool
    contacts: store.ContactsFacts
    publisher: store.TestSendPublisher | None
    from_address: str
    test_sends_per_hour: int


@dataclass(frozen=True)
class Preview:
    message: RenderedMessage
    sender: str  # "Workspace name <no-reply@...>"
    reply_to: str


async def check_content(
    deps: ContentDeps, workspace_id: str, campaign_id: str
) -> list[ContentWarning]:
    content = await _load(deps, workspace_id, campaign_id)
    name = await deps.contacts.workspace_name(workspace_id)
    return content_warnings(
        content.subject,
        content.body_text,
        content.body_html,
        content.body_markdown,
        name,
        content.ab_subjects,
    )


async def preview_message(
    deps: ContentDeps, workspace_id: str, campaign_id: str, contact_id: str, variant: int
) -> Preview:
    v = Validator()
    _check_contact_and_variant(v, contact_id, variant)
    v.raise_if_any()
    content = await _load(deps, workspace_id, campaign_id)
    templates = _templates(content, variant)
    contact, workspace_name = await _contact(deps, workspace_id, contact_id, content.purpose)
    message = _render(templates, contact, workspace_name)
    return Preview(message, sender(workspace_name, deps.from_address), content.reply_to)


async def send_test_message(
    deps: ContentDeps,
    workspace_id: str,
    campaign_id: str,
    email: str,
    contact_id: str,
    variant: int,
) -> str:
    """Queue the test message; its (fresh) message id. Every call is a new mail: a replayed
    call sends again, within the hourly limit."""
    v = Validator()
    address = _test_address(v, email)
    _check_contact_and_variant(v, contact_id, variant)
    v.raise_if_any()
    assert address is not None
    if deps.publisher is None:
        raise FailedPrecondition("test sends are not available: no Kafka publisher")
    content = await _load(deps, workspace_id, campaign_id)
    templates = _templates(content, variant)
    contact, workspace_name = await _contact(deps, workspace_id, contact_id, content.purpose)
    _render(templates, contact, workspace_name)  # refused here rather than FAILED in delivery
    message_id = str(uuid.uuid4())
    request = delivery_pb2.DeliveryRequested(
        message_id=message_id,
        contact_id=contact_id,
        kind=delivery_pb2.MESSAGE_KIND_TEST,
        purpose=content.purpose,  # type: ignore[arg-type]
        content=delivery_pb2.MessageContent(
            subject=templates.subject, body_text=templates.body_text, body_html=templates.body_html
        ),
        campaign_id=str(content.campaign_id),
        test_recipient=address,
        from_name=workspace_name,
        reply_to=content.reply_to,
    )
    now = clock.now()
    async with deps.pool.acquire() as conn, conn.transaction():
        locked = await store.find_content(conn, workspace_id, content.campaign_id, lock=True)
        if locked is None:
            raise NotFound("campaign not found")
        sent = await store.test_sends_since(
            conn, workspace_id, content.campaign_id, now - timedelta(hours=1)
        )
        if sent >= deps.test_sends_per_hour:
            raise TestSendLimit(
                f"{sent} test sends of this campaign in the last hour: at most"
                f" {deps.test_sends_per_hour}; try again later"
            )
        await store.record_test_send(
            conn, workspace_id, content.campaign_id, message_id, address, variant, now
        )
        # Published before the commit: a publish that fails rolls the row back.
        await deps.publisher.publish(workspace_id, request)
    log.info("test send %s of campaign %s queued", message_id, content.campaign_id)
    return message_id


def sender(workspace_name: str, from_address: str) -> str:
    """The From a reader sees: the workspace's name (quoted when it needs to be) and the
    platform's address."""
    try:
        return str(Address(display_name=workspace_name, addr_spec=from_address))
    except (ValueError, IndexError):
        return f"{workspace_name} <{from_address}>"


def _test_address(v: Validator, email: str) -> str | None:
    if not email:
        v.check(False, "email", "is required")
        return None
    if len(email) > MAX_EMAIL:
        v.check(False, "email", f"at most {MAX_EMAIL} characters")
        return None
    try:
        return validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as err:
        v.check(False, "email", f"not a valid e-mail address: {err}")
        return None


def _check_contact_and_variant(v: Validator, contact_id: str, variant: int) -> None:
    v.check(not contact_id or is_uuid(contact_id), "contact_id", "not a contact id")
    v.check(variant >= 0, "variant", "0 or more")


async def _load(deps: ContentDeps, workspace_id: str, campaign_id: str) -> store.CampaignContent:
    """The campaign of the workspace; another workspace's is simply not found."""
    if not is_uuid(campaign_id):
        raise NotFound("campaign not found")
    async with deps.pool.acquire() as conn:
        content = await store.find_content(conn, workspace_id, uuid.UUID(campaign_id))
    if content is None:
        raise NotFound("campaign not found")
    return content


def _templates(content: store.CampaignContent, variant: int) -> MessageTemplates:
    variants = len(content.ab_subjects) or 1
    if variant >= variants:
        raise InvalidArgument(
            FieldViolation(
                "variant",
                f"the campaign has {variants} variant(s): 0 to {variants - 1}",
            )
        )
    subject = content.ab_subjects[variant] if content.ab_subjects else content.subject
    return message_templates(subject, content.body_text, content.body_html, content.body_markdown)


async def _contact(
    deps: ContentDeps, workspace_id: str, contact_id: str, purpose: int
) -> tuple[dict[str, str], str]:
    """(the contact's fields, the workspace's name); the sample contact without an id."""
    if not contact_id:
        return dict(SAMPLE_CONTACT), await deps.contacts.workspace_name(workspace_id)
    facts = await deps.contacts.contact(workspace_id, contact_id, purpose)
    fields = {
        "first_name": facts.first_name,
        "last_name": facts.last_name,
        "email": facts.email,
        "locale": facts.locale,
    }
    return fields, facts.workspace_name


def _render(
    templates: MessageTemplates, contact: dict[str, str], workspace_name: str
) -> RenderedMessage:
    try:
        return render_message(templates, context_for(contact, workspace_name))
    except templating.TEMPLATE_ERRORS as err:
        raise FailedPrecondition(
            f"the content cannot be rendered for this contact ({type(err).__name__}: {err});"
            " CheckContent lists what to fix"
        ) from err
