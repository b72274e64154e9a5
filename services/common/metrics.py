"""Prometheus metrics of every service, served on its own port (``<SERVICE>_METRICS_PORT``;
``make run`` and the tests give each service one, 0 turns it off). docs/operating.md lists
them with the dashboard and the alerts that read them.

Two kinds, chosen for what they cost on the hot paths:

- Per-request metrics (gRPC and HTTP rates, errors, latency) are prometheus_client
  counters and histograms updated by the request itself: a few microseconds.
- Everything a component already counts (a consumer loop's records, its partitions' lag, an
  outbox relay's backlog) is read when Prometheus scrapes, by a collector that looks at the
  live components (:func:`watch`): nothing per record, and no metric for a component that
  is gone.

The endpoint is served by a small asyncio server on the service's own loop rather than
prometheus_client's thread, so that collectors read the components' state on the thread
that changes it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import contextvars
import inspect
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

# Seconds; from a cache hit to a slow batch call.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

GRPC_HANDLED = Counter(
    "nudge_grpc_server_handled",
    "gRPC calls served, by method and status code.",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "nudge_grpc_server_handling_seconds",
    "Time to answer a gRPC call (to the end of the stream for streaming calls).",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
HTTP_REQUESTS = Counter(
    "nudge_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["service", "route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "nudge_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["service", "route", "method"],
    buckets=LATENCY_BUCKETS,
)


# -- components read at scrape time ---------------------------------------------------------


class Sampled(Protocol):
    """A component that reports its own figures when scraped."""

    def metric_samples(self) -> Iterable[tuple[str, dict[str, str], Any]]:
        """``(family, labels, value)`` for each figure; families are declared in FAMILIES
        (a histogram's value: ``([(le, cumulative count)...], sum)``)."""
        ...


# name -> (kind, help, label names). Components report samples of these only.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "nudge_consumer_records": (
        "counter",
        "Records a consumer group finished, by outcome (handled, dead_lettered) and "
        "attempts it retried (retried, outage_retried).",
        ("service", "group", "outcome"),
    ),
    "nudge_consumer_lag": (
        "gauge",
        "Records of a partition not yet committed by the group: the partition's high "
        "watermark minus the group's committed offset, as this member last fetched it.",
        ("service", "group", "topic", "partition"),
    ),
    "nudge_consumer_in_flight": (
        "gauge",
        "Records fetched and not finished.",
        ("service", "group"),
    ),
    "nudge_consumer_paused": (
        "gauge",
        "1 while the group stopped fetching (in-flight bound or a dependency outage).",
        ("service", "group"),
    ),
    "nudge_outbox_published": (
        "counter",
        "Outbox rows published to Kafka by this process's relay.",
        ("service", "schema"),
    ),
    "nudge_outbox_dead_lettered": (
        "counter",
        "Outbox rows Kafka refused for good (moved to outbox_dead_letters).",
        ("service", "schema"),
    ),
    "nudge_outbox_backlog": (
        "gauge",
        "Outbox rows waiting to be published (measured by the relay that holds the lock).",
        ("service", "schema"),
    ),
    "nudge_outbox_oldest_age_seconds": (
        "gauge",
        "Age of the oldest outbox row waiting; 0 when none waits.",
        ("service", "schema"),
    ),
}


FAMILIES.update(
    {
        "nudge_dependency_up": (
            "gauge",
            "1 while a dependency (postgres, redis, kafka, smtp, another service) answered the "
            "service's last health check, 0 when it did not.",
            ("service", "dependency"),
        ),
        "nudge_timers_due": (
            "gauge",
            "Timers of the trigger engine due now and not fired yet.",
            ("service",),
        ),
        "nudge_timers_pending": (
            "gauge",
            "Timers of the trigger engine waiting, due or not.",
            ("service",),
        ),
        "nudge_timer_lateness_seconds": (
            "histogram",
            "How late each timer fired: the time it was handled minus the time it was due.",
            ("service", "kind"),
        ),
        "nudge_tracking_hits": (
            "counter",
            "Open pixels and click redirects answered on tracking's fast path, by route and "
            "status (a forged or expired token is a 404; the rest of tracking's pages count "
            "in nudge_http_requests).",
            ("service", "route", "status"),
        ),
        "nudge_tracking_hit_seconds": (
            "histogram",
            "Time to answer a hit on the fast path, from the parsed request to the written answer.",
            ("service", "route"),
        ),
    }
)


