"""The composition root of the segmentation service: the read-model consumer and the gRPC
server. Nothing is published yet, so there is no outbox relay (see the package docstring)."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka import ConsumerRecord
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.segmentation.v1 import segmentation_pb2_grpc

from services.common import runtime
from services.common.auth import RemoteApiKeyVerifier
from services.common.db import create_pool, migrate
from services.common.dependencies import kafka_check, postgres_check, redis_check
from services.common.grpc_client import channel
from services.common.idempotency import prune_forever
from services.common.kafka import KafkaConsumerLoop
from services.common.kafka_probe import BrokerProbe
from services.common.topics import CONTACTS_EVENTS, SHOP_EVENTS
from services.segmentation.adapters.postgres import SCHEMA
from services.segmentation.config import Settings
from services.segmentation.entrypoints import kafka
from services.segmentation.entrypoints.grpc import SegmentServicer
from services.segmentation.handlers import CONSUMER

log = logging.getLogger(__name__)
NAME = "segmentation"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "nudge.segmentation.v1.SegmentService"


async def start(service: runtime.Service, settings: Settings) -> None:
    await migrate(settings.database_url, SCHEMA, MIGRATIONS)
    pool = await create_pool(settings.database_url, SCHEMA, max_size=20)
    service.push(pool.close)
    redis = aioredis.from_url(settings.redis_url)
    service.push(redis.aclose)
    contacts = channel(settings.contacts_addr)
    service.push(contacts.close)

    async def on_event(envelope: Envelope, record: ConsumerRecord) -> None:
        await kafka.on_event(pool, envelope, record)

    consumer = KafkaConsumerLoop(
        settings.kafka_bootstrap_servers, CONSUMER, [CONTACTS_EVENTS, SHOP_EVENTS], on_event
    )
    service.push(consumer.stop)
    await consumer.start()
    service.spawn(consumer.run(), "read-model-consumer")
    service.spawn(prune_forever(pool), "prune-claims")
    probe = BrokerProbe(
        settings.kafka_bootstrap_servers, "nudge-segmentation-health", settings.dependency_timeout_s
    )
    service.push(probe.close)
    await service.serve_grpc(
        port=settings.grpc_port,
        servicers=[
            (
                segmentation_pb2_grpc.add_SegmentServiceServicer_to_server,
                SegmentServicer(pool),
                SERVICE_NAME,
            )
        ],
        verifier=RemoteApiKeyVerifier(contacts, redis, settings.internal_token),
        internal_token=settings.internal_token,
        dependencies={
            "postgres": postgres_check(pool, settings.dependency_timeout_s),
            "redis": redis_check(redis),
            "kafka": kafka_check(probe),
        },
    )
    log.info("segmentation consuming %s and %s", CONTACTS_EVENTS, SHOP_EVENTS)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The start-up of ``python -m services.segmentation``, in-process until ``stop``."""
    await runtime.serve(NAME, settings, stop, functools.partial(start, settings=settings))
