"""``/v1/campaigns/{campaign_id}/timeline``: the report over time, for the console's charts
(CampaignService.GetCampaignTimeline; services/campaigns/timeline.py says how the intervals
are chosen). Another workspace's campaign is 404, as everywhere."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from nudge.campaigns.v1 import campaigns_pb2
from pydantic import Field

from services.gateway import problems
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.entrypoints.campaigns import CampaignId
from services.gateway.schemas import ResponseModel

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])


class TimelinePointOut(ResponseModel):
    at: datetime = Field(description="The end of the interval.")
    delivered: int = Field(description="Contacts delivered by then (and not bounced since).")
    opened_human: int = Field(description="Contacts a person had opened it for by then.")
    opened_machine: int = Field(description="Contacts a scanner or proxy had opened it for.")
    clicked_human: int
    clicked_machine: int


class CampaignTimelineOut(ResponseModel):
    interval_seconds: int = Field(description="The length of each interval; 0 with no point.")
    points: list[TimelinePointOut] = Field(
        description="Cumulative counts, oldest first, at most 49; none before the first delivery."
    )


@router.get(
    "/{campaign_id}/timeline",
    response_model=CampaignTimelineOut,
    summary="A campaign's report over time",
    responses=problems.responses(401, 404, 422, 503),
)
async def get_campaign_timeline(
    campaign_id: CampaignId, caller: CallerDep, backends: BackendsDep
) -> CampaignTimelineOut:
    """Delivered, opened and clicked (people and machines apart) by the end of equal
    intervals, from the first delivery to the latest open or click: minutes for a campaign
    of the last hour, days for one of last month."""
    answer: campaigns_pb2.CampaignTimeline = await caller.call(
        backends.campaigns.GetCampaignTimeline,
        campaigns_pb2.GetCampaignTimelineRequest(campaign_id=campaign_id),
        service="campaigns",
    )
    return CampaignTimelineOut(
        interval_seconds=answer.interval.seconds,
        points=[
            TimelinePointOut(
                at=p.at.ToDatetime(tzinfo=UTC),
                delivered=p.delivered,
                opened_human=p.opened_human,
                opened_machine=p.opened_machine,
                clicked_human=p.clicked_human,
                clicked_machine=p.clicked_machine,
            )
            for p in answer.points
        ],
    )
