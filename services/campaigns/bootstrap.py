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
from aiokafka import ConsumerRecord
from nudge.campaigns.v1 import campaigns_pb2_grpc
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.privacy.v1 import privacy_pb2_grpc

from services.campaigns import ab, privacy, report, scheduler
from services.campaigns.adapters.content import ContactsFacts, TestSendPublisher
from services.campaigns.adapters.postgres import SCHEMA
from services.campaigns.adapters.requests_out import DeliveryRequestWriter
from services.campaigns.adapters.segmentation import SegmentCatalogue
from services.campaigns.config import Settings
from services.campaigns.content_handlers import ContentDeps
from services.campaigns.entrypoints.grpc import CampaignServicer
from services.campaigns.fanout import FanoutDriver
from services.campaigns.ports import Ports
from services.common import runtime
from services.common.auth import RemoteApiKeyVerifier
from services.common.db import create_pool, migrate
from services.common.dependencies import postgres_check, redis_check
from services.common.grpc_client import channel
from services.common.idempotency import prune_forever
from services.common.kafka import KafkaConsumerLoop, KafkaPublisher, supports_idempotence
from services.common.privacy import (
    CONTACT_DATA_POLICY,
    CONTACT_DATA_SERVICE,
    ContactDataServicer,
    ContactErasedConsumer,
)
from services.common.topics import CONTACTS_EVENTS, DELIVERY_EVENTS, SHOP_EVENTS, TRACKING_EVENTS

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
    await start_fanout(service, ports)
    servicer = CampaignServicer(ports)
    servicer.content = await start_content(service, ports)
    await start_report(service, ports)
    service.spawn(scheduler.run_forever(pool, scheduler.INTERVAL_S), "campaigns-scheduler")
    # Erasure follows ContactErased (docs/privacy.md), in a group of its own, as delivery's.
    erasures = KafkaConsumerLoop(
        settings.kafka_bootstrap_servers,
        privacy.CONSUMER,
        [CONTACTS_EVENTS],
        ContactErasedConsumer(pool, privacy.CONSUMER, privacy.erase_contact),
    )
    service.push(erasures.stop)
    await erasures.start()
    service.spawn(erasures.run(), "erasure-consumer")
    await service.serve_grpc(
        port=settings.grpc_port,
        servicers=[
            (
                campaigns_pb2_grpc.add_CampaignServiceServicer_to_server,
                servicer,
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


async def start_fanout(service: runtime.Service, ports: Ports) -> None:
    """The fan-out driver (services/campaigns/fanout.py) and its Kafka writer."""
    settings = ports.settings
    writer = DeliveryRequestWriter(
        settings.kafka_bootstrap_servers,
        idempotent=supports_idempotence(settings.kafka_kind),
        topic=settings.fanout_topic,
    )
    await writer.start()
    service.push(writer.stop)
    driver = FanoutDriver(
        ports,
        writer,
        poll_interval_s=settings.fanout_poll_interval_s,
        batch_size=settings.fanout_batch_size,
        concurrency=settings.fanout_concurrency,
    )
    service.spawn(driver.run(), "campaigns-fanout")


async def start_content(service: runtime.Service, ports: Ports) -> ContentDeps:
    """The content part: contacts' facts for previews, and a Kafka producer for test sends
    (delivery.requests.v1)."""
    settings = ports.settings
    producer = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        "campaigns-content",
        idempotent=supports_idempotence(settings.kafka_kind),
    )
    await producer.start()
    service.push(producer.stop)
    return ContentDeps(
        pool=ports.pool,
        contacts=ContactsFacts(ports.contacts, settings.internal_token),
        publisher=TestSendPublisher(producer),
        from_address=settings.from_address,
        test_sends_per_hour=settings.test_sends_per_hour,
    )


async def start_report(service: runtime.Service, ports: Ports) -> None:
    """The report's consumers (delivery, tracking and shop events into recipients rows and
    attributions, services/campaigns/report.py) and the A/B decision loop (ab.py)."""
    writer = report.ReportWriter(ports.pool)

    async def on_event(envelope: Envelope, record: ConsumerRecord) -> None:
        await report.on_event(writer, envelope, record)

    consumer = KafkaConsumerLoop(
        ports.settings.kafka_bootstrap_servers,
        report.CONSUMER,
        # All three keyed by contact id: one contact's events are applied one at a time.
        [DELIVERY_EVENTS, TRACKING_EVENTS, SHOP_EVENTS],
        on_event,
        max_records=1000,
        concurrency=2000,
        max_in_flight=4000,
    )
    service.push(consumer.stop)
    await consumer.start()
    service.spawn(consumer.run(), "report-consumer")
    service.spawn(prune_forever(ports.pool), "report-prune-claims")
    service.spawn(ab.decide_forever(ports.pool), "ab-decisions")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The start-up of ``python -m services.campaigns``, in-process until ``stop``."""
    await runtime.serve(NAME, settings, stop, functools.partial(start, settings=settings))
