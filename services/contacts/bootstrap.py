"""The composition root of the contacts service: pool, outbox relay, gRPC server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from nudge.contacts.v1 import contacts_pb2_grpc
from nudge.shop.v1 import shop_pb2_grpc

from services.common.db import create_pool, migrate
from services.common.grpc_server import start_server
from services.common.idempotency import prune_forever
from services.common.kafka import KafkaConsumerLoop, KafkaPublisher, supports_idempotence
from services.common.outbox import OutboxRelay
from services.common.runtime import cancel_all, until_stopped
from services.common.topics import TRACKING_EVENTS
from services.contacts.adapters.postgres import SCHEMA
from services.contacts.config import Settings
from services.contacts.entrypoints.grpc import (
    AUTH_POLICY,
    ConsentServicer,
    ContactServicer,
    ShopEventServicer,
    WorkspaceServicer,
)
from services.contacts.entrypoints.kafka import TrackingConsumer
from services.contacts.handlers import CONSUMER, LocalApiKeyVerifier

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"

SERVICE_NAMES = [
    "nudge.contacts.v1.ContactService",
    "nudge.contacts.v1.ConsentService",
    "nudge.contacts.v1.WorkspaceService",
    "nudge.shop.v1.ShopEventService",
]


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    await migrate(settings.database_url, SCHEMA, MIGRATIONS)
    pool = await create_pool(settings.database_url, SCHEMA, max_size=20)
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        "nudge-contacts",
        idempotent=supports_idempotence(settings.kafka_kind),
    )
    await publisher.start()
    consumer = KafkaConsumerLoop(
        settings.kafka_bootstrap_servers, CONSUMER, [TRACKING_EVENTS], TrackingConsumer(pool)
    )
    await consumer.start()
    tasks = [
        asyncio.create_task(OutboxRelay(pool, SCHEMA, publisher).run(), name="outbox-relay"),
        asyncio.create_task(consumer.run(), name="tracking-consumer"),
        asyncio.create_task(
            prune_forever(pool, ("processed_events", "ingested_events")), name="prune-claims"
        ),
    ]
    server = await start_server(
        port=settings.grpc_port,
        servicers=[
            (
                contacts_pb2_grpc.add_ContactServiceServicer_to_server,
                ContactServicer(pool),
                SERVICE_NAMES[0],
            ),
            (
                contacts_pb2_grpc.add_ConsentServiceServicer_to_server,
                ConsentServicer(pool),
                SERVICE_NAMES[1],
            ),
            (
                contacts_pb2_grpc.add_WorkspaceServiceServicer_to_server,
                WorkspaceServicer(pool, settings.admin_token),
                SERVICE_NAMES[2],
            ),
            (
                shop_pb2_grpc.add_ShopEventServiceServicer_to_server,
                ShopEventServicer(pool),
                SERVICE_NAMES[3],
            ),
        ],
        verifier=LocalApiKeyVerifier(pool),
        internal_token=settings.internal_token,
        policy=AUTH_POLICY,
    )
    log.info("contacts serving gRPC on :%d", settings.grpc_port)
    await until_stopped(stop, tasks)
    await server.stop(grace=5)
    await cancel_all(tasks)
    await consumer.stop()
    await publisher.stop()
    await pool.close()
