"""gRPC methods of the campaigns service's audience part: decode, call a handler, encode.

Mixed into :class:`services.campaigns.entrypoints.grpc.CampaignServicer`, which holds
``self.ports`` (services/campaigns/ports.py)."""

from __future__ import annotations

import grpc
from nudge.campaigns.v1 import campaigns_pb2

from services.campaigns import audience
from services.campaigns.ports import Ports
from services.common.auth import current_workspace


class AudienceRpcs:
    ports: Ports

    async def PreviewAudience(
        self, request: campaigns_pb2.PreviewAudienceRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.AudiencePreview:
        return await audience.preview_audience(self.ports, current_workspace(), request.campaign_id)
