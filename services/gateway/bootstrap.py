"""The composition root of the gateway: the FastAPI app with its routers, error handlers,
body limit and tracing; the clients it opens once at start-up (gRPC channels, and the HTTP
client that reads tracking's health; it holds no database, Redis, Kafka or SMTP client,
see adapters/health.py); and the start-up ``python -m services.gateway`` runs. Unit tests
pass fake backends and checks instead of the real clients (the health report cache still
wraps them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import grpc
import redis.asyncio as aioredis
from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from starlette.exceptions import HTTPException

from services.common import runtime
from services.common.metrics import HttpMetricsMiddleware
from services.gateway import problems
from services.gateway.adapters.grpc import Backends, open_backends
from services.gateway.adapters.health import CachedChecks, DependencyChecks, HealthChecks
from services.gateway.body_limit import BodyLimitMiddleware
from services.gateway.config import Settings
from services.gateway.entrypoints import (
    campaign_audience,
    campaign_content,
    campaign_lifecycle,
    campaign_report,
    campaign_timeline,
    campaigns,
    consent,
    contacts,
    dkim,
    events,
    health,
    imports,
    keys,
    messages,
    privacy,
    segments,
    sending,
    workflows,
)
from services.gateway.entrypoints import console as console_pages
from services.gateway.entrypoints import session as console_session
from services.gateway.sessions import LoginThrottle, SessionStore
from services.gateway.strict_query import reject_unknown_query

NAME = "gateway"

DESCRIPTION = """The HTTP API of Nudge for managers and frontends.

Every `/v1` route needs a workspace API key: `Authorization: Bearer nk_...`, or the session
cookie of the web console (`POST /v1/session`; then every unsafe method needs the session's
`X-CSRF-Token`). A key sees only its own workspace; another workspace's ids are *not found*.
Errors are RFC 9457 problem details (`application/problem+json`) with a field list for
invalid requests; a query parameter a route does not take is one of them (422), not
ignored."""

TAGS = [
    {"name": "contacts", "description": "Contacts and their consent history."},
    {
        "name": "consent",
        "description": "Consent history, the suppression list, workspace settings, eligibility.",
    },
    {"name": "events", "description": "What customers did in the shop."},
    {"name": "segments", "description": "Built-in and custom segments."},
    {"name": "campaigns", "description": "Targeted messages to segments."},
    {
        "name": "workflows",
        "description": "Automations: drafts, published versions, runs, test runs, templates.",
    },
    {"name": "messages", "description": "Delivery status of single messages."},
    {"name": "dkim", "description": "DKIM keys of the workspace's sending domains."},
    {"name": "api-keys", "description": "The workspace's API keys: create, revoke, rotate."},
    {"name": "session", "description": "The web console's sign-in, and its managers."},
    {"name": "health", "description": "Dependency checks."},
]


def create_app(
    settings: Settings,
    *,
    backends: Backends | None = None,
    checks: HealthChecks | None = None,
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            app.state.backends = backends
            if backends is None:
                app.state.backends = open_backends(settings)
                stack.push_async_callback(app.state.backends.close)
            run_checks = checks
            if run_checks is None:
                dependency_checks = DependencyChecks(settings, app.state.backends.health, redis)
                stack.push_async_callback(dependency_checks.close)
                run_checks = dependency_checks
            app.state.checks = CachedChecks(run_checks, settings.health_cache_s)
            stack.push_async_callback(redis.aclose)
            yield

    app = FastAPI(
        title="Nudge gateway",
        version="1",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        dependencies=[Depends(reject_unknown_query)],
    )
    app.state.settings = settings
    # The console's sessions and sign-in throttle (sessions.py). The client connects on first
    # use, so apps that never see a cookie (unit tests, API-key traffic) never reach Redis.
    redis = aioredis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    app.state.sessions = SessionStore(
        redis, idle_s=settings.session_idle_s, max_s=settings.session_max_s
    )
    app.state.login_throttle = LoginThrottle(
        redis,
        max_failures=settings.login_max_failures,
        max_failures_per_address=settings.login_max_failures_per_address,
        window_s=settings.login_window_s,
    )
    # imports first: /v1/contacts/imports must not be taken for a contact id.
    routers = (
        imports,
        contacts,
        privacy,
        consent,
        events,
        segments,
        campaigns,
        campaign_content,  # issue 15: content check, preview, test send
        campaign_lifecycle,
        messages,
        dkim,
        keys,
    )
    for module in (*routers, health):
        app.include_router(module.router)
    app.include_router(contacts.attributes_router)
    app.include_router(sending.router)  # issue 14: the anti-spam guard
    app.include_router(campaign_audience.router)  # issue 15: audience
    app.include_router(campaign_report.router)  # issue 15: the report
    app.include_router(campaign_timeline.router)  # issue 18: the report over time
    app.include_router(workflows.router)  # issue 16: workflows
    app.include_router(messages.contact_router)  # issue 18: a contact's messages
    app.include_router(console_session.router)  # issue 18: the console's sessions
    app.include_router(console_session.managers_router)
    app.include_router(console_pages.router)
    app.add_exception_handler(problems.Problem, problems.handle_problem)
    app.add_exception_handler(RequestValidationError, problems.handle_validation_error)
    app.add_exception_handler(HTTPException, problems.handle_http_exception)
    app.add_exception_handler(grpc.aio.AioRpcError, problems.handle_rpc_error)
    app.add_exception_handler(Exception, problems.handle_unexpected)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        # A filter may name up to 10,000 contact ids (~400 kB): the routes that take one get
        # the batch limit, so a request their schema allows is not refused for its size.
        path_limits={
            path: settings.max_batch_body_bytes
            for path in ("/v1/events:batch", "/v1/contacts/tags:bulk", "/v1/eligibility:count")
        },
        streamed_paths=frozenset({"/v1/contacts/imports"}),
    )
    # Every request counted and timed by its route template (services/common/metrics.py).
    app.add_middleware(HttpMetricsMiddleware, service="gateway")
    # Outermost: the request's span is the root of the trace, gRPC calls continue it. No
    # span per ASGI send/receive message: two more spans a request, ~10 % of its CPU.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz", exclude_spans=["receive", "send"]
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with error answers under ``application/problem+json``."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for answer in operation.get("responses", {}).values():
                    content = answer.get("content", {})
                    if "ProblemDetails" in str(content.get("application/json")):
                        content[problems.MEDIA_TYPE] = content.pop("application/json")
        app.openapi_schema = schema
    return app.openapi_schema


async def start(service: runtime.Service, settings: Settings) -> None:
    """Listen on ``bind_host:http_port``; the app's lifespan (run by this step) opens the
    gRPC channels and the health checks' HTTP client, and closes them when it stops."""
    await service.serve_http(create_app(settings), settings.http_port)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """The start-up of ``python -m services.gateway``, in-process until ``stop`` (tests)."""
    await runtime.serve(NAME, settings, stop, functools.partial(start, settings=settings))
