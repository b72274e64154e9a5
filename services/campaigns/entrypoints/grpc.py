"""gRPC servicer of the campaigns service: decode, call a handler, encode. No rules here.

The methods live in one mixin per part of the service (drafts here; audience, content,
lifecycle and report in their ``*_rpc.py`` modules), so that each part's transport sits next
to the others' without one file growing without bound."""

from __future__ import annotations

import grpc
from nudge.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc

from services.campaigns import handlers
from services.campaigns.entrypoints.audience_rpc import AudienceRpcs
from services.campaigns.entrypoints.content_rpc import ContentRpcs
from services.campaigns.entrypoints.lifecycle_rpc import LifecycleRpcs, fields_of
from services.campaigns.entrypoints.report_rpc import ReportRpcs
from services.campaigns.ports import Ports
from services.common.auth import current_workspace


class CampaignServicer(
    AudienceRpcs,
    ContentRpcs,
    LifecycleRpcs,
    ReportRpcs,
    campaigns_pb2_grpc.CampaignServiceServicer,
):
    """Campaigns of the caller's workspace."""

    def __init__(self, ports: Ports) -> None:
        self.ports = ports
        self.pool = ports.pool
        self.segments = ports.segments

    async def CreateCampaign(
        self, request: campaigns_pb2.CreateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.CreateCampaignResponse:
        new = fields_of(
            request.campaign,
            name=request.name,
            segment_ids=list(request.segment_ids),
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
