"""The Faust stream processor of the trigger engine.

One agent per topic the engine reads (shop.events.v1, contacts.events.v1,
segments.membership.v1, tracking.events.v1), all keyed by contact, so one contact's events
reach one worker in order. Each hands the envelopes to :mod:`services.triggers.handlers`,
which keeps every exact fact in PostgreSQL (runs, facts, processed events, the outbox).

An event handled alone costs a dozen statements and a commit, mostly waiting for
PostgreSQL (~550 events/s at best, bench/RESULTS.md). So each agent takes the events that
arrived together (``noack_take``: up to ``batch_max``, or what came within
``batch_within_s``) and cuts them in rounds: round k holds the k-th event of each key (the
contact), so the rounds in order keep each contact's events in order and a round's
contacts are all different. A round is handled in transactions of at least ``round_min``
events, up to ``concurrency`` at a time, each with one statement per kind of write
(handlers.on_events). A transaction that fails is handled again one event at a time. The
events are acknowledged only once the whole batch is handled, so a crash or a stop
mid-batch redelivers them (and the claims make that harmless); Faust commits an offset
only when every event before it is acknowledged.

Faust gives partitioned, ordered, at-least-once consumption; nothing in a Faust table is
needed for correctness (Tansu loses table updates, DESIGN.md). The app is started by
services/triggers/bootstrap.py, after the pool it uses is open, like any other resource of
the service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import asyncpg
import faust
from faust.types import StreamT
from google.protobuf.message import DecodeError
from nudge.events.v1.envelope_pb2 import Envelope
from opentelemetry import context, propagate, trace

from services.common import metrics
from services.common.context import event_id_var, workspace_id_var
from services.common.kafka import PERMANENT
from services.common.topics import (
    CONTACTS_EVENTS,
    SEGMENT_MEMBERSHIP,
    SHOP_EVENTS,
    TRACKING_EVENTS,
)
from services.common.tracing import OFFSET, PARTITION, envelope_ids, extract_headers
from services.triggers import handlers
from services.triggers.config import Settings
from services.triggers.runtime import runs
from services.triggers.runtime.runs import Engine

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


def create_app(settings: Settings, pool: asyncpg.Pool, engine: Engine) -> Any:
    """The Faust app; its agents record what they decide through ``pool``."""
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

    def topic(name: str) -> Any:
        return app.topic(name, key_serializer="raw", value_serializer="raw")

    @app.agent(topic(SHOP_EVENTS))
    async def evaluate_shop_events(stream: StreamT[Any]) -> None:
        """Start, advance and end the runs each shop event concerns."""
        await _consume(stream, pool, engine, SHOP_EVENTS, settings)

    @app.agent(topic(CONTACTS_EVENTS))
    async def follow_contacts(stream: StreamT[Any]) -> None:
        """Keep the engine's facts of each contact (tags, attributes, time zone...)."""
        await _consume(stream, pool, engine, CONTACTS_EVENTS, settings)

    @app.agent(topic(SEGMENT_MEMBERSHIP))
    async def follow_segments(stream: StreamT[Any]) -> None:
        """Segment entries and exits: facts, and the workflows they trigger."""
        await _consume(stream, pool, engine, SEGMENT_MEMBERSHIP, settings)

    @app.agent(topic(TRACKING_EVENTS))
    async def follow_engagement(stream: StreamT[Any]) -> None:
        """Opens and clicks: activity, exit rules and the workflows they trigger."""
        await _consume(stream, pool, engine, TRACKING_EVENTS, settings)

    # Lives as long as the app (the collector holds components weakly).
    app.nudge_agent_lag = AgentLag(app, settings.app_id)  # type: ignore[attr-defined]
    return app


