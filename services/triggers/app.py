"""The Faust stream processor of the trigger engine.

The agent reads shop.events.v1 and hands each envelope to :mod:`services.triggers.handlers`,
which keeps every exact fact in PostgreSQL (runs, processed events, the outbox). Faust gives
partitioned, ordered, at-least-once consumption and a home for the later timers and
windows; nothing in a Faust table is needed for correctness (Tansu loses table updates,
DESIGN.md). The app is started by services/triggers/bootstrap.py, after the pool it uses
is open, like any other resource of the service.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import faust
from faust.types import StreamT
from google.protobuf.message import DecodeError
from nudge.events.v1.envelope_pb2 import Envelope
from opentelemetry import context, trace

from services.common.context import event_id_var, workspace_id_var
from services.common.kafka import PERMANENT
from services.common.topics import SHOP_EVENTS
from services.common.tracing import extract_headers
from services.triggers import handlers
from services.triggers.config import Settings

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


def create_app(settings: Settings, pool: asyncpg.Pool) -> Any:
    """The Faust app; its agent records what it decides through ``pool``."""
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
    shop_events = app.topic(SHOP_EVENTS, key_serializer="raw", value_serializer="raw")

    @app.agent(shop_events)
    async def evaluate_shop_events(stream: StreamT[Any]) -> None:
        """Start the workflows each shop event triggers."""
        async for event in stream.events():
            await _handle(pool, event)

    return app


async def _handle(pool: asyncpg.Pool, event: Any) -> None:
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
                    await handlers.on_shop_event(pool, envelope)
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