class LatencyHistogram:
    """A histogram by one label, for paths too hot for prometheus_client's per-call locks
    and label lookups: plain integers, read at scrape time."""

    def __init__(self, family: str, label: str, known: tuple[str, ...] = ()) -> None:
        """``known``: values of the label served at 0 from the start (Prometheus' advice: a
        series that exists before its first event gives rate() and alerts something to read)."""
        self._family = family
        self._label = label
        # value of the label -> (count per bucket, not cumulative; the last is +Inf), [sum]
        self._latency: dict[str, tuple[list[int], list[float]]] = {
            key: ([0] * (len(LATENCY_BUCKETS) + 1), [0.0]) for key in known
        }
        watch(self)

    def observe(self, key: str, seconds: float) -> None:
        latency = self._latency.get(key)
        if latency is None:
            latency = self._latency[key] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
        latency[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency[1][0] += seconds

    def metric_samples(self) -> Iterator[tuple[str, dict[str, str], Any]]:
        for key, (counts, total) in list(self._latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            yield self._family, {self._label: key}, (buckets, total[0])


class RequestStats:
    """Counts by route and status, and a latency histogram by route, for a path too hot
    for prometheus_client (tracking's pixel and redirect)."""

    def __init__(self, counter: str, histogram: str) -> None:
        self._counter = counter
        self._counts: dict[tuple[str, str], int] = {}
        self._latency = LatencyHistogram(histogram, "route")
        watch(self)

    def observe(self, route: str, status: str, seconds: float) -> None:
        key = (route, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._latency.observe(route, seconds)

    def metric_samples(self) -> Iterator[tuple[str, dict[str, str], Any]]:
        for (route, status), count in list(self._counts.items()):
            yield self._counter, {"route": route, "status": status}, count


FAMILIES["nudge_delivery_workspaces_suspended"] = (
    "gauge",
    "Workspaces whose sending the anti-spam guard suspended and no operator lifted yet.",
    ("service",),
)


# Delivery (services/delivery/outcome_metrics.py, adapters/smtp_pool.py), the campaigns'
# fan-out (services/campaigns/fanout.py): plain integers kept by the components, read here.
FAMILIES.update(
    {
        "nudge_delivery_outcomes": (
            "counter",
            "Outcomes delivery recorded, by outcome (sent, deferred, bounced_hard, "
            "bounced_soft, complained, failed, unknown, skipped) and kind of mail (campaign, "
            "automation, transactional, test, other); reason: why a mail was skipped (its "
            "first word: suppressed, no_consent...), empty otherwise.",
            ("service", "outcome", "kind", "reason"),
        ),
        "nudge_smtp_connections": (
            "gauge",
            "Connections of the SMTP pool to the relay: idle, or in_use by a send.",
            ("service", "state"),
        ),
        "nudge_smtp_connections_max": (
            "gauge",
            "The most connections the SMTP pool may hold open (SMTP_MAX_CONNECTIONS).",
            ("service",),
        ),
        "nudge_smtp_connections_opened": (
            "counter",
            "SMTP connections the pool opened.",
            ("service",),
        ),
        "nudge_smtp_connections_closed": (
            "counter",
            "SMTP connections the pool closed: retired (message cap or idle too long, with a "
            "QUIT) or discarded (failed, or in an unknown state).",
            ("service", "reason"),
        ),
        "nudge_smtp_send_seconds": (
            "histogram",
            "Time of an SMTP hand-off once its domain's permit was given: a connection, "
            "MAIL, RCPT, DATA and the relay's answer; by result (ok, refused, error).",
            ("service", "result"),
        ),
        "nudge_smtp_errors": (
            "counter",
            "SMTP hand-offs that failed, by the stage they stopped at (connect, tls, auth, "
            "helo, mail, rcpt, data, disconnected, no_answer) and the reply's class (4xx, "
            "5xx, none).",
            ("service", "stage", "reply"),
        ),
        "nudge_smtp_throttle_waiting": (
            "gauge",
            "Sends waiting for their recipient domain's permit or rate slot, by domain group "
            "(a provider or a domain named in DELIVERY_DOMAIN_LIMITS; other for the rest).",
            ("service", "domain_group"),
        ),
        "nudge_smtp_throttle_in_flight": (
            "gauge",
            "Sends holding their recipient domain's permit, by domain group.",
            ("service", "domain_group"),
        ),
        "nudge_smtp_throttle_waits": (
            "counter",
            "Sends that had to wait for their domain: for a permit (cause=connections, the "
            "domain's max_connections all in flight) or for the rate (cause=rate).",
            ("service", "domain_group", "cause"),
        ),
        "nudge_smtp_throttle_wait_seconds": (
            "counter",
            "Seconds sends spent waiting for their domain's permit and rate slot.",
            ("service", "domain_group"),
        ),
        "nudge_campaign_fanout_recipients": (
            "gauge",
            "Recipients of a campaign this process is fanning out, by state: reached (read "
            "from the audience, row written), requested (handed to delivery), excluded, "
            "deferred (written with a due time ahead). Served from the campaign's start in "
            "this process until it is sent, paused or cancelled.",
            ("service", "campaign_id", "state"),
        ),
        "nudge_campaign_fanout_streaming": (
            "gauge",
            "1 while a campaign's audience is being streamed (a phase begun and not done), "
            "0 while it waits (an A/B winner, recipients due later).",
            ("service", "campaign_id"),
        ),
        "nudge_campaign_fanout_requested": (
            "counter",
            "Recipients this process handed to delivery (records acknowledged by Kafka), "
            "every campaign together: its rate is the fan-out's rate.",
            ("service",),
        ),
    }
)


class PolledGauges:
    """Gauges that cost a query (a count of a table), refreshed every ``interval_s`` by
    :meth:`run` (a supervised task of the service) rather than at each scrape, so that
    Prometheus scraping often cannot load the database. ``fetch`` returns ``{family:
    value}``; a failing fetch keeps the last values and is logged, never fatal."""

    def __init__(
        self, fetch: Callable[[], Awaitable[dict[str, float]]], *, interval_s: float = 15.0
    ) -> None:
        self._fetch = fetch
        self._interval_s = interval_s
        self._values: dict[str, float] = {}
        watch(self)

    def metric_samples(self) -> Iterator[tuple[str, dict[str, str], Any]]:
        for family, value in list(self._values.items()):
            yield family, {}, value

    async def run(self) -> None:
        while True:
            try:
                self._values = dict(await self._fetch())
            except Exception as err:  # the database away: the dependency gauge says so
                log.warning("could not refresh gauges %s: %r", sorted(self._values), err)
            await asyncio.sleep(self._interval_s)


class _Components(Collector):
    def __init__(self) -> None:
        self._live: weakref.WeakKeyDictionary[Sampled, str] = weakref.WeakKeyDictionary()

    def add(self, component: Sampled, service: str) -> None:
        self._live[component] = service

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Any] = {}
        for name, (kind, text, label_names) in FAMILIES.items():
            make = {
                "counter": CounterMetricFamily,
                "gauge": GaugeMetricFamily,
                "histogram": HistogramMetricFamily,
            }[kind]
            families[name] = make(name, text, labels=list(label_names))
        for component, service in list(self._live.items()):
            for name, labels, value in component.metric_samples():
                family = families[name]
                names = FAMILIES[name][2]
                values = [service if n == "service" else labels.get(n, "") for n in names]
                if isinstance(family, HistogramMetricFamily):
                    buckets, total = value
                    family.add_metric(values, buckets=buckets, sum_value=total)
                else:
                    family.add_metric(values, value)
        # Only what some live component reported: no empty family looks like a metric.
        yield from (family for family in families.values() if family.samples)


_COMPONENTS = _Components()
REGISTRY.register(_COMPONENTS)
# No "_created" twin of every counter: half the text, and nothing here reads it.
disable_created_metrics()  # type: ignore[no-untyped-call]


# The service whose start-up is running (services/common/runtime.py sets it around
# ``start``): components created then are reported under its name, also when several
# services share one process (the in-process tests).
current_service: contextvars.ContextVar[str] = contextvars.ContextVar("nudge_service", default="")


def watch(component: Sampled, service: str | None = None) -> None:
    """Report ``component``'s figures for as long as it lives, under ``service`` (default:
    the service starting now)."""
    _COMPONENTS.add(component, service if service is not None else current_service.get())


# -- gRPC -------------------------------------------------------------------------------------


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts every call by method and final status code, and times it. Outermost, so it
    sees the code the client gets (the shield's INTERNAL included)."""

    def __init__(self, service: str) -> None:
        self._service = service

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = str(details.method)
        if method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return handler  # probes, not traffic
        done = self._recorder(method)
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _timed_unary(handler.unary_unary, done), **options
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _timed_unary(handler.stream_unary, done), **options
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _timed_stream(handler.unary_stream, done), **options
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _timed_stream(handler.stream_stream, done), **options
            )
        return handler

    def _recorder(self, method: str) -> Callable[[float, grpc.aio.ServicerContext, bool], None]:
        latency = GRPC_LATENCY.labels(self._service, method)
        service = self._service

        def done(started: float, context: grpc.aio.ServicerContext, failed: bool) -> None:
            latency.observe(time.perf_counter() - started)
            code = context.code()
            if code is None:
                code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            GRPC_HANDLED.labels(service, method, name).inc()

        return done


Done = Callable[[float, grpc.aio.ServicerContext, bool], None]


def _timed_unary(inner: Callable[..., Any], done: Done) -> Callable[..., Any]:
    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        failed = True
        try:
            result = await inner(request, context)
            failed = False
            return result
        finally:
            done(started, context, failed)

    return timed


def _timed_stream(inner: Callable[..., Any], done: Done) -> Callable[..., Any]:
    """In the shape of the handler it wraps, as the shield's (grpc_server.py): an async
    generator for one, a coroutine writing with ``context.write`` for the other."""
    if inspect.isasyncgenfunction(inner):

        async def timed_generator(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            failed = True
            try:
                async for item in inner(request, context):
                    yield item
                failed = False
            finally:
                done(started, context, failed)

        return timed_generator

    async def timed_writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        failed = True
        try:
            await inner(request, context)
            failed = False
        finally:
            done(started, context, failed)

    return timed_writer


# -- HTTP (ASGI) ------------------------------------------------------------------------------


class HttpMetricsMiddleware:
    """Counts and times every HTTP request by its route template (``/v1/contacts/{id}``,
    never the raw path: one series per route, not per contact). Requests no route matched
    count under ``route="unmatched"``."""

    def __init__(self, app: Any, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None)
            name = template or "unmatched"
            method = str(scope.get("method", ""))
            HTTP_LATENCY.labels(self.service, name, method).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(self.service, name, method, str(status)).inc()


# -- the endpoint -----------------------------------------------------------------------------


async def serve_metrics(host: str, port: int) -> asyncio.Server:
    """``GET /metrics`` (any path, in fact) on ``host:port``, in the Prometheus text format.
    One request per connection; Prometheus scrapes every few seconds."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            body = generate_latest(REGISTRY)
            head = (
                "HTTP/1.1 200 OK\r\n"
                f"Content-Type: {CONTENT_TYPE_LATEST}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("the metrics endpoint failed to answer")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(answer, host, port)