class AgentLag:
    """``nudge_consumer_lag`` of the agents' partitions, as services/common/consumer.py
    serves it for the other services' groups (the same family and labels, ``group`` being
    the app id, Faust's consumer group): the partition's high watermark minus the offset
    Faust last committed, read from Faust's consumer when Prometheus scrapes, nothing per
    event. A partition is left out until its high watermark is known (its first fetch) and,
    unless it is empty, until the group has committed on it."""

    def __init__(self, app: Any, group: str) -> None:
        self._app = app
        self._group = group
        metrics.watch(self)

    def metric_samples(self) -> Iterator[tuple[str, dict[str, str], Any]]:
        # app.consumer would create a consumer: read the one the worker started, if any.
        consumer = getattr(self._app, "_consumer", None)
        if consumer is None:
            return
        try:
            assignment = consumer.assignment()
        except Exception:  # not started yet (faust's ConsumerNotStarted), or stopping
            return
        committed = consumer._committed_offset  # faust keeps no public view of it
        for tp in sorted(assignment):
            try:
                highwater = consumer.highwater(tp)
            except Exception:
                continue
            if highwater is None:
                continue
            # Faust stores a commit at offset 0 as None: on an empty partition, no lag.
            done = committed.get(tp)
            if done is None and highwater > 0:
                continue
            labels = {"group": self._group, "topic": tp.topic, "partition": str(tp.partition)}
            yield "nudge_consumer_lag", labels, max(0, highwater - (done or 0))


async def _consume(
    stream: Any,  # a faust Stream: noack_take is not in its StreamT protocol
    pool: asyncpg.Pool,
    engine: Engine,
    topic: str,
    settings: Settings,
) -> None:
    """Batches of events in rounds of different contacts, acked after the whole batch."""
    limit = asyncio.Semaphore(settings.concurrency)

    async def chunk(events: list[Any]) -> None:
        async with limit:
            await _handle_round(pool, engine, topic, events)

    async for batch in stream.noack_take(settings.batch_max, within=settings.batch_within_s):
        # Round k holds the k-th event of each key (contact): the rounds in order keep each
        # contact's events in order, and a round's contacts are all different.
        for round_ in runs.waves(batch, _key):
            size = max(settings.round_min, -(-len(round_) // settings.concurrency))
            await asyncio.gather(
                *(chunk(round_[i : i + size]) for i in range(0, len(round_), size))
            )
        for event in batch:
            await stream.ack(event)


def _key(event: Any) -> object:
    message = event.message
    return message.key if message.key is not None else (message.partition, None)


async def _handle_round(pool: asyncpg.Pool, engine: Engine, topic: str, events: list[Any]) -> None:
    """Events of different contacts in one transaction (handlers.on_events), each with its
    own ``triggers evaluate`` span; if the round fails, its events one at a time, so that
    one bad event (or a deadlock with another round) holds up only itself."""
    decoded: list[tuple[Any, Envelope]] = []
    for event in events:
        try:
            decoded.append((event, Envelope.FromString(event.value)))
        except DecodeError:
            log.error("skipping an undecodable record on %s", topic)
    if len(decoded) == 1:
        await _handle(pool, engine, topic, *decoded[0])
        return
    spans = [_span(topic, event, envelope) for event, envelope in decoded]
    try:
        await handlers.on_events(
            pool,
            engine,
            [envelope for _, envelope in decoded],
            [_carrier(span) for span in spans],
        )
    except asyncio.CancelledError:
        for span in spans:
            span.end()
        raise
    except Exception as err:
        log.warning("a round of %s events failed (%r); one at a time now", len(spans), err)
        for span in spans:
            span.record_exception(err)
            span.end()
        for event, envelope in decoded:
            await _handle(pool, engine, topic, event, envelope)
        return
    for span in spans:
        span.end()


def _span(topic: str, event: Any, envelope: Envelope) -> trace.Span:
    return tracer.start_span(
        "triggers evaluate",
        context=extract_headers((event.headers or {}).items()),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.message.id": envelope.event_id,
            "nudge.workspace_id": envelope.workspace_id,
            PARTITION: event.message.partition,
            OFFSET: event.message.offset,
            **envelope_ids(envelope),
        },
    )


def _carrier(span: trace.Span) -> dict[str, str]:
    """The trace context of the span, as the outbox's records carry it."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


async def _handle(
    pool: asyncpg.Pool, engine: Engine, topic: str, event: Any, envelope: Envelope
) -> None:
    token = context.attach(extract_headers((event.headers or {}).items()))
    ws_token = workspace_id_var.set(envelope.workspace_id)
    ev_token = event_id_var.set(envelope.event_id)
    try:
        delay = 0.1
        while True:
            try:
                with trace.use_span(_span(topic, event, envelope), end_on_exit=True):
                    await handlers.on_event(pool, engine, envelope)
                return
            except asyncio.CancelledError:
                raise
            except (*PERMANENT, ValueError) as err:  # a malformed id, an invalid definition
                log.error("skipping an event of %s no retry can handle: %r", topic, err)
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
