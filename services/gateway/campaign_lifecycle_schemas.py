"""The HTTP bodies of a campaign's lifecycle routes (services/gateway/entrypoints/
campaign_lifecycle.py): the draft's merge patch, send, pause/resume/cancel, transitions, and
the workspace's campaign settings. Limits are the campaigns service's own
(services/common/campaign_limits.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from services.common import campaign_limits as limits
from services.gateway.schemas import (
    CampaignFieldsIn,
    CampaignStatus,
    Id,
    Integral,
    ReplyTo,
    ResponseModel,
    Rfc3339,
    StrictModel,
    TimeZone,
    _filled_text,
)

Note = Annotated[str, StringConstraints(max_length=limits.MAX_NOTE, pattern=r"^[^\x00]*$")]


class CampaignPatchIn(CampaignFieldsIn):
    """A JSON merge patch (RFC 7396) of a draft: the members given change, the others stay.
    `ab_test: null` removes the A/B test; no other member may be null. Drafts only (409)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    # Given, a name and a subject are as on creation (not blank); absent, they stay.
    name: Annotated[str, _filled_text(limits.MAX_NAME)] = ""
    segment_ids: list[Id] = Field(
        [], max_length=limits.MAX_SEGMENTS, json_schema_extra={"uniqueItems": True}
    )
    subject: Annotated[str, _filled_text(limits.MAX_SUBJECT, one_line=True)] = ""
    body_text: Annotated[str, StringConstraints(max_length=limits.MAX_BODY_TEXT)] = ""

    @model_validator(mode="before")
    @classmethod
    def _no_nulls_but_ab_test(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(k for k, v in data.items() if v is None and k != "ab_test")
            if nulls:
                raise ValueError(f"cannot be removed (null): {', '.join(nulls)}")
        return data

    @model_validator(mode="after")
    def _not_empty(self) -> CampaignPatchIn:
        if not self.model_fields_set:
            raise ValueError("name at least one member to change")
        return self


class SendIn(StrictModel):
    send_at: Rfc3339 | None = Field(None, description="When to send (in the future); absent: now.")
    confirm_not_consented: Integral = Field(
        0,
        ge=0,
        # Within the RPC's int64 (a larger number was a 500: schemathesis found it), and
        # within what a JSON client's double holds exactly (2**63 - 1 is no bound there).
        le=2**53 - 1,
        description="Required when the audience preview asks for a confirmation: the number "
        "of contacts without consent it showed.",
    )


class NoteIn(StrictModel):
    note: Note = Field("", description="Why, in the manager's words (kept with the transition).")


class TransitionOut(ResponseModel):
    from_status: CampaignStatus
    to_status: CampaignStatus
    actor: str = Field(
        description='"api_key:<key id>", "manager:<manager id>" (the console),'
        ' "system:scheduler", ...'
    )
    note: str
    at: datetime | None


class TransitionList(ResponseModel):
    transitions: list[TransitionOut] = Field(description="Oldest first.")


class CampaignSettingsOut(ResponseModel):
    frequency_cap_messages: int
    frequency_cap_days: int
    time_zone: str
    default_reply_to: str = Field(
        description="The Reply-To of a campaign that names none; empty for none."
    )


class CampaignSettingsPatchIn(StrictModel):
    """A JSON merge patch of the workspace's campaign settings (no member may be null)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    frequency_cap_messages: Integral = Field(
        1,
        ge=limits.MIN_CAP_MESSAGES,
        le=limits.MAX_CAP_MESSAGES,
        description="At most this many targeted messages per contact...",
    )
    frequency_cap_days: Integral = Field(
        30, ge=limits.MIN_CAP_DAYS, le=limits.MAX_CAP_DAYS, description="...per this many days."
    )
    time_zone: TimeZone = Field("UTC", description="IANA zone of the workspace's campaigns.")
    default_reply_to: ReplyTo = Field(
        "",
        description="The Reply-To of a campaign whose `reply_to` is empty (an e-mail address,"
        " checked as a campaign's is); empty for none.",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> CampaignSettingsPatchIn:
        if not self.model_fields_set:
            raise ValueError("name at least one member to change")
        return self
