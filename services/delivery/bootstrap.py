"""The composition root of the delivery service: the delivery.requests.v1 consumer, the
retry loop (deferred mail, transactional mail reported UNKNOWN), the sweeper of stale
claims, the outbox relay for delivery.events.v1, and the gRPC server."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import redis.asyncio as aioredis
from aiokafka import ConsumerRecord
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc
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
from services.common.idempotency import prune_forever
from services.common.kafka import KafkaConsumerLoop, KafkaPublisher, supports_idempotence
from services.common.kafka_probe import BrokerProbe
from services.common.metrics import PolledGauges
from services.common.outbox import OutboxRelay
from services.common.privacy import (
    CONTACT_DATA_POLICY,
    CONTACT_DATA_SERVICE,
    ContactDataServicer,
    ContactErasedConsumer,
)
from services.common.topics import CONTACTS_EVENTS, DELIVERY_REQUESTS, TRACKING_EVENTS
from services.delivery import guard, handlers, outcome_metrics, privacy
from services.delivery.adapters.contacts import EligibilityBatcher, EligibilityClient
from services.delivery.adapters.dkim_keys import KeyCache
from services.delivery.adapters.postgres import SCHEMA
from services.delivery.adapters.smtp import SmtpTarget, probe_session
from services.delivery.adapters.smtp_pool import PoolSettings, SmtpPool
from services.delivery.config import Settings
from services.delivery.domain.ledger import RetryPolicy
from services.delivery.domain.sealing import Sealer
from services.delivery.entrypoints.grpc import DeliveryServicer
from services.delivery.entrypoints.grpc_guard import GUARD_POLICY
from services.delivery.inbound import start_inbound
from services.delivery.mail_auth import mail_auth
from services.delivery.pruning import HORIZONS
from services.delivery.tracking_log import CONSUMER as TRACKING_LOG_CONSUMER
from services.delivery.tracking_log import TrackingLog

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
    smtp_target = SmtpTarget.from_url(settings.smtp_url)
    sealer = Sealer(settings.data_key)
    dkim_cache = KeyCache(pool, sealer, settings.dkim_key_cache_s)
    auth = mail_auth(settings, dkim_cache)
    # Long-lived connections to the relay, per recipient-domain limits (adapters/smtp_pool.py).
    smtp = SmtpPool(
        smtp_target,
        settings.smtp_timeout_s,
        PoolSettings(
            max_connections=settings.smtp_max_connections,
            max_messages=settings.smtp_max_messages_per_connection,
            idle_timeout_s=settings.smtp_idle_timeout_s,
            limits=settings.smtp_domain_limits(),
        ),
    )
    service.push(smtp.close)
    outcome_metrics.watch()  # nudge_delivery_outcomes_total, counted by handlers and inbound
    deps = handlers.Deps(
        pool=pool,
        # Concurrent requests' checks go to contacts as one CheckEligibilityBatch, asked
        # after each request arrived (a withdrawal just before the hand-off is honoured).
        eligibility=EligibilityBatcher(EligibilityClient(contacts, settings.internal_token)),
        smtp=smtp,
        from_address=settings.from_address,
        tracking_url=settings.tracking_url,
        link_secret=settings.link_secret,
        retry=RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            max_age=timedelta(seconds=settings.retry_max_age_s),
            base_delay=timedelta(seconds=settings.retry_base_delay_s),
            max_delay=timedelta(seconds=settings.retry_max_delay_s),
        ),
        resend_kinds=frozenset(RESEND_KINDS[kind] for kind in settings.resend_kinds),
        lease=timedelta(seconds=settings.sweep_after_s),
        probe=functools.partial(
            probe_session, smtp_target, settings.smtp_timeout_s, auth.probe_sender()
        ),
        auth=auth,
        track=settings.track_opens_and_clicks,
        group_max=settings.write_group_max,
        groups_in_flight=settings.write_groups_in_flight,
    )
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        "nudge-delivery",
        idempotent=supports_idempotence(settings.kafka_kind),
    )
    service.push(publisher.stop)
    await publisher.start()
    service.spawn(OutboxRelay(pool, SCHEMA, publisher).run(), "outbox-relay")
    service.spawn(prune_forever(pool, horizons=HORIZONS), "prune-claims")  # see pruning.py

    async def suspended() -> dict[str, float]:
        count = await pool.fetchval(
            "SELECT count(*) FROM guard_suspensions WHERE lifted_at IS NULL"
        )
        return {"nudge_delivery_workspaces_suspended": float(count)}

    service.spawn(PolledGauges(suspended).run(), "guard-gauge")  # services/common/metrics.py
    await start_inbound(service, settings, pool, auth)  # bounces and complaints, when a port is set
    await guard.start(service, settings, pool)

    async def on_request(envelope: Envelope, record: ConsumerRecord) -> None:
        await handlers.deliver(deps, envelope)

    # Concurrent across contacts (the record key), in order within one. A crash leaves the
    # requests in flight CLAIMED: the sweeper reports them UNKNOWN (never silently lost).
    # A session error is an outage to the loop: it backs off up to pause_max_backoff_s.
    consumer = KafkaConsumerLoop(
        settings.kafka_bootstrap_servers,
        CONSUMER_GROUP,
        [DELIVERY_REQUESTS],
        on_request,
        concurrency=settings.concurrency,
        max_in_flight=max(1000, settings.concurrency * 4),
        max_backoff_s=settings.pause_max_backoff_s,
    )
    service.push(consumer.stop)
    await consumer.start()
    service.spawn(consumer.run(), "delivery-consumer")
    service.spawn(
        periodically(
            lambda: handlers.deliver_due(deps), settings.retry_poll_interval_s, "retry loop"
        ),
        "delivery-retries",
    )
    stale_after = timedelta(seconds=settings.sweep_after_s)
    service.spawn(
        periodically(
            lambda: handlers.sweep_stale_claims(deps, stale_after),
            settings.sweep_interval_s,
            "claim sweeper",
        ),
        "delivery-claim-sweeper",
    )
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
    # What tracking saw of each mail, for its story (tracking_log.py), in a group of its own.
    tracking_log = KafkaConsumerLoop(
        settings.kafka_bootstrap_servers,
        TRACKING_LOG_CONSUMER,
        [TRACKING_EVENTS],
        TrackingLog(pool),
    )
    service.push(tracking_log.stop)
    await tracking_log.start()
    service.spawn(tracking_log.run(), "tracking-log-consumer")
    probe = BrokerProbe(
        settings.kafka_bootstrap_servers, "nudge-delivery-health", settings.dependency_timeout_s
    )
    service.push(probe.close)
    await service.serve_grpc(
        port=settings.grpc_port,
        servicers=[
            (
                delivery_pb2_grpc.add_DeliveryServiceServicer_to_server,
                DeliveryServicer(pool, sealer, dkim_cache),
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
            # Down while a session or configuration error pauses sending (it says why).
            "smtp_sending": deps.sending.check,
        },
    )
    log.info("delivery consuming %s", DELIVERY_REQUESTS)


RESEND_KINDS = {
    "transactional": delivery_pb2.MESSAGE_KIND_TRANSACTIONAL,
    "campaign": delivery_pb2.MESSAGE_KIND_CAMPAIGN,
    "automation": delivery_pb2.MESSAGE_KIND_AUTOMATION,
}


async def periodically(work: Callable[[], Awaitable[int]], interval_s: float, name: str) -> None:
    """Run ``work`` again at once while it finds something, else after ``interval_s``; a
    failure (the database away) is logged and the next round tries again."""
    while True:
        try:
            found = await work()
        except Exception:
            log.exception("%s: round failed; trying again in %.1fs", name, interval_s)
            found = 0
        if not found:
            await asyncio.sleep(interval_s)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The start-up of ``python -m services.delivery``, in-process until ``stop``."""
    await runtime.serve(NAME, settings, stop, functools.partial(start, settings=settings))
