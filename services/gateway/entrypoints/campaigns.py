"""``/v1/campaigns``: targeted messages to segments (CampaignService)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from nudge.campaigns.v1 import campaigns_pb2

from services.common import campaign_limits as paging
from services.gateway import convert, problems
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.schemas import CampaignIn, CampaignList, CampaignOut

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])

CampaignId = Annotated[str, Path(min_length=1, max_length=64, description="The campaign's id.")]
# campaigns' paging.decode_token refuses longer tokens.
MAX_PAGE_TOKEN = paging.MAX_PAGE_TOKEN


@router.post(
    "",
    status_code=201,
    response_model=CampaignOut,
    summary="Create a campaign",
    responses=problems.responses(400, 401, 404, 409, 413, 422, 503),
)
async def create_campaign(
    body: CampaignIn,
    caller: CallerDep,
    backends: BackendsDep,
    request: Request,
    response: Response,
) -> CampaignOut:
    """A new campaign (a draft): the segments it goes to, a subject and a short text."""
    answer: campaigns_pb2.CreateCampaignResponse = await caller.call(
        backends.campaigns.CreateCampaign,
        convert.create_campaign_request(body),
        service="campaigns",
        fields=convert.campaign_field,
    )
    campaign = convert.campaign_json(answer.campaign)
    response.headers["Location"] = request.app.url_path_for("get_campaign", campaign_id=campaign.id)
    return campaign


@router.get(
    "",
    response_model=CampaignList,
    summary="List campaigns",
    responses=problems.responses(401, 422, 503),
)
async def list_campaigns(
    caller: CallerDep,
    backends: BackendsDep,
    page_size: Annotated[
        int, Query(ge=1, le=paging.MAX_PAGE_SIZE, description="At most this many.")
    ] = paging.DEFAULT_PAGE_SIZE,
    page_token: Annotated[
        str,
        Query(max_length=MAX_PAGE_TOKEN, description="`next_page_token` of the previous page."),
    ] = "",
) -> CampaignList:
    """The workspace's campaigns, a page at a time."""
    answer: campaigns_pb2.ListCampaignsResponse = await caller.call(
        backends.campaigns.ListCampaigns,
        campaigns_pb2.ListCampaignsRequest(page_size=page_size, page_token=page_token),
        service="campaigns",
        fields=convert.list_campaigns_field,
    )
    return CampaignList(
        campaigns=[convert.campaign_json(c) for c in answer.campaigns],
        next_page_token=answer.next_page_token,
    )


@router.get(
    "/{campaign_id}",
    response_model=CampaignOut,
    summary="Get a campaign",
    responses=problems.responses(401, 404, 422, 503),
)
async def get_campaign(
    campaign_id: CampaignId, caller: CallerDep, backends: BackendsDep
) -> CampaignOut:
    """One campaign of the workspace."""
    answer: campaigns_pb2.GetCampaignResponse = await caller.call(
        backends.campaigns.GetCampaign,
        campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id),
        service="campaigns",
    )
    return convert.campaign_json(answer.campaign)
