"""The composition root of the segmentation service: the read-model consumer and the gRPC
server. Nothing is published yet, so there is no outbox relay (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka import ConsumerRecord
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.segmentation.v1 import segmentation_pb2_grpc

from services.common.auth import RemoteApiKeyVerifier
from services.common.db import create_pool, migrate
from services.common.grpc_client import channel
from services.common.grpc_server import start_server
from services.common.idempotency import prune_forever
from services.common.kafka import KafkaConsumerLoop
from services.common.runtime import cancel_all, until_stopped
from services.common.topics import CONTACTS_EVENTS, SHOP_EVENTS
from services.segmentation.adapters.postgres import SCHEMA
from services.segmentation.config import Settings
from services.segmentation.entrypoints import kafka
from services.segmentation.entrypoints.grpc import SegmentServicer
from services.segmentation.handlers import CONSUMER

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "nudge.segmentation.v1.SegmentService"


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    await migrate(settings.database_url, SCHEMA, MIGRATIONS)
    async with contextlib.AsyncExitStack() as cleanup:
        # Whatever start-up step fails, what the earlier ones opened is closed again, in
        # reverse order (the same order as a normal stop).
        pool = await create_pool(settings.database_url, SCHEMA, max_size=20)
        cleanup.push_async_callback(pool.close)
        redis = aioredis.from_url(settings.redis_url)
        cleanup.push_async_callback(redis.aclose)
        contacts = channel(settings.contacts_addr)
        cleanup.push_async_callback(contacts.close)

        async def on_event(envelope: Envelope, record: ConsumerRecord) -> None:
            await kafka.on_event(pool, envelope, record)

        consumer = KafkaConsumerLoop(
            settings.kafka_bootstrap_servers, CONSUMER, [CONTACTS_EVENTS, SHOP_EVENTS], on_event
        )
        cleanup.push_async_callback(consumer.stop)
        await consumer.start()
        tasks = [
            asyncio.create_task(consumer.run(), name="read-model-consumer"),
            asyncio.create_task(prune_forever(pool), name="prune-claims"),
        ]
        cleanup.push_async_callback(cancel_all, tasks)
        server = await start_server(
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
        )
        cleanup.push_async_callback(server.stop, 5)
        log.info(
            "segmentation serving gRPC on :%d, consuming %s and %s",
            settings.grpc_port,
            CONTACTS_EVENTS,
            SHOP_EVENTS,
        )
        await until_stopped(stop, tasks)
