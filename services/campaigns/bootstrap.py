"""The composition root of the campaigns service: pool, segmentation client, gRPC server.

Nothing is published yet (sending is a later issue), so there is no Kafka client or outbox
relay here; they arrive with ``delivery.requests.v1``, and join ``tasks`` below so that the
service stops when one of them dies, as the other services do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import redis.asyncio as aioredis
from nudge.campaigns.v1 import campaigns_pb2_grpc

from services.campaigns.adapters.postgres import SCHEMA
from services.campaigns.adapters.segmentation import SegmentCatalogue
from services.campaigns.config import Settings
from services.campaigns.entrypoints.grpc import CampaignServicer
from services.common.auth import RemoteApiKeyVerifier
from services.common.db import create_pool, migrate
from services.common.grpc_client import channel
from services.common.grpc_server import start_server
from services.common.runtime import cancel_all, until_stopped

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "nudge.campaigns.v1.CampaignService"


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    await migrate(settings.database_url, SCHEMA, MIGRATIONS)
    async with contextlib.AsyncExitStack() as cleanup:
        # Whatever start-up step fails, what the earlier ones opened is closed again, in
        # reverse order (the same order as a normal stop).
        pool = await create_pool(settings.database_url, SCHEMA)
        cleanup.push_async_callback(pool.close)
        redis = aioredis.from_url(settings.redis_url)
        cleanup.push_async_callback(redis.aclose)
        contacts = channel(settings.contacts_addr)
        cleanup.push_async_callback(contacts.close)
        segmentation = channel(settings.segmentation_addr)
        cleanup.push_async_callback(segmentation.close)
        tasks: list[asyncio.Task[None]] = []  # no background work yet (module docstring)
        cleanup.push_async_callback(cancel_all, tasks)
        server = await start_server(
            port=settings.grpc_port,
            servicers=[
                (
                    campaigns_pb2_grpc.add_CampaignServiceServicer_to_server,
                    CampaignServicer(pool, SegmentCatalogue(segmentation, settings.internal_token)),
                    SERVICE_NAME,
                )
            ],
            verifier=RemoteApiKeyVerifier(contacts, redis, settings.internal_token),
            internal_token=settings.internal_token,
        )
        cleanup.push_async_callback(server.stop, 5)
        log.info("campaigns serving gRPC on :%d", settings.grpc_port)
        await until_stopped(stop, tasks)
