"""gRPC methods of the campaigns service's report part: decode, call a handler, encode.

Mixed into :class:`services.campaigns.entrypoints.grpc.CampaignServicer`, which holds
``self.ports`` (services/campaigns/ports.py)."""

from __future__ import annotations

import grpc
from nudge.campaigns.v1 import campaigns_pb2

from services.campaigns import stats, timeline
from services.campaigns.ports import Ports
from services.common import clock
from services.common.auth import current_workspace


class ReportRpcs:
    ports: Ports

    async def GetCampaignReport(
        self, request: campaigns_pb2.GetCampaignReportRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.CampaignReport:
        return await stats.campaign_report(
            self.ports.pool, current_workspace(), request.campaign_id, clock.now()
        )

    async def ListEngagedNonBuyers(
        self,
        request: campaigns_pb2.ListEngagedNonBuyersRequest,
        context: grpc.aio.ServicerContext,
    ) -> campaigns_pb2.ListEngagedNonBuyersResponse:
        return await stats.engaged_non_buyers(
            self.ports.pool,
            self.ports.contacts,
            self.ports.settings.internal_token,
            current_workspace(),
            request,
        )

    async def GetCampaignTimeline(
        self, request: campaigns_pb2.GetCampaignTimelineRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.CampaignTimeline:
        return await timeline.campaign_timeline(
            self.ports.pool, current_workspace(), request.campaign_id
        )
