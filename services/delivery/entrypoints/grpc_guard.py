"""The anti-spam guard's RPCs, mixed into the delivery servicer (entrypoints/grpc.py).

``GetSendingStatus`` answers the caller's own workspace (an API key). ``LiftSuspension`` is an
operator's: the gRPC guard lets it through without an API key (:data:`GUARD_POLICY`) and it
checks the admin token itself, as contacts' ``CreateWorkspace`` does.
"""

from __future__ import annotations

import asyncpg
import grpc
from nudge.delivery.v1 import delivery_pb2

from services.common.auth import current_workspace
from services.delivery import guard

GUARD_POLICY = {"/nudge.delivery.v1.DeliveryService/LiftSuspension": "none"}


class GuardRpcs:
    """GetSendingStatus and LiftSuspension; the servicer provides ``pool``."""

    pool: asyncpg.Pool

    async def GetSendingStatus(
        self, request: delivery_pb2.GetSendingStatusRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.SendingStatus:
        return await guard.sending_status(self.pool, current_workspace())

    async def LiftSuspension(
        self, request: delivery_pb2.LiftSuspensionRequest, context: grpc.aio.ServicerContext
    ) -> delivery_pb2.SendingStatus:
        metadata = dict(context.invocation_metadata() or ())
        return await guard.lift_suspension(
            self.pool, request, str(metadata.get("authorization", ""))
        )
