"""The composition root of the campaigns service: pool, channels, the parts' background work,
gRPC server.

Each part (fan-out, scheduler, report consumers) starts its own background work from
``Ports`` in its ``start_*`` function below, with ``service.spawn`` so that the service stops
when one of them dies, as the other services do.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import redis.asyncio as aioredis
from nudge.campaigns.v1 import campaigns_pb2_grpc
from nudge.privacy.v1 import privacy_pb2_grpc

from services.campaigns import privacy, scheduler
from services.campaigns.adapters.postgres import SCHEMA
from services.campaigns.adapters.segmentation import SegmentCatalogue
from services.campaigns.config import Settings
from services.campaigns.entrypoints.grpc import CampaignServicer
from services.campaigns.ports import Ports
from services.common import runtime
from services.common.auth import RemoteApiKeyVerifier
from services.common.db import create_pool, migrate
from services.common.dependencies import postgres_check, redis_check
from services.common.grpc_client import channel
from services.common.privacy import CONTACT_DATA_POLICY, CONTACT_DATA_SERVICE, ContactDataServicer

log = logging.getLogger(__name__)
NAME = "campaigns"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "nudge.campaigns.v1.CampaignService"


async def start(service: runtime.Service, settings: Settings) -> None:
    await migrate(settings.database_url, SCHEMA, MIGRATIONS)
    pool = await create_pool(settings.database_url, SCHEMA)
    service.push(pool.close)
    redis = aioredis.from_url(settings.redis_url)
    service.push(redis.aclose)
    contacts = channel(settings.contacts_addr)
    service.push(contacts.close)
    segmentation = channel(settings.segmentation_addr)
    service.push(segmentation.close)
    delivery = channel(settings.delivery_addr)
    service.push(delivery.close)
    ports = Ports(
        settings=settings,
        pool=pool,
        contacts=contacts,
        segmentation=segmentation,
        delivery=delivery,
        segments=SegmentCatalogue(segmentation, settings.internal_token),
    )
    service.spawn(scheduler.run_forever(pool, scheduler.INTERVAL_S), "campaigns-scheduler")
    await service.serve_grpc(
        port=settings.grpc_port,
        servicers=[
            (
                campaigns_pb2_grpc.add_CampaignServiceServicer_to_server,
                CampaignServicer(ports),  # type: ignore[abstract]  # until every part lands (issue 15)
                SERVICE_NAME,
            ),
            (
                privacy_pb2_grpc.add_ContactDataServiceServicer_to_server,
                ContactDataServicer(privacy.SERVICE, pool, privacy.export_contact),
                CONTACT_DATA_SERVICE,
            ),
        ],
        verifier=RemoteApiKeyVerifier(contacts, redis, settings.internal_token),
        internal_token=settings.internal_token,
        policy=CONTACT_DATA_POLICY,
        dependencies={
            "postgres": postgres_check(pool, settings.dependency_timeout_s),
            "redis": redis_check(redis),
        },
    )


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The start-up of ``python -m services.campaigns``, in-process until ``stop``."""
    await runtime.serve(NAME, settings, stop, functools.partial(start, settings=settings))
