"""Coalescing of concurrent ``POST /v1/events`` requests into ``TrackEvents`` calls.

A single event over HTTP used to cost the gateway one gRPC call and contacts one server-side
call (grpc.aio, the OpenTelemetry and guard interceptors): about two thirds of contacts'
CPU per event went there, not into ingestion. Here each request queues its event and waits;
while fewer than ``max_in_flight`` calls of its caller are under way, the queue is sent at
once, so a lone request is never held back, and requests arriving while calls are in flight
gather into the next call (up to ``max_batch`` events). Nothing waits on a timer.

Each request still gets its own answer, the one ``TrackEvent`` would have given: the
per-event result of the batch is mapped to the same problem (422 with field errors, 404,
409) and a failure of the whole call (401, 503, ...) is every waiting request's answer.

Tracing: a group of one is sent as ``TrackEvent`` in the request's own trace context, so a
lone request traces exactly as before (gateway HTTP span -> contacts ``TrackEvent`` span ->
outbox -> consumers). A larger group is sent as ``TrackEvents`` under a span of its own that
links to every request's span, and each event's W3C ``traceparent`` travels in the call's
metadata (:data:`EVENT_TRACEPARENTS`, one per event, in order): contacts opens a span per
event under that parent and the event's outbox headers carry it, so each event keeps the
trace of the request that sent it, through Kafka to the consumers.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from dataclasses import dataclass, field

import grpc
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from services.common.tracing import current_traceparent
from services.gateway import convert, problems

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

EVENT_TRACEPARENTS = "nudge-event-traceparents"
"""gRPC metadata of a ``TrackEvents`` call: the ``traceparent`` of each event, in order,
comma-separated (an empty item for an event without one)."""

# 64 traceparents are ~3.5 KB of metadata, well under gRPC's default 8 KB limit.
DEFAULT_MAX_BATCH = 64

Metadata = tuple[tuple[str, str], ...]

LIVE: weakref.WeakSet[IngestBatcher] = weakref.WeakSet()
"""Every batcher of this process: the tests watch events queue up in the gateway."""


@dataclass
class _Pending:
    request: shop_pb2.TrackEventRequest
    traceparent: str
    span_context: trace.SpanContext
    context: contextvars.Context
    future: asyncio.Future[shop_pb2.TrackEventResponse]


@dataclass
class _Lane:
    """The queue of one caller (API key and deadline): a call carries one caller's events."""

    queue: list[_Pending] = field(default_factory=list)
    in_flight: int = 0


