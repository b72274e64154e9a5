"""gRPC servicer of the delivery service."""

from __future__ import annotations

import asyncpg
import grpc
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc

from services.common.auth import current_workspace
from services.delivery import contact_messages, guard, handlers, story
from services.delivery.adapters.dkim_keys import KeyCache
from services.delivery.domain.sealing import Sealer
from services.delivery.entrypoints.grpc_dkim import DkimKeysMixin
from services.delivery.entrypoints.grpc_guard import GuardRpcs


class DeliveryServicer(DkimKeysMixin, GuardRpcs, delivery_pb2_grpc.DeliveryServiceServicer):
    """Transactional sends and the status of any message of the caller's workspace; DKIM
    keys (entrypoints/grpc_dkim.py); the anti-spam guard (entrypoints/grpc_guard.py)."""

    def __init__(
        self, pool: asyncpg.Pool, sealer: Sealer, dkim_cache: KeyCache | None = None
    ) -> None:
        self.pool = pool
        self.sealer = sealer
        self.dkim_cache = dkim_cache

    async def SendTransactional(
        self, request: delivery_pb2.SendTransactionalRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.SendTransactionalResponse:
        await guard.ensure_may_send(self.pool, current_workspace())
        message_id, replayed = await handlers.send_transactional(
            self.pool, current_workspace(), request
        )
        return delivery_pb2.SendTransactionalResponse(message_id=message_id, replayed=replayed)

    async def GetMessageStatus(
        self, request: delivery_pb2.GetMessageStatusRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.GetMessageStatusResponse:
        return await handlers.message_status(self.pool, current_workspace(), request.message_id)

    async def ExplainMessage(
        self, request: delivery_pb2.ExplainMessageRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.MessageStory:
        """The story of a mail (services/delivery/story.py)."""
        return await story.explain(self.pool, current_workspace(), request.message_id)

    async def ListContactMessages(
        self, request: delivery_pb2.ListContactMessagesRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.ListContactMessagesResponse:
        """A contact's messages, newest first (services/delivery/contact_messages.py)."""
        return await contact_messages.list_page(self.pool, current_workspace(), request)
