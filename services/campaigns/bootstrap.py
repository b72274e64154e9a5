"""The composition root of the campaigns service: pool, segmentation client, gRPC server.

Nothing is published yet (sending is a later issue), so there is no Kafka client or outbox
relay here; they arrive with ``delivery.requests.v1``.
"""

from __future__ import annotations

import asyncio
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

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "nudge.campaigns.v1.CampaignService"


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    await migrate(settings.database_url, SCHEMA, MIGRATIONS)
    pool = await create_pool(settings.database_url, SCHEMA)
    redis = aioredis.from_url(settings.redis_url)
    contacts = channel(settings.contacts_addr)
    segmentation = channel(settings.segmentation_addr)
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
    log.info("campaigns serving gRPC on :%d", settings.grpc_port)
    await stop.wait()
    await server.stop(grace=5)
    await segmentation.close()
    await contacts.close()
    await redis.aclose()
    await pool.close()
