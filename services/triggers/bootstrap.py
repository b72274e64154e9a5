"""The composition root of the trigger engine: pool, outbox relay, timer loop, gRPC server,
then the Faust worker, opened in that order by :func:`start` and closed in reverse by the common
runtime (services/common/runtime.py), like every other service.

Faust would rather own the process (``faust worker`` / ``Worker.execute_from_commandline``
runs its own loop, installs its own signal handlers and logging, and tears down on its own
terms; this service used to hang its pool and gRPC server on a ``mode.Service`` inside it).
Here the runtime owns the process instead: the worker is started programmatically on the
runtime's loop as one more resource (``await worker.start()``, closed by ``worker.stop()``),
with Faust's signal handlers and logging set-up turned off, so SIGTERM, a failing start
step and a crash follow the same path as in the other services. A worker that stops on
its own (an agent crashed, the consumer gave up) ends the supervised ``faust-worker`` task,
which stops the service with exit 1.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path

import faust
import redis.asyncio as aioredis
from nudge.campaigns.v1 import campaigns_pb2_grpc
from nudge.privacy.v1 import privacy_pb2_grpc
from nudge.triggers.v1 import triggers_pb2_grpc

from services.common import clock, runtime
from services.common.auth import RemoteApiKeyVerifier
from services.common.db import create_pool, migrate
from services.common.dependencies import kafka_check, postgres_check, redis_check
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
from services.common.topics import CONTACTS_EVENTS
from services.triggers import handlers, privacy
from services.triggers.app import create_app
from services.triggers.commands import CommandRelay
from services.triggers.config import Settings
from services.triggers.entrypoints.grpc import WorkflowServicer
from services.triggers.runtime.caps import FrequencyCaps
from services.triggers.runtime.facts import prune_events_forever
from services.triggers.runtime.live_changes import ChangeListener
from services.triggers.runtime.runs import Engine
from services.triggers.runtime.schedules import ScheduleLoop
from services.triggers.runtime.timers import TimerLoop

log = logging.getLogger(__name__)
NAME = "triggers"
MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "nudge.triggers.v1.WorkflowService"


class EmbeddedWorker(faust.Worker):
    """A Faust worker that runs inside the common runtime: no signal handlers of its own
    (SIGTERM goes to the runtime, which stops this worker in turn)."""

    def install_signal_handlers(self) -> None:
        pass


async def _until_stopped(worker: faust.Worker) -> None:
    await worker.wait_until_stopped()
    log.error("the Faust worker stopped on its own (crash reason: %r)", worker.crash_reason)


async def start(service: runtime.Service, settings: Settings) -> None:
    await migrate(settings.database_url, handlers.SCHEMA, MIGRATIONS)
    # The agents' concurrent transactions (app.py), the timer loop, the relays, the API.
    pool = await create_pool(
        settings.database_url, handlers.SCHEMA, max_size=settings.concurrency + 10
    )
    service.push(pool.close)
    publisher = KafkaPublisher(
        settings.kafka_bootstrap_servers,
        "nudge-triggers-outbox",
        idempotent=supports_idempotence(settings.kafka_kind),
    )
    service.push(publisher.stop)
    await publisher.start()
    service.spawn(OutboxRelay(pool, handlers.SCHEMA, publisher).run(), "outbox-relay")
    service.spawn(prune_forever(pool), "prune-claims")
    # Erasure follows ContactErased (docs/privacy.md) with the common consumer loop rather
    # than a Faust agent: it needs no stream processing, only its claim in PostgreSQL.
    erasures = KafkaConsumerLoop(
        settings.kafka_bootstrap_servers,
        privacy.CONSUMER,
        [CONTACTS_EVENTS],
        ContactErasedConsumer(pool, privacy.CONSUMER, privacy.erase_contact),
    )
    service.push(erasures.stop)
    await erasures.start()
    service.spawn(erasures.run(), "erasure-consumer")
    campaigns = channel(settings.campaigns_addr)
    service.push(campaigns.close)
    caps = FrequencyCaps(campaigns_pb2_grpc.CampaignServiceStub(campaigns), settings.internal_token)
    engine = Engine(caps, live_ttl_s=settings.live_workflows_ttl_s)
    # Publications, pauses and resumptions of any worker reach this one's cache at once.
    service.spawn(ChangeListener(settings.database_url, engine).run(), "workflow-changes")
    # The timer loop is supervised: if it dies the service stops with exit 1, never silently.
    timers = TimerLoop(pool, engine, poll_s=settings.timer_poll_s)
    engine.wake = timers.wake
    service.spawn(timers.run(), "timer-loop")
    # Date workflows' timers for the contacts known at publication, after it commits.
    schedules = ScheduleLoop(pool)
    service.spawn(schedules.run(), "schedule-loop")

    async def timer_counts() -> dict[str, float]:
        row = await pool.fetchrow(
            "SELECT count(*) FILTER (WHERE due_at <= $1) AS due, count(*) AS pending FROM timers",
            clock.now(),
        )
        return {"nudge_timers_due": row["due"], "nudge_timers_pending": row["pending"]}

    service.spawn(PolledGauges(timer_counts).run(), "timer-gauges")  # common/metrics.py
    service.spawn(prune_events_forever(pool), "prune-contact-events")
    redis = aioredis.from_url(settings.redis_url)
    service.push(redis.aclose)
    contacts = channel(settings.contacts_addr)
    service.push(contacts.close)
    service.spawn(CommandRelay(pool, contacts, settings.internal_token).run(), "command-relay")
    probe = BrokerProbe(
        settings.kafka_bootstrap_servers, "nudge-triggers-health", settings.dependency_timeout_s
    )
    service.push(probe.close)
    await service.serve_grpc(
        port=settings.grpc_port,
        servicers=[
            (
                triggers_pb2_grpc.add_WorkflowServiceServicer_to_server,
                WorkflowServicer(pool, contacts, settings.internal_token, schedules.wake),
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
            "kafka": kafka_check(probe),
        },
    )
    worker = EmbeddedWorker(
        create_app(settings, pool, engine),
        loop=asyncio.get_running_loop(),
        loglevel=settings.log_level,
        redirect_stdouts=False,
        override_logging=False,  # logs stay ours (JSON, trace ids)
        daemon=False,  # start() returns once the worker runs
        quiet=True,
    )
    service.push(worker.stop)
    await worker.start()
    service.spawn(_until_stopped(worker), "faust-worker")
    log.info("triggers consuming with Faust app %s", settings.app_id)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The start-up of ``python -m services.triggers``, in-process until ``stop``."""
    await runtime.serve(NAME, settings, stop, functools.partial(start, settings=settings))
