"""JSON of ``GET /v1/campaigns/{campaign_id}/audience`` (CampaignService.PreviewAudience)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from services.gateway.schemas import ResponseModel


class ExcludedCountOut(ResponseModel):
    reason: str = Field(
        description="no_consent, consent_withdrawn, consent_pending, suppressed, no_email,"
        " frequency_cap, excluded_segment, holdout or not_found."
    )
    count: int


class SourceShareOut(ResponseModel):
    source: str = Field(description='A segment id, or "tags" for the contacts with tags_any.')
    members: int
    also_in_other_sources: int = Field(
        description="Members also in another chosen source (mailed once)."
    )


class AudiencePreviewOut(ResponseModel):
    members: int = Field(
        description="Distinct contacts of the segments and tags, before exclusions."
    )
    eligible: int = Field(description="Who would be mailed.")
    excluded: list[ExcludedCountOut] = Field(
        description="Each contact counted once, under its first reason."
    )
    sources: list[SourceShareOut]
    only_consented: bool = Field(
        description="The workspace mails only contacts who consented"
        " (consent_required_for_campaigns)."
    )
    not_consented: int = Field(
        description="Without only_consented: contacts who would be mailed without consent."
    )
    confirmation_required: bool = Field(
        description="Sending needs confirm_not_consented equal to not_consented."
    )
    sending_suspended: bool = Field(description="The anti-spam guard refuses sending now.")
    suspended_reason: str
    as_of: datetime | None = Field(description="When the audience was evaluated.")
