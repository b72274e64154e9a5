"""gRPC servicer of the campaigns service: decode, call a handler, encode. No rules here."""

from __future__ import annotations

import asyncpg
import grpc
from nudge.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc

from services.campaigns import handlers
from services.campaigns.domain.model import NewCampaign
from services.common.auth import current_workspace


class CampaignServicer(campaigns_pb2_grpc.CampaignServiceServicer):
    """Drafts of the caller's workspace: create, read, list."""

    def __init__(self, pool: asyncpg.Pool, segments: handlers.SegmentCatalogue) -> None:
        self.pool = pool
        self.segments = segments

    async def CreateCampaign(
        self, request: campaigns_pb2.CreateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.CreateCampaignResponse:
        new = NewCampaign(
            name=request.name,
            segment_ids=tuple(request.segment_ids),
            subject=request.subject,
            body_text=request.body_text,
        )
        campaign = await handlers.create_campaign(
            self.pool, self.segments, current_workspace(), new
        )
        return campaigns_pb2.CreateCampaignResponse(campaign=campaign)

    async def GetCampaign(
        self, request: campaigns_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.GetCampaignResponse:
        campaign = await handlers.get_campaign(self.pool, current_workspace(), request.campaign_id)
        return campaigns_pb2.GetCampaignResponse(campaign=campaign)

    async def ListCampaigns(
        self, request: campaigns_pb2.ListCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.ListCampaignsResponse:
        return await handlers.list_campaigns(
            self.pool, current_workspace(), request.page_size, request.page_token
        )
