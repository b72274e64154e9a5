"""The Faust stream processor of the trigger engine.

    python -m services.triggers      # a Faust worker, plus the gRPC sidecar and outbox relay

The agent reads shop.events.v1 and hands each envelope to :mod:`services.triggers.handlers`,
which keeps every exact fact in PostgreSQL (runs, processed events, the outbox). Faust gives
partitioned, ordered, at-least-once consumption and a home for the later timers and
windows; nothing in a Faust table is needed for correctness (Tansu loses table updates,
DESIGN.md). The sidecar service, started and stopped with the worker, owns the database
pool, the Kafka producer of the outbox relay and the WorkflowService gRPC server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import faust
import grpc
import mode
import redis.asyncio as aioredis
from faust.types import StreamT
from google.protobuf.message import DecodeError
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.triggers.v1 import triggers_pb2_grpc
from opentelemetry import context, trace

from services.common.auth import RemoteApiKeyVerifier
from services.common.context import event_id_var, workspace_id_var
from services.common.db import create_pool, migrate
from services.common.grpc_client import channel
from services.common.grpc_server import start_server
from services.common.idempotency import prune_forever
from services.common.kafka import PERMANENT, KafkaPublisher, supports_idempotence
from services.common.logs import setup_logging
from services.common.outbox import OutboxRelay
from services.common.topics import SHOP_EVENTS
from services.common.tracing import extract_headers
from services.triggers import handlers
from services.triggers.config import Settings
from services.triggers.entrypoints.grpc import WorkflowServicer

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "nudge.triggers.v1.WorkflowService"


def create_app(settings: Settings) -> Any:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        store="memory://",
        datadir=settings.data_dir,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        topic_disable_leader=True,
        topic_allow_declare=False,  # topics are created explicitly, with their partition counts
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        # Short sessions so a dead worker's partitions move quickly (DESIGN.md, measured).
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        broker_rebalance_timeout=20,
        producer_linger_ms=0,
    )
    ready = asyncio.Event()
    state: dict[str, Any] = {}

    @app.service
    class Sidecar(mode.Service):
        """Owns the pool, the outbox relay and the gRPC server for the worker's lifetime."""

        async def on_start(self) -> None:
            # Faust configured logging when the worker started; make it ours (JSON, trace ids).
            setup_logging("triggers", settings.log_level, settings.log_format)
            await migrate(settings.database_url, handlers.SCHEMA, MIGRATIONS)
            pool = await create_pool(settings.database_url, handlers.SCHEMA, max_size=10)
            publisher = KafkaPublisher(
                settings.kafka_bootstrap_servers,
                "nudge-triggers-outbox",
                idempotent=supports_idempotence(settings.kafka_kind),
            )
            await publisher.start()
            relay = asyncio.create_task(OutboxRelay(pool, handlers.SCHEMA, publisher).run())
            pruning = asyncio.create_task(prune_forever(pool))
            redis = aioredis.from_url(settings.redis_url)
            contacts = channel(settings.contacts_addr)
            server = await start_server(
                port=settings.grpc_port,
                servicers=[
                    (
                        triggers_pb2_grpc.add_WorkflowServiceServicer_to_server,
                        WorkflowServicer(),
                        SERVICE_NAME,
                    )
                ],
                verifier=RemoteApiKeyVerifier(contacts, redis, settings.internal_token),
                internal_token=settings.internal_token,
            )
            state.update(
                pool=pool,
                publisher=publisher,
                relay=relay,
                pruning=pruning,
                redis=redis,
                contacts=contacts,
                server=server,
            )
            ready.set()
            log.info("triggers sidecar serving gRPC on :%d", settings.grpc_port)

        async def on_stop(self) -> None:
            if not state:
                return
            server: grpc.aio.Server = state["server"]
            await server.stop(grace=5)
            for task in (state["relay"], state["pruning"]):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state["publisher"].stop()
            await state["contacts"].close()
            await state["redis"].aclose()
            await state["pool"].close()

    shop_events = app.topic(SHOP_EVENTS, key_serializer="raw", value_serializer="raw")

    @app.agent(shop_events)
    async def evaluate_shop_events(stream: StreamT[Any]) -> None:
        """Start the workflows each shop event triggers."""
        await ready.wait()
        async for event in stream.events():
            await _handle(state, event)

    return app


async def _handle(state: dict[str, Any], event: Any) -> None:
    try:
        envelope = Envelope.FromString(event.value)
    except DecodeError:
        log.error("skipping an undecodable record on %s", SHOP_EVENTS)
        return
    token = context.attach(extract_headers((event.headers or {}).items()))
    ws_token = workspace_id_var.set(envelope.workspace_id)
    ev_token = event_id_var.set(envelope.event_id)
    try:
        delay = 0.1
        while True:
            try:
                with tracer.start_as_current_span(
                    "triggers evaluate",
                    kind=trace.SpanKind.CONSUMER,
                    attributes={
                        "messaging.system": "kafka",
                        "messaging.destination.name": SHOP_EVENTS,
                        "messaging.message.id": envelope.event_id,
                        "nudge.workspace_id": envelope.workspace_id,
                    },
                ):
                    await handlers.on_shop_event(state["pool"], envelope)
                return
            except asyncio.CancelledError:
                raise
            except PERMANENT as err:
                log.error("skipping a shop event no retry can handle: %r", err)
                return
            except Exception:
                # Retried, not skipped: an event is acked (and its offset committed) only
                # once its runs are durably recorded.
                log.exception("trigger evaluation failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
    finally:
        event_id_var.reset(ev_token)
        workspace_id_var.reset(ws_token)
        context.detach(token)
