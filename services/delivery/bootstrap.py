"""The composition root of the delivery service: the delivery.requests.v1 consumer, the
outbox relay for delivery.events.v1, and the gRPC server."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka import ConsumerRecord
from nudge.delivery.v1 import delivery_pb2_grpc
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.privacy.v1 import privacy_pb2_grpc

from services.common import runtime
from services.common.auth import RemoteApiKeyVerifier
from services.common.db import create_pool, migrate
from services.common.dependencies import (
    kafka_check,
    postgres_check,
    redis_check,
    smtp_check,
)
from services.common.grpc_client import channel
from services.common.kafka import KafkaConsumerLoop, KafkaPublisher, supports_idempotence
from services.common.kafka_probe import BrokerProbe
from services.common.outbox import OutboxRelay
from services.common.privacy import (
    CONTACT_DATA_POLICY,
    CONTACT_DATA_SERVICE,
    ContactDataServicer,
    ContactErasedConsumer,
)
from services.common.topics import CONTACTS_EVENTS, DELIVERY_REQUESTS
from services.delivery import guard, handlers, privacy
from services.delivery.adapters.contacts import EligibilityClient
from services.delivery.adapters.postgres import SCHEMA
from services.delivery.adapters.smtp import SmtpSender, SmtpTarget
from services.delivery.config import Settings
from services.delivery.entrypoints.grpc import DeliveryServicer
from services.delivery.entrypoints.grpc_guard import GUARD_POLICY

log = logging.getLogger(__name__)
NAME = "delivery"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "nudge.delivery.v1.DeliveryService"
CONSUMER_GROUP = "delivery"


async def start(service: runtime.Service, settings: Settings) -> None:
    await migrate(settings.database_url, SCHEMA, MIGRATIONS)
    pool = await create_pool(settings.database_url, SCHEMA, max_size=20)
    service.push(pool.close)
    redis = aioredis.from_url(settings.redis_url)
    service.push(redis.aclose)
    contacts = channel(settings.contacts_addr)
    service.push(contacts.close)
    deps = handlers.Deps(
        pool=pool,
        eligibility=EligibilityClient(contacts, settings.internal_token),
        smtp=SmtpSender(SmtpTarget.from_url(settings.smtp_url), settings.smtp_timeout_s),
        from_address=settings.from_address,
        tracking_url=settings.tracking_url,
        link_secret=settings.link_secret,
    )
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        "nudge-delivery",
        idempotent=supports_idempotence(settings.kafka_kind),
    )
    service.push(publisher.stop)
    await publisher.start()
    service.spawn(OutboxRelay(pool, SCHEMA, publisher).run(), "outbox-relay")
    await guard.start(service, settings, pool)

    async def on_request(envelope: Envelope, record: ConsumerRecord) -> None:
        await handlers.deliver(deps, envelope)

    # One request at a time: a crash leaves every request in flight CLAIMED in the ledger,
    # which is never retried (at most once), so more concurrency means more lost mails per
    # crash until delivery recovers stale claims.
    consumer = KafkaConsumerLoop(
        settings.kafka_bootstrap_servers,
        CONSUMER_GROUP,
        [DELIVERY_REQUESTS],
        on_request,
        concurrency=1,
    )
    service.push(consumer.stop)
    await consumer.start()
    service.spawn(consumer.run(), "delivery-consumer")
    # Erasure follows ContactErased (docs/privacy.md), in a group of its own: a backlog of
    # mail never holds up an erasure, nor an erasure the mail.
    erasures = KafkaConsumerLoop(
        settings.kafka_bootstrap_servers,
        privacy.CONSUMER,
        [CONTACTS_EVENTS],
        ContactErasedConsumer(pool, privacy.CONSUMER, privacy.erase_contact),
    )
    service.push(erasures.stop)
    await erasures.start()
    service.spawn(erasures.run(), "erasure-consumer")
    probe = BrokerProbe(
        settings.kafka_bootstrap_servers, "nudge-delivery-health", settings.dependency_timeout_s
    )
    service.push(probe.close)
    await service.serve_grpc(
        port=settings.grpc_port,
        servicers=[
            (
                delivery_pb2_grpc.add_DeliveryServiceServicer_to_server,
                DeliveryServicer(pool),  # type: ignore[abstract]  # issue 14: guard and DKIM RPCs
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
        policy={**CONTACT_DATA_POLICY, **GUARD_POLICY},
        dependencies={
            "postgres": postgres_check(pool, settings.dependency_timeout_s),
            "redis": redis_check(redis),
            "kafka": kafka_check(probe),
            "smtp": smtp_check(settings.smtp_url, settings.dependency_timeout_s),
        },
    )
    log.info("delivery consuming %s", DELIVERY_REQUESTS)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The start-up of ``python -m services.delivery``, in-process until ``stop``."""
    await runtime.serve(NAME, settings, stop, functools.partial(start, settings=settings))
