"""A campaign's content before it is sent (issue 15, CONTENT): its warnings, a preview for
a contact, a test send to the manager's own address (CampaignService CheckContent,
PreviewMessage, SendTestMessage). Errors are the service's, as problem+json: 404 for
another workspace's campaign, 422 naming the field (an unknown `contact_id` too), 409 for
content that cannot be rendered, 429 past the test sends' hourly limit."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from nudge.campaigns.v1 import campaigns_pb2

from services.gateway import problems
from services.gateway.campaign_content_schemas import (
    ContentCheckOut,
    ContentWarningOut,
    PreviewIn,
    PreviewOut,
    TestSendIn,
    TestSendOut,
)
from services.gateway.deps import BackendsDep, CallerDep

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])

CampaignId = Annotated[str, Path(min_length=1, max_length=64, description="The campaign's id.")]


@router.post(
    "/{campaign_id}/content-check",
    response_model=ContentCheckOut,
    summary="Check a campaign's content",
    responses=problems.responses(401, 404, 422, 503),
)
async def check_content(
    campaign_id: CampaignId, caller: CallerDep, backends: BackendsDep
) -> ContentCheckOut:
    """The warnings to look at before sending: more than 4 lines, a subject without the
    workspace's name, spam-like wording, broken personalisation, fields without a default,
    links that are not http(s). Sending refuses broken personalisation and missing
    defaults; the others are advice."""
    answer: campaigns_pb2.CheckContentResponse = await caller.call(
        backends.campaigns.CheckContent,
        campaigns_pb2.CheckContentRequest(campaign_id=campaign_id),
        service="campaigns",
    )
    return ContentCheckOut(
        warnings=[
            ContentWarningOut(code=w.code, field=w.field, message=w.message)
            for w in answer.warnings
        ]
    )


@router.post(
    "/{campaign_id}/preview",
    response_model=PreviewOut,
    summary="Preview a campaign's message",
    responses=problems.responses(400, 401, 404, 409, 413, 422, 503),
)
async def preview_message(
    campaign_id: CampaignId, body: PreviewIn, caller: CallerDep, backends: BackendsDep
) -> PreviewOut:
    """The message as a contact gets it (before tracking): for `contact_id`, or for a sample
    contact with every field missing, with the A/B variant's subject."""
    answer: campaigns_pb2.PreviewMessageResponse = await caller.call(
        backends.campaigns.PreviewMessage,
        campaigns_pb2.PreviewMessageRequest(
            campaign_id=campaign_id, contact_id=body.contact_id, variant=body.variant
        ),
        service="campaigns",
    )
    return PreviewOut.model_validate(
        {
            "subject": answer.subject,
            "body_text": answer.body_text,
            "body_html": answer.body_html,
            "from": getattr(answer, "from"),
            "reply_to": answer.reply_to,
        }
    )


@router.post(
    "/{campaign_id}/test-send",
    status_code=202,
    response_model=TestSendOut,
    summary="Send a test of a campaign's message",
    responses=problems.responses(400, 401, 404, 409, 413, 422, 429, 503),
)
async def send_test_message(
    campaign_id: CampaignId, body: TestSendIn, caller: CallerDep, backends: BackendsDep
) -> TestSendOut:
    """Queues the message for `email` (your own address), personalised for `contact_id` or
    the sample contact: "[Test]" before the subject, no tracking, counted nowhere. At most
    20 test sends per campaign and hour (429 beyond)."""
    answer: campaigns_pb2.SendTestMessageResponse = await caller.call(
        backends.campaigns.SendTestMessage,
        campaigns_pb2.SendTestMessageRequest(
            campaign_id=campaign_id,
            email=body.email,
            contact_id=body.contact_id,
            variant=body.variant,
        ),
        service="campaigns",
    )
    return TestSendOut(message_id=answer.message_id)
