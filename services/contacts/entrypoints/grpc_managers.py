"""gRPC ManagerService of the contacts service: the web console's manager accounts
(services/contacts/managers.py). Decode, call the use case, encode.

Every method but AuthenticateManager acts on the caller's workspace: an API key's, or the
one the internal token names in ``x-nudge-workspace-id`` (the gateway for a console session,
whose role it checks itself; the ``nudge managers`` CLI of an operator).
"""

from __future__ import annotations

import asyncpg
import grpc
import redis.asyncio as aioredis
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.common.auth import current_workspace
from services.contacts import managers

AUTH_POLICY = {
    # Any workspace's manager may sign in: only the gateway may ask, on the login route.
    "/nudge.contacts.v1.ManagerService/AuthenticateManager": "internal",
}
SERVICE_NAME = "nudge.contacts.v1.ManagerService"


class ManagerServicer(contacts_pb2_grpc.ManagerServiceServicer):
    def __init__(self, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self.pool = pool
        self.redis = redis

    async def CreateManager(
        self, request: contacts_pb2.CreateManagerRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.CreateManagerResponse:
        manager = await managers.create_manager(
            self.pool, current_workspace(), request.email, request.password, request.role
        )
        return contacts_pb2.CreateManagerResponse(manager=manager)

    async def AuthenticateManager(
        self,
        request: contacts_pb2.AuthenticateManagerRequest,
        context: grpc.aio.ServicerContext,
    ) -> contacts_pb2.AuthenticateManagerResponse:
        signed_in = await managers.authenticate_manager(self.pool, request.email, request.password)
        return contacts_pb2.AuthenticateManagerResponse(
            manager=signed_in.manager, workspace_name=signed_in.workspace_name
        )

    async def ListManagers(
        self, request: contacts_pb2.ListManagersRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.ListManagersResponse:
        found = await managers.list_managers(self.pool, current_workspace())
        return contacts_pb2.ListManagersResponse(managers=found)

    async def RemoveManager(
        self, request: contacts_pb2.RemoveManagerRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.RemoveManagerResponse:
        manager = await managers.remove_manager(
            self.pool, self.redis, current_workspace(), request.manager_id
        )
        return contacts_pb2.RemoveManagerResponse(manager=manager)

    async def UpdateManager(
        self, request: contacts_pb2.UpdateManagerRequest, context: grpc.aio.ServicerContext
    ) -> contacts_pb2.UpdateManagerResponse:
        manager = await managers.update_manager(
            self.pool, self.redis, current_workspace(), request.manager_id, request.role
        )
        return contacts_pb2.UpdateManagerResponse(manager=manager)
