"""The gateway over real HTTP, in front of the real contacts service (PostgreSQL, Kafka)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.integration.conftest import RunningService, Workspace
from tests.integration.gateway.conftest import MAX_BODY_BYTES, new_workspace
from tests.integration.tracking.conftest import HttpService, run_http
from tests.support import eventually, fetchval, free_port, unique

PROBLEM = "application/problem+json"


@pytest.fixture
async def http(gateway: HttpService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=15) as client:
        yield client


def auth(workspace: Workspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {workspace.api_key}"}


def new_email() -> str:
    return f"{unique('ada')}@example.com"


async def test_a_created_contact_reads_back_at_its_location(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    email = new_email()
    created = await http.post(
        "/v1/contacts",
        json={
            "email": email,
            "first_name": "Ada",
            "birthday": "--12-10",
            "tags": ["newsletter"],
            "vip": True,
            "consents": ["marketing"],
        },
        headers=auth(workspace),
    )
    assert created.status_code == 201, created.text
    contact = created.json()
    assert contact["workspace_id"] == workspace.id
    assert (contact["email"], contact["birthday"], contact["vip"]) == (email, "--12-10", True)
    assert created.headers["location"] == f"/v1/contacts/{contact['id']}"

    again = await http.get(created.headers["location"], headers=auth(workspace))
    assert again.status_code == 200
    assert again.json() == contact


async def test_another_workspaces_key_does_not_find_the_contact(
    http: httpx.AsyncClient, workspace: Workspace, contacts_service: RunningService
) -> None:
    created = await http.post("/v1/contacts", json={"email": new_email()}, headers=auth(workspace))
    other = await new_workspace(contacts_service)
    answer = await http.get(created.headers["location"], headers=auth(other))
    assert answer.status_code == 404
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["status"] == 404


async def test_without_a_valid_key_it_is_401(http: httpx.AsyncClient) -> None:
    missing = await http.post("/v1/contacts", json={"email": new_email()})
    assert (missing.status_code, missing.headers["content-type"]) == (401, PROBLEM)
    unknown = await http.get(
        "/v1/contacts/x", headers={"Authorization": "Bearer nk_0123456789abcdef_" + "x" * 43}
    )
    assert (unknown.status_code, unknown.headers["content-type"]) == (401, PROBLEM)


async def test_malformed_json_is_400(http: httpx.AsyncClient, workspace: Workspace) -> None:
    answer = await http.post(
        "/v1/contacts",
        content=b'{"email": ',
        headers={**auth(workspace), "Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.headers["content-type"] == PROBLEM
    assert {"type", "title", "status", "detail"} <= set(answer.json())


async def test_wrong_types_are_422_naming_the_fields(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    answer = await http.post(
        "/v1/contacts", json={"email": 42, "vip": "yes"}, headers=auth(workspace)
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM
    assert sorted(e["field"] for e in answer.json()["errors"]) == ["email", "vip"]


async def test_an_invalid_email_is_422_from_the_service_with_the_json_field(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    answer = await http.post(
        "/v1/contacts", json={"email": "not-an-address"}, headers=auth(workspace)
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["errors"][0]["field"] == "email"


async def test_a_duplicate_email_is_409(http: httpx.AsyncClient, workspace: Workspace) -> None:
    email = new_email()
    first = await http.post("/v1/contacts", json={"email": email}, headers=auth(workspace))
    assert first.status_code == 201
    second = await http.post("/v1/contacts", json={"email": email}, headers=auth(workspace))
    assert (second.status_code, second.headers["content-type"]) == (409, PROBLEM)


async def test_bodies_over_the_limit_are_413_declared_or_streamed(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    big = {"email": new_email(), "consent_wording": "x" * MAX_BODY_BYTES}
    declared = await http.post("/v1/contacts", json=big, headers=auth(workspace))
    assert (declared.status_code, declared.headers["content-type"]) == (413, PROBLEM)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "a@example.com", "consent_wording": "'
        for _ in range(MAX_BODY_BYTES // 512 + 1):
            yield b"x" * 512
        yield b'"}'

    streamed = await http.post(
        "/v1/contacts",
        content=chunks(),
        headers={**auth(workspace), "Content-Type": "application/json"},
    )
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413


async def test_consent_is_recorded_for_an_existing_contact(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    created = await http.post(
        "/v1/contacts",
        json={"email": new_email(), "consents": ["automations"]},
        headers=auth(workspace),
    )
    contact_id = created.json()["id"]
    assert await consent_status(workspace, contact_id) == GRANTED
    answer = await http.post(
        f"{created.headers['location']}/consents",
        json={"purpose": "automations", "status": "withdrawn", "source": "preference_page"},
        headers=auth(workspace),
    )
    assert answer.status_code == 201, answer.text
    assert await consent_status(workspace, contact_id) == WITHDRAWN
    # The history keeps the change under the id the answer gave.
    recorded = await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT status FROM contacts.consent_events"
        " WHERE id = $1::uuid AND workspace_id = $2::uuid AND contact_id = $3::uuid"
        " AND purpose = 3",
        answer.json()["consent_event_id"],
        workspace.id,
        contact_id,
    )
    assert recorded == WITHDRAWN


GRANTED, WITHDRAWN = 1, 2  # services/contacts/domain/model.py ConsentStatus


async def consent_status(ws: Workspace, contact_id: str) -> object:
    """The current automations consent of a contact, as contacts stores it."""
    return await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT status FROM contacts.consents"
        " WHERE workspace_id = $1::uuid AND contact_id = $2::uuid AND purpose = 3",
        ws.id,
        contact_id,
    )


async def test_the_same_event_twice_is_accepted_once(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    email = new_email()
    created = await http.post("/v1/contacts", json={"email": email}, headers=auth(workspace))
    event = {
        "idempotency_key": unique("cart"),
        "contact": {"email": email},
        "type": "cart_updated",
        "data": {
            "cart_id": "cart-1",
            "items": [{"product_id": "p1", "quantity": 2}],
            "total": {"amount_minor": 2500, "currency": "EUR"},
        },
    }
    first = await http.post("/v1/events", json=event, headers=auth(workspace))
    assert first.status_code == 202, first.text
    second = await http.post("/v1/events", json=event, headers=auth(workspace))
    assert second.status_code == 202
    assert first.json()["duplicate"] is False
    assert second.json() == {**first.json(), "duplicate": True}
    assert first.json()["contact_id"] == created.json()["id"]


async def test_an_event_of_an_unknown_contact_is_404(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    answer = await http.post(
        "/v1/events",
        json={
            "idempotency_key": unique("k"),
            "contact": {"external_id": "nobody"},
            "type": "signed_up",
        },
        headers=auth(workspace),
    )
    assert (answer.status_code, answer.headers["content-type"]) == (404, PROBLEM)


async def test_routes_of_a_service_that_is_down_are_503(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    answer = await http.get("/v1/segments", headers=auth(workspace))
    assert (answer.status_code, answer.headers["content-type"]) == (503, PROBLEM)
    assert "segmentation" in answer.json()["detail"]


async def test_the_http_request_is_the_root_of_the_trace_through_grpc(
    http: httpx.AsyncClient, workspace: Workspace, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    answer = await http.post("/v1/contacts", json={"email": new_email()}, headers=auth(workspace))
    assert answer.status_code == 201

    def root_of_the_trace() -> ReadableSpan:
        # The HTTP span may end after the client has its answer: wait for it too.
        finished = spans.get_finished_spans()
        servers = [
            s for s in finished if s.kind is SpanKind.SERVER and s.name.endswith("CreateContact")
        ]
        assert len(servers) == 1, servers
        trace_id = servers[0].context.trace_id
        roots = [s for s in finished if s.context.trace_id == trace_id and s.parent is None]
        assert len(roots) == 1, roots
        return roots[0]

    root = await eventually(root_of_the_trace)
    assert root.kind is SpanKind.SERVER
    assert root.name.startswith("POST /v1/contacts"), root.name


async def test_healthz_names_what_is_down_and_each_services_dependencies(
    http: httpx.AsyncClient,
) -> None:
    answer = await http.get("/healthz")
    assert answer.status_code == 503
    report = answer.json()
    assert report["status"] == "degraded"
    checks = report["checks"]
    down = sorted(name for name, check in checks.items() if not check["ok"])
    assert down == ["campaigns", "delivery", "segmentation", "tracking", "triggers"]
    contacts = checks["contacts"]
    assert contacts["ok"] and contacts["latency_ms"] >= 0
    # As contacts itself sees them: it uses PostgreSQL and Kafka, not Redis or SMTP.
    assert contacts["dependencies"] == {"postgres": {"ok": True}, "kafka": {"ok": True}}
    assert checks["campaigns"]["detail"]
    assert "dependencies" not in checks["campaigns"]  # it did not answer


@pytest.fixture
async def stand_ins() -> AsyncIterator[dict[str, str]]:
    """gRPC servers that only answer grpc.health.v1 SERVING, for the services not built here."""
    servers = []
    addresses = {}
    for name in ("segmentation", "campaigns", "triggers", "delivery"):
        server = grpc.aio.server()
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        addresses[f"{name}_addr"] = f"127.0.0.1:{port}"
    yield addresses
    for server in servers:
        await server.stop(grace=None)


async def test_healthz_is_ok_when_everything_answers(
    contacts_service: RunningService,
    tracking_service: HttpService,
    stand_ins: dict[str, str],
) -> None:
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings

    settings = Settings(
        bind_host="127.0.0.1",
        http_port=free_port(),
        contacts_addr=contacts_service.address,
        tracking_url=tracking_service.base_url,
        **stand_ins,
    )
    async with (
        run_http(serve, settings) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url) as client,
    ):
        answer = await client.get("/healthz")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ok"
    checks = answer.json()["checks"]
    kafka = checks["tracking"]["dependencies"]["kafka"]
    assert kafka["ok"] and kafka["brokers"] >= 1
    assert kafka["kind"] == os.environ.get("NUDGE_KAFKA_KIND", "external")
    assert set(checks) == {
        "contacts",
        "segmentation",
        "campaigns",
        "triggers",
        "delivery",
        "tracking",
        "gateway",  # its own Redis: the console's sessions
    }
