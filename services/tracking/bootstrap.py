"""The composition root of the tracking service: the FastAPI app, its Kafka publisher, and
the uvicorn server that ``python -m services.tracking`` runs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from redis.asyncio import Redis
from starlette.exceptions import HTTPException

from services.common import grpc_client, runtime
from services.common.metrics import HttpMetricsMiddleware
from services.tracking.adapters.bursts import BurstDetector
from services.tracking.adapters.contacts import ConsentClient, GrpcConsentClient
from services.tracking.adapters.kafka import KafkaTrackingPublisher
from services.tracking.config import Settings
from services.tracking.domain.machine_opens import MachineRules
from services.tracking.entrypoints import http
from services.tracking.entrypoints.fast import HotPaths
from services.tracking.entrypoints.server import protocol_for
from services.tracking.handlers import EventPublisher

log = logging.getLogger(__name__)
NAME = "tracking"


class TrackingApp(FastAPI):
    """FastAPI, with the open pixel and the click redirect answered before it
    (services/tracking/entrypoints/fast.py says why)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        hot: HotPaths | None = getattr(self.state, "hot_paths", None)
        if hot is not None and HotPaths.handles(scope):
            await hot(scope, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    publisher: EventPublisher | None = None,
    consent: ConsentClient | None = None,
) -> FastAPI:
    """The app; with ``publisher`` given (a fake in unit tests) it starts no Kafka client nor
    Redis client, and with ``consent`` given no channel to contacts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if consent is not None:
                app.state.consent = consent
            else:
                contacts = grpc_client.channel(settings.contacts_addr)
                stack.push_async_callback(contacts.close)
                app.state.consent = GrpcConsentClient(contacts, settings.internal_token)
            async with _publisher(app):
                app.state.hot_paths = HotPaths(
                    settings.link_secret,
                    app.state.publisher,
                    app.state.machine_rules,
                    app.state.trusted_proxies,
                    settings.trace_sample_rate,
                )
                yield

    @contextlib.asynccontextmanager
    async def _publisher(app: FastAPI) -> AsyncIterator[None]:
        if publisher is not None:
            app.state.publisher = publisher
            yield
            return
        redis = Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s)
        bursts = BurstDetector(
            redis,
            links=settings.burst_links,
            window_s=settings.burst_window_s,
            timeout_s=settings.redis_timeout_s,
        )
        kafka = KafkaTrackingPublisher(
            settings.kafka_bootstrap_servers,
            settings.kafka_kind,
            health_timeout_s=settings.health_timeout_s,
            capacity=settings.buffer_capacity,
            linger_ms=settings.kafka_linger_ms,
            enrich=bursts,
        )
        await kafka.start()  # connects in the background: a Kafka outage is not fatal
        app.state.publisher = kafka
        try:
            yield
        finally:
            await kafka.stop()
            await redis.aclose()

    # Public and unauthenticated: no interactive docs to advertise.
    app = TrackingApp(
        title="Nudge tracking",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.machine_rules = MachineRules.build(settings.machine_networks, settings.too_soon_s)
    app.state.trusted_proxies = tuple(ipaddress.ip_network(c) for c in settings.trusted_proxies)
    app.include_router(http.router)
    app.add_exception_handler(HTTPException, _http_problem)
    # The pages (unsubscribe, preferences, confirmation); the pixel and the redirect count
    # in nudge_tracking_hits (entrypoints/fast.py).
    app.add_middleware(HttpMetricsMiddleware, service="tracking")
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz")
    return app


async def _http_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    status = HTTPStatus(exc.status_code)
    if status == HTTPStatus.NOT_FOUND:
        detail = "no such link"  # the same whatever is wrong with the token
    elif isinstance(exc.detail, str) and exc.detail != status.phrase:
        detail = exc.detail  # a route's own reason
    else:
        detail = status.description
    return http.problem(status.value, status.phrase, detail)


async def start(service: runtime.Service, settings: Settings) -> None:
    """Listen on ``bind_host:http_port``; the app's lifespan (run by this step) opens the
    Kafka publisher and closes it when the listener stops."""
    # X-Forwarded-For is read by the app, from TRACKING_TRUSTED_PROXIES only (the client's
    # address feeds the scanner-network rule): uvicorn must not rewrite the peer first.
    # The open pixel and the click redirect are answered by the protocol itself
    # (services/tracking/entrypoints/server.py), the other paths by the app.
    app = create_app(settings)
    await service.serve_http(
        app, settings.http_port, proxy_headers=False, http=protocol_for(app.state)
    )


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The start-up of ``python -m services.tracking``, in-process until ``stop`` (tests)."""
    await runtime.serve(NAME, settings, stop, functools.partial(start, settings=settings))
