"""The composition root of the contacts service: pool, outbox relay, tracking consumer,
gRPC server, opened in that order by :func:`start` (services/common/runtime.py closes them
in reverse)."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import redis.asyncio as aioredis
from nudge.contacts.v1 import contacts_pb2_grpc, imports_pb2_grpc
from nudge.shop.v1 import shop_pb2_grpc

from services.common import runtime
from services.common.auth import KeyCache
from services.common.db import create_pool, migrate
from services.common.dependencies import kafka_check, postgres_check
from services.common.grpc_client import channel
from services.common.idempotency import prune_forever
from services.common.kafka import KafkaConsumerLoop, KafkaPublisher, supports_idempotence
from services.common.kafka_probe import BrokerProbe
from services.common.outbox import OutboxRelay
from services.common.topics import DELIVERY_EVENTS, TRACKING_EVENTS
from services.contacts.adapters.postgres import SCHEMA
from services.contacts.config import Settings
from services.contacts.entrypoints.grpc import (
    AUTH_POLICY,
    ConsentServicer,
    ContactServicer,
    ShopEventServicer,
    WorkspaceServicer,
)
from services.contacts.entrypoints.grpc_imports import ImportServicer
from services.contacts.entrypoints.grpc_managers import AUTH_POLICY as MANAGER_AUTH_POLICY
from services.contacts.entrypoints.grpc_managers import ManagerServicer
from services.contacts.entrypoints.grpc_privacy import PrivacyServicer
from services.contacts.entrypoints.kafka import TrackingConsumer
from services.contacts.handlers import CONSUMER
from services.contacts.ingestion import GroupCommit
from services.contacts.keys import LastUsedRecorder, LocalApiKeyVerifier
from services.contacts.privacy import GrpcContactDataPeer

log = logging.getLogger(__name__)
NAME = "contacts"
MIGRATIONS = Path(__file__).parent / "migrations"

SERVICE_NAMES = [
    "nudge.contacts.v1.ContactService",
    "nudge.contacts.v1.ConsentService",
    "nudge.contacts.v1.WorkspaceService",
    "nudge.shop.v1.ShopEventService",
    "nudge.contacts.v1.PrivacyService",
    "nudge.contacts.v1.ImportService",
    "nudge.contacts.v1.ManagerService",  # issue 18: the console's manager accounts
]


async def start(service: runtime.Service, settings: Settings) -> None:
    await migrate(settings.database_url, SCHEMA, MIGRATIONS)
    pool = await create_pool(settings.database_url, SCHEMA, max_size=20)
    service.push(pool.close)
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        "nudge-contacts",
        idempotent=supports_idempotence(settings.kafka_kind),
    )
    service.push(publisher.stop)
    await publisher.start()
    service.spawn(OutboxRelay(pool, SCHEMA, publisher).run(), "outbox-relay")
    consumer = KafkaConsumerLoop(
        settings.kafka_bootstrap_servers,
        CONSUMER,
        [TRACKING_EVENTS, DELIVERY_EVENTS],
        TrackingConsumer(pool),
    )
    service.push(consumer.stop)
    await consumer.start()
    service.spawn(consumer.run(), "tracking-consumer")
    service.spawn(
        prune_forever(pool, ("processed_events", "ingested_events", "tag_changes")), "prune-claims"
    )
    probe = BrokerProbe(
        settings.kafka_bootstrap_servers, "nudge-contacts-health", settings.dependency_timeout_s
    )
    service.push(probe.close)
    # Short socket timeouts: every key check of a cached key reads Redis, and a Redis that
    # hangs must not hang calls (on a timeout the check falls back to PostgreSQL).
    redis = aioredis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    service.push(redis.aclose)
    key_use = LastUsedRecorder(pool)
    service.spawn(key_use.run(), "api-key-last-used")
    group_commit = GroupCommit(pool)
    service.push(group_commit.stop)
    group_commit.start()
    # The services asked for their part of a contact's export (services/contacts/privacy.py).
    peers = {}
    for name, address in (
        ("segmentation", settings.segmentation_addr),
        ("campaigns", settings.campaigns_addr),
        ("triggers", settings.triggers_addr),
        ("delivery", settings.delivery_addr),
    ):
        peer_channel = channel(address)
        service.push(peer_channel.close)
        peers[name] = GrpcContactDataPeer(peer_channel, settings.internal_token)
    await service.serve_grpc(
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
                WorkspaceServicer(
                    pool, settings.admin_token, key_cache=KeyCache(redis), key_use=key_use
                ),
                SERVICE_NAMES[2],
            ),
            (
                shop_pb2_grpc.add_ShopEventServiceServicer_to_server,
                ShopEventServicer(pool, group_commit),
                SERVICE_NAMES[3],
            ),
            (
                contacts_pb2_grpc.add_PrivacyServiceServicer_to_server,
                PrivacyServicer(pool, peers, settings.privacy_export_timeout_s),
                SERVICE_NAMES[4],
            ),
            (
                imports_pb2_grpc.add_ImportServiceServicer_to_server,
                ImportServicer(pool, batch_rows=settings.import_batch_rows),
                SERVICE_NAMES[5],
            ),
            (
                contacts_pb2_grpc.add_ManagerServiceServicer_to_server,
                ManagerServicer(pool, redis),
                SERVICE_NAMES[6],
            ),
        ],
        verifier=LocalApiKeyVerifier(pool, redis, recorder=key_use),
        internal_token=settings.internal_token,
        policy={**AUTH_POLICY, **MANAGER_AUTH_POLICY},
        dependencies={
            "postgres": postgres_check(pool, settings.dependency_timeout_s),
            "kafka": kafka_check(probe),
        },
    )


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The start-up of ``python -m services.contacts``, in-process until ``stop`` (tests)."""
    await runtime.serve(NAME, settings, stop, functools.partial(start, settings=settings))
