"""gRPC methods of the campaigns service's content part: decode, call a handler, encode.

Mixed into :class:`services.campaigns.entrypoints.grpc.CampaignServicer`, which holds
``self.ports`` (services/campaigns/ports.py) and, set by bootstrap.py, ``self.content``."""

from __future__ import annotations

import grpc
from nudge.campaigns.v1 import campaigns_pb2

from services.campaigns import content_handlers as handlers
from services.campaigns.ports import Ports
from services.common.auth import current_workspace


class ContentRpcs:
    ports: Ports
    content: handlers.ContentDeps

    async def CheckContent(
        self, request: campaigns_pb2.CheckContentRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.CheckContentResponse:
        warnings = await handlers.check_content(
            self.content, current_workspace(), request.campaign_id
        )
        return campaigns_pb2.CheckContentResponse(
            warnings=[
                campaigns_pb2.ContentWarning(code=w.code, field=w.field, message=w.message)
                for w in warnings
            ]
        )

    async def PreviewMessage(
        self, request: campaigns_pb2.PreviewMessageRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.PreviewMessageResponse:
        preview = await handlers.preview_message(
            self.content,
            current_workspace(),
            request.campaign_id,
            request.contact_id,
            request.variant,
        )
        return campaigns_pb2.PreviewMessageResponse(
            subject=preview.message.subject,
            body_text=preview.message.body_text,
            body_html=preview.message.body_html,
            reply_to=preview.reply_to,
            **{"from": preview.sender},
        )

    async def SendTestMessage(
        self, request: campaigns_pb2.SendTestMessageRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.SendTestMessageResponse:
        try:
            message_id = await handlers.send_test_message(
                self.content,
                current_workspace(),
                request.campaign_id,
                request.email,
                request.contact_id,
                request.variant,
            )
        except handlers.TestSendLimit as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        return campaigns_pb2.SendTestMessageResponse(message_id=message_id)
