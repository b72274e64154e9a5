"""The composition root of the segmentation service: the read-model consumer (batched
writes, each batch re-evaluating the memberships of the contacts it changed), the outbox
relay that publishes membership transitions on segments.membership.v1, the sweeper of
transitions caused by time alone, and the gRPC server (segments; the per-contact export for
privacy requests)."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka import ConsumerRecord
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.privacy.v1 import privacy_pb2_grpc
from nudge.segmentation.v1 import segmentation_pb2_grpc

from services.common import runtime
from services.common.auth import RemoteApiKeyVerifier
from services.common.db import create_pool, migrate
from services.common.dependencies import kafka_check, postgres_check, redis_check
from services.common.grpc_client import channel
from services.common.idempotency import prune_forever
from services.common.kafka import KafkaConsumerLoop, KafkaPublisher, supports_idempotence
from services.common.kafka_probe import BrokerProbe
from services.common.outbox import OutboxRelay
from services.common.topics import CONTACTS_EVENTS, SHOP_EVENTS, TRACKING_EVENTS
from services.segmentation import membership
from services.segmentation.config import Settings
from services.segmentation.entrypoints import kafka
from services.segmentation.entrypoints.grpc import ContactDataServicer, SegmentServicer
from services.segmentation.handlers import ReadModelWriter
from services.segmentation.sweeper import Sweeper

log = logging.getLogger(__name__)
NAME = "segmentation"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "nudge.segmentation.v1.SegmentService"
PRIVACY_SERVICE_NAME = "nudge.privacy.v1.ContactDataService"
AUTH_POLICY = {f"/{PRIVACY_SERVICE_NAME}/ExportContactData": "internal"}
# Records handled at once: each waits for the batch that carries it, so this bounds how
# large a batch can grow (ReadModelWriter). Twice the largest batch, so that the next batch
# gathers while one is written. Workers are coroutines, cheap to have many of.
CONSUMER_CONCURRENCY = 2000
MAX_IN_FLIGHT = 4000


async def start(service: runtime.Service, settings: Settings) -> None:
    await migrate(settings.database_url, settings.database_schema, MIGRATIONS)
    pool = await create_pool(settings.database_url, settings.database_schema, max_size=20)
    service.push(pool.close)
    redis = aioredis.from_url(settings.redis_url)
    service.push(redis.aclose)
    contacts = channel(settings.contacts_addr)
    service.push(contacts.close)
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        "nudge-segmentation",
        idempotent=supports_idempotence(settings.kafka_kind),
    )
    service.push(publisher.stop)
    await publisher.start()
    membership.configure(topic=settings.membership_topic)
    service.spawn(OutboxRelay(pool, settings.database_schema, publisher).run(), "outbox-relay")
    sweeper = Sweeper(pool, batch=settings.sweep_batch, max_sleep_s=settings.sweep_max_sleep_s)
    service.spawn(sweeper.run(), "membership-sweeper")

    writer = ReadModelWriter(
        pool, max_batch=settings.apply_batch_max, after_apply=membership.after_apply
    )

    async def on_event(envelope: Envelope, record: ConsumerRecord) -> None:
        await kafka.on_event(writer, envelope, record)

    consumer = KafkaConsumerLoop(
        settings.kafka_bootstrap_servers,
        settings.consumer_group,
        # Keyed by contact id all three: one contact's records are applied one at a time.
        [CONTACTS_EVENTS, SHOP_EVENTS, TRACKING_EVENTS],
        on_event,
        max_records=MAX_IN_FLIGHT // 2,
        concurrency=CONSUMER_CONCURRENCY,
        max_in_flight=MAX_IN_FLIGHT,
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
            ),
            (
                privacy_pb2_grpc.add_ContactDataServiceServicer_to_server,
                ContactDataServicer(pool),
                PRIVACY_SERVICE_NAME,
            ),
        ],
        policy=AUTH_POLICY,
        verifier=RemoteApiKeyVerifier(contacts, redis, settings.internal_token),
        internal_token=settings.internal_token,
        dependencies={
            "postgres": postgres_check(pool, settings.dependency_timeout_s),
            "redis": redis_check(redis),
            "kafka": kafka_check(probe),
        },
    )
    log.info(
        "segmentation consuming %s, %s and %s as group %s into schema %s",
        CONTACTS_EVENTS,
        SHOP_EVENTS,
        TRACKING_EVENTS,
        settings.consumer_group,
        settings.database_schema,
    )


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The start-up of ``python -m services.segmentation``, in-process until ``stop``."""
    await runtime.serve(NAME, settings, stop, functools.partial(start, settings=settings))
