"""gRPC methods of the campaigns service's lifecycle part: decode, call a handler, encode.

Mixed into :class:`services.campaigns.entrypoints.grpc.CampaignServicer`, which holds
``self.ports`` (services/campaigns/ports.py)."""

from __future__ import annotations

import grpc
from nudge.campaigns.v1 import campaigns_pb2

from services.campaigns import handlers, lifecycle
from services.campaigns import settings as campaign_settings
from services.campaigns.domain.model import AbTestSpec, NewCampaign
from services.campaigns.ports import Ports
from services.common.auth import current_actor, current_workspace


def fields_of(
    c: campaigns_pb2.Campaign,
    *,
    name: str | None = None,
    segment_ids: list[str] | None = None,
    subject: str | None = None,
    body_text: str | None = None,
) -> NewCampaign:
    """The manager's fields of ``c`` (CreateCampaign passes its four top-level fields)."""
    ab = None
    if c.HasField("ab_test"):
        ab = AbTestSpec(
            subjects=tuple(c.ab_test.subjects),
            sample_percent=c.ab_test.sample_percent,
            metric=c.ab_test.metric,
            # Whole seconds; a negative duration is refused by the range check.
            decide_after_s=c.ab_test.decide_after.seconds,
        )
    return NewCampaign(
        name=c.name if name is None else name,
        segment_ids=tuple(c.segment_ids if segment_ids is None else segment_ids),
        subject=c.subject if subject is None else subject,
        body_text=c.body_text if body_text is None else body_text,
        exclude_segment_ids=tuple(c.exclude_segment_ids),
        tags_any=tuple(c.tags_any),
        body_html=c.body_html,
        body_markdown=c.body_markdown,
        reply_to=c.reply_to,
        purpose=c.purpose,
        cap_action=c.cap_action,
        local_time=c.local_time,
        time_zone=c.time_zone,
        ab_test=ab,
        holdout_percent=c.holdout_percent,
    )


class LifecycleRpcs:
    ports: Ports

    async def UpdateCampaign(
        self, request: campaigns_pb2.UpdateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.Campaign:
        return await handlers.update_campaign(
            self.ports.pool,
            self.ports.segments,
            current_workspace(),
            request.campaign.id,
            list(request.update_mask.paths),
            fields_of(request.campaign),
        )

    async def SendCampaign(
        self, request: campaigns_pb2.SendCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.Campaign:
        return await lifecycle.send_campaign(
            self.ports, current_workspace(), request, current_actor()
        )

    async def PauseCampaign(
        self, request: campaigns_pb2.PauseCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.Campaign:
        return await lifecycle.pause(
            self.ports, current_workspace(), request.campaign_id, current_actor(), request.note
        )

    async def ResumeCampaign(
        self, request: campaigns_pb2.ResumeCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.Campaign:
        return await lifecycle.resume(
            self.ports, current_workspace(), request.campaign_id, current_actor(), request.note
        )

    async def CancelCampaign(
        self, request: campaigns_pb2.CancelCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.Campaign:
        return await lifecycle.cancel(
            self.ports, current_workspace(), request.campaign_id, current_actor(), request.note
        )

    async def ListTransitions(
        self, request: campaigns_pb2.ListTransitionsRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.ListTransitionsResponse:
        return await lifecycle.list_transitions(
            self.ports.pool, current_workspace(), request.campaign_id
        )

    async def GetCampaignSettings(
        self, request: campaigns_pb2.GetCampaignSettingsRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.CampaignSettings:
        found = await campaign_settings.read(self.ports.pool, current_workspace())
        return found.to_proto()

    async def UpdateCampaignSettings(
        self,
        request: campaigns_pb2.UpdateCampaignSettingsRequest,
        context: grpc.aio.ServicerContext,
    ) -> campaigns_pb2.CampaignSettings:
        updated = await campaign_settings.update(
            self.ports.pool,
            current_workspace(),
            request.settings,
            list(request.update_mask.paths),
        )
        return updated.to_proto()
