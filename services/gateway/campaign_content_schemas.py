"""Request and response bodies of a campaign's content routes (issue 15, CONTENT):
``/v1/campaigns/{id}/content-check``, ``.../preview`` and ``.../test-send``."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from services.gateway.schemas import PATTERN_MESSAGES, Email, ResponseModel, StrictModel

WarningCode = Literal[
    "too_many_lines",
    "subject_without_workspace_name",
    "spam_like",
    "broken_personalisation",
    "bad_link",
    "missing_default",
]
MAX_VARIANT = 4  # A/B tests have 2-5 variants
# A contact id, or empty for the sample contact.
CONTACT_ID_PATTERN = (
    "^(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})?$"
)
PATTERN_MESSAGES[CONTACT_ID_PATTERN] = "not a contact id"


class ContentWarningOut(ResponseModel):
    code: str = Field(description="One of: " + ", ".join(get_args(WarningCode)) + ".")
    field: str = Field(
        description="`subject`, `body_text`, `body_html`, `body_markdown` or `ab_test.subjects[i]`."
    )
    message: str


class ContentCheckOut(ResponseModel):
    warnings: list[ContentWarningOut]


class PreviewIn(StrictModel):
    contact_id: str = Field(
        "",
        max_length=36,
        pattern=CONTACT_ID_PATTERN,
        description="Whose data personalises it; empty: a sample contact with every field "
        "missing (what the defaults show).",
    )
    variant: int = Field(
        0,
        ge=0,
        le=MAX_VARIANT,
        description="The A/B variant, from 0; below the campaign's number of subjects"
        " (0 without an A/B test).",
    )


class PreviewOut(ResponseModel):
    subject: str
    body_text: str
    body_html: str
    from_: str = Field(alias="from", description='"Workspace name <no-reply address>".')
    reply_to: str


class TestSendIn(PreviewIn):
    email: Email = Field(description="Where to send the test: your own address.")


class TestSendOut(ResponseModel):
    message_id: str = Field(description="Delivery's message id (GET /v1/messages/{id}).")