class IngestBatcher:
    """``track`` answers like ``TrackEvent``; concurrent calls share ``TrackEvents`` calls."""

    def __init__(
        self,
        stub: shop_pb2_grpc.ShopEventServiceStub,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_in_flight: int = 2,
    ) -> None:
        self.stub = stub
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._lanes: dict[tuple[Metadata, float], _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0
        """How many calls went to contacts (TrackEvent or TrackEvents), for the tests."""
        LIVE.add(self)

    @property
    def queued(self) -> int:
        """Events waiting for a call slot."""
        return sum(len(lane.queue) for lane in self._lanes.values())

    @property
    def in_flight(self) -> int:
        """Calls sent to contacts and not answered yet."""
        return sum(lane.in_flight for lane in self._lanes.values())

    async def track(
        self, metadata: Metadata, timeout_s: float, request: shop_pb2.TrackEventRequest
    ) -> shop_pb2.TrackEventResponse:
        """The answer for ``request``, or the :class:`problems.Problem` ``TrackEvent`` would
        have caused, once the call carrying it has returned."""
        future: asyncio.Future[shop_pb2.TrackEventResponse] = (
            asyncio.get_running_loop().create_future()
        )
        key = (metadata, timeout_s)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        lane.queue.append(
            _Pending(
                request,
                current_traceparent().get("traceparent", ""),
                trace.get_current_span().get_span_context(),
                contextvars.copy_context(),
                future,
            )
        )
        self._dispatch(key, lane)
        return await future

    def _dispatch(self, key: tuple[Metadata, float], lane: _Lane) -> None:
        while lane.queue and lane.in_flight < self._max_in_flight:
            group = lane.queue[: self._max_batch]
            del lane.queue[: self._max_batch]
            lane.in_flight += 1
            if len(group) == 1:
                # In the request's own context: the call continues the request's trace.
                task = asyncio.get_running_loop().create_task(
                    self._send_one(key, lane, group[0]), context=group[0].context
                )
            else:
                task = asyncio.create_task(self._send_many(key, lane, group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _done(self, key: tuple[Metadata, float], lane: _Lane) -> None:
        lane.in_flight -= 1
        if lane.queue:
            self._dispatch(key, lane)
        elif lane.in_flight == 0:
            self._lanes.pop(key, None)

    async def _send_one(self, key: tuple[Metadata, float], lane: _Lane, pending: _Pending) -> None:
        metadata, timeout_s = key
        try:
            self.calls += 1
            answer = await self.stub.TrackEvent(
                pending.request, metadata=metadata, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as err:
            _fail(pending, problems.from_rpc_error(err, "contacts", convert.event_field))
        except Exception as err:  # a bug: the request answers 500 through its own handler
            _fail(pending, err)
        else:
            if not pending.future.done():
                pending.future.set_result(answer)
        finally:
            self._done(key, lane)

    async def _send_many(
        self, key: tuple[Metadata, float], lane: _Lane, group: list[_Pending]
    ) -> None:
        metadata, timeout_s = key
        traceparents = ",".join(p.traceparent for p in group)
        links = [trace.Link(p.span_context) for p in group if p.span_context.is_valid]
        try:
            # A trace of its own (the requests' traces are several), linked to each of them.
            with tracer.start_as_current_span(
                "gateway ingest batch",
                context=otel_context.Context(),
                links=links,
                attributes={"nudge.events": len(group)},
            ):
                self.calls += 1
                answer = await self.stub.TrackEvents(
                    shop_pb2.TrackEventsRequest(events=[p.request for p in group]),
                    metadata=(*metadata, (EVENT_TRACEPARENTS, traceparents)),
                    timeout=timeout_s,
                )
        except grpc.aio.AioRpcError as err:
            for pending in group:  # each request raises its own exception object
                _fail(pending, problems.from_rpc_error(err, "contacts"))
        except Exception as err:
            log.exception("a TrackEvents call of %d events failed", len(group))
            for pending in group:
                _fail(pending, err)
        else:
            if len(answer.results) != len(group):
                log.error(
                    "TrackEvents answered %d results for %d events", len(answer.results), len(group)
                )
                for pending in group:
                    _fail(pending, RuntimeError("contacts answered a wrong number of results"))
            for pending, result in zip(group, answer.results, strict=False):
                if pending.future.done():  # the request has gone (client disconnected)
                    continue
                try:
                    pending.future.set_result(single_answer(result))
                except problems.Problem as problem:
                    pending.future.set_exception(problem)
        finally:
            self._done(key, lane)


def _fail(pending: _Pending, error: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)


def single_answer(result: shop_pb2.TrackEventResult) -> shop_pb2.TrackEventResponse:
    """What ``TrackEvent`` answers for the event of ``result``, or the problem its error
    becomes in the gateway (as :func:`problems.from_rpc_error` maps it for this route)."""
    status = result.status
    if status == shop_pb2.TRACK_EVENT_STATUS_INVALID:
        errors = [
            problems.FieldError(field=convert.event_field(v.field), message=v.description)
            for v in result.violations
        ]
        raise problems.Problem(422, "validation", "Invalid request", result.detail, errors)
    if status == shop_pb2.TRACK_EVENT_STATUS_CONTACT_NOT_FOUND:
        raise problems.Problem(404, "not-found", "Not found", result.detail)
    if status == shop_pb2.TRACK_EVENT_STATUS_CONFLICT:
        raise problems.Problem(409, "already-exists", "Already exists", result.detail)
    if status not in (shop_pb2.TRACK_EVENT_STATUS_ACCEPTED, shop_pb2.TRACK_EVENT_STATUS_DUPLICATE):
        log.error("TrackEvents answered an unknown status %s", status)
        raise problems.Problem(500, "internal", "Internal error", "an unexpected error occurred")
    return shop_pb2.TrackEventResponse(
        event_id=result.event_id,
        duplicate=status == shop_pb2.TRACK_EVENT_STATUS_DUPLICATE,
        contact_id=result.contact_id,
    )
