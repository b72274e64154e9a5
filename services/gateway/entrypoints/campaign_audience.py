"""``/v1/campaigns/{campaign_id}/audience``: who a campaign would reach if it were sent now,
who it leaves out and why (CampaignService.PreviewAudience; docs/campaigns.md)."""

from __future__ import annotations

from datetime import UTC

from fastapi import APIRouter
from nudge.campaigns.v1 import campaigns_pb2

from services.gateway import problems
from services.gateway.campaign_audience_schemas import (
    AudiencePreviewOut,
    ExcludedCountOut,
    SourceShareOut,
)
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.entrypoints.campaigns import CampaignId

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])


def audience_json(answer: campaigns_pb2.AudiencePreview) -> AudiencePreviewOut:
    return AudiencePreviewOut(
        members=answer.members,
        eligible=answer.eligible,
        excluded=[ExcludedCountOut(reason=e.reason, count=e.count) for e in answer.excluded],
        sources=[
            SourceShareOut(
                source=s.source, members=s.members, also_in_other_sources=s.also_in_other_sources
            )
            for s in answer.sources
        ],
        only_consented=answer.only_consented,
        not_consented=answer.not_consented,
        confirmation_required=answer.confirmation_required,
        sending_suspended=answer.sending_suspended,
        suspended_reason=answer.suspended_reason,
        as_of=answer.as_of.ToDatetime(tzinfo=UTC) if answer.HasField("as_of") else None,
    )


@router.get(
    "/{campaign_id}/audience",
    response_model=AudiencePreviewOut,
    summary="Preview a campaign's audience",
    responses=problems.responses(401, 404, 409, 422, 503),
)
async def preview_audience(
    campaign_id: CampaignId, caller: CallerDep, backends: BackendsDep
) -> AudiencePreviewOut:
    """The campaign's members, who would be mailed, who not and why (each contact once,
    under its first reason), each source's share, the consent confirmation sending will need
    and whether sending is suspended. Nothing is written."""
    answer: campaigns_pb2.AudiencePreview = await caller.call(
        backends.campaigns.PreviewAudience,
        campaigns_pb2.PreviewAudienceRequest(campaign_id=campaign_id),
        service="campaigns",
    )
    return audience_json(answer)
