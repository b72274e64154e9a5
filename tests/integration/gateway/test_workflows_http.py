"""/v1/workflows through the gateway, in front of the real WorkflowService (PostgreSQL, API keys
checked by contacts): the life of a workflow over HTTP and its refusals as problem+json."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningService, Workspace
from tests.integration.gateway.conftest import new_workspace, nowhere
from tests.integration.tracking.conftest import HttpService, run_http
from tests.integration.triggers.api_support import (
    WorkflowServer,
    insert_run,
    new_contact,
    workflow_server,
)
from tests.integration.triggers.test_api_workflows import cart_definition
from tests.support import free_port

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def workflows_api(contacts_service: RunningService) -> AsyncIterator[WorkflowServer]:
    async with workflow_server(contacts_service.address) as server:
        yield server


@pytest.fixture(scope="module")
async def gateway_with_workflows(
    contacts_service: RunningService, workflows_api: WorkflowServer
) -> AsyncIterator[HttpService]:
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings

    settings = Settings(
        bind_host="127.0.0.1",
        http_port=free_port(),
        contacts_addr=contacts_service.address,
        segmentation_addr=nowhere(),
        campaigns_addr=nowhere(),
        triggers_addr=workflows_api.address,
        delivery_addr=nowhere(),
        tracking_url=f"http://{nowhere()}",
        health_timeout_s=1.0,
    )
    async with run_http(serve, settings) as running:
        yield running


@pytest.fixture
async def http(
    gateway_with_workflows: HttpService, workspace: Workspace
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=gateway_with_workflows.base_url,
        headers={"Authorization": f"Bearer {workspace.api_key}"},
        timeout=15,
    ) as client:
        yield client


def problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = answer.json()
    return body


def fields(body: dict[str, Any]) -> set[str]:
    return {e["field"] for e in body.get("errors") or []}


async def test_a_workflow_is_drafted_published_paused_and_resumed_over_http(
    http: httpx.AsyncClient,
) -> None:
    created = await http.post("/v1/workflows", json={"definition": cart_definition()})
    assert created.status_code == 201, created.text
    workflow = created.json()
    assert created.headers["location"] == f"/v1/workflows/{workflow['id']}"
    assert (workflow["status"], workflow["version"], workflow["trigger"]) == (
        "draft",
        0,
        "cart_updated",
    )
    assert workflow["definition"]["steps"][0]["id"] == "wait_3h"

    edited = cart_definition("Edited")
    put = await http.put(
        f"/v1/workflows/{workflow['id']}", json={"definition": edited, "expected_revision": 1}
    )
    assert put.status_code == 200, put.text
    assert (put.json()["name"], put.json()["draft_revision"]) == ("Edited", 2)

    published = await http.post(
        f"/v1/workflows/{workflow['id']}/publish", json={"expected_revision": 2}
    )
    assert published.status_code == 200, published.text
    assert (published.json()["status"], published.json()["version"]) == ("active", 1)
    assert published.json()["draft_changed"] is False

    versions = (await http.get(f"/v1/workflows/{workflow['id']}/versions")).json()["versions"]
    assert [v["version"] for v in versions] == [1]
    assert versions[0]["published_by"].startswith("api_key:")

    exported = await http.get(f"/v1/workflows/{workflow['id']}/export", params={"version": 1})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/json")
    assert exported.json()["name"] == "Edited"
    assert exported.text == (await http.get(f"/v1/workflows/{workflow['id']}/export")).text

    paused = await http.post(f"/v1/workflows/{workflow['id']}/pause")
    assert paused.json()["status"] == "paused"
    problem(await http.post(f"/v1/workflows/{workflow['id']}/pause"), 409)
    resumed = await http.post(f"/v1/workflows/{workflow['id']}/resume")
    assert resumed.json()["status"] == "active"
    body = problem(await http.delete(f"/v1/workflows/{workflow['id']}"), 409)
    assert body["type"].endswith("failed-precondition")

    listed = (await http.get("/v1/workflows", params={"status": "active"})).json()
    assert [w["id"] for w in listed["workflows"]] == [workflow["id"]]


async def test_a_draft_is_deleted_over_http(http: httpx.AsyncClient) -> None:
    workflow = (await http.post("/v1/workflows", json={"definition": cart_definition()})).json()
    deleted = await http.delete(f"/v1/workflows/{workflow['id']}")
    assert deleted.status_code == 204
    problem(await http.get(f"/v1/workflows/{workflow['id']}"), 404)


async def test_templates_are_listed_and_a_workflow_is_made_from_one(
    http: httpx.AsyncClient,
) -> None:
    listed = await http.get("/v1/workflow-templates")
    assert listed.status_code == 200
    templates = {t["id"]: t for t in listed.json()["templates"]}
    assert templates["abandoned_cart"]["definition"]["trigger"]["event"] == "cart_updated"
    created = await http.post(
        "/v1/workflows", json={"template_id": "abandoned_cart", "name": "Carts"}
    )
    assert created.status_code == 201, created.text
    assert (created.json()["template_id"], created.json()["name"]) == ("abandoned_cart", "Carts")


async def test_an_invalid_definition_is_a_422_naming_each_field(http: httpx.AsyncClient) -> None:
    doc = cart_definition()
    doc["steps"][0]["duration"] = ["three hours"]
    doc["steps"][1]["id"] = "wait_3h"
    body = problem(await http.post("/v1/workflows", json={"definition": doc}), 422)
    named = fields(body)
    assert named and all(f.startswith("definition.steps[") for f in named), named
    # Wrong type, missing both sources, both sources, malformed JSON.
    body = problem(await http.post("/v1/workflows", json={"definition": "steps"}), 422)
    assert "definition" in fields(body)
    problem(await http.post("/v1/workflows", json={}), 422)
    problem(
        await http.post(
            "/v1/workflows", json={"definition": cart_definition(), "template_id": "welcome"}
        ),
        422,
    )
    problem(
        await http.post(
            "/v1/workflows",
            content=b'{"definition": ',
            headers={"content-type": "application/json"},
        ),
        400,
    )
    assert (await http.get("/v1/workflows")).json()["workflows"] == []


async def test_an_oversized_definition_is_refused_before_parsing(http: httpx.AsyncClient) -> None:
    doc = cart_definition()
    doc["description"] = "x" * 300_000
    problem(await http.post("/v1/workflows", json={"definition": doc}), 413)
    problem(await http.post("/v1/workflows/import", json=doc), 413)
    assert (await http.get("/v1/workflows")).json()["workflows"] == []


async def test_a_stale_or_replayed_change_is_a_409(http: httpx.AsyncClient) -> None:
    workflow = (await http.post("/v1/workflows", json={"definition": cart_definition()})).json()
    url = f"/v1/workflows/{workflow['id']}"
    assert (
        await http.put(url, json={"definition": cart_definition("A"), "expected_revision": 1})
    ).status_code == 200
    body = problem(
        await http.put(url, json={"definition": cart_definition("B"), "expected_revision": 1}),
        409,
    )
    assert body["type"].endswith("conflict")
    first = await http.post(f"{url}/publish", json={"expected_revision": 2})
    assert first.status_code == 200
    body = problem(await http.post(f"{url}/publish", json={"expected_revision": 2}), 409)
    assert body["type"].endswith("failed-precondition")
    assert len((await http.get(f"{url}/versions")).json()["versions"]) == 1


async def test_another_workspace_gets_404_for_a_workflow_and_its_runs(
    http: httpx.AsyncClient,
    gateway_with_workflows: HttpService,
    contacts_service: RunningService,
    workflows_api: WorkflowServer,
    workspace: Workspace,
) -> None:
    workflow = (await http.post("/v1/workflows", json={"definition": cart_definition()})).json()
    await http.post(f"/v1/workflows/{workflow['id']}/publish")
    run_id = await insert_run(
        workflows_api.pool,
        workspace.id,
        workflow["id"],
        started_at=datetime.now(UTC),
        position="reminder",
    )
    other = await new_workspace(contacts_service)
    others_contact = await new_contact(contacts_service.address, other)  # the workflow is unknown
    async with httpx.AsyncClient(
        base_url=gateway_with_workflows.base_url,
        headers={"Authorization": f"Bearer {other.api_key}"},
        timeout=15,
    ) as stranger:
        url = f"/v1/workflows/{workflow['id']}"
        for answer in (
            await stranger.get(url),
            await stranger.put(url, json={"definition": cart_definition()}),
            await stranger.delete(url),
            await stranger.post(f"{url}/publish"),
            await stranger.post(f"{url}/pause"),
            await stranger.get(f"{url}/versions"),
            await stranger.get(f"{url}/export"),
            await stranger.get(f"{url}/runs"),
            await stranger.get(f"{url}/stats"),
            await stranger.post(
                f"{url}/test-runs",
                json={"contact_id": others_contact, "recipient": "m@example.com"},
            ),
            await stranger.post(f"/v1/workflow-runs/{run_id}/cancel"),
            await stranger.post(
                "/v1/workflows/import",
                params={"workflow_id": workflow["id"]},
                json=cart_definition(),
            ),
        ):
            problem(answer, 404)
    assert (await http.get(url)).json()["status"] == "active"


async def test_import_and_validate_name_fields_as_the_body_names_them(
    http: httpx.AsyncClient,
) -> None:
    imported = await http.post("/v1/workflows/import", json=cart_definition("Imported"))
    assert imported.status_code == 201, imported.text
    workflow = imported.json()
    replaced = await http.post(
        "/v1/workflows/import",
        params={"workflow_id": workflow["id"]},
        json=cart_definition("Replaced"),
    )
    assert replaced.status_code == 200
    assert (replaced.json()["id"], replaced.json()["draft_revision"]) == (workflow["id"], 2)
    bad = cart_definition()
    bad["steps"][0]["duration"] = ["three hours"]
    body = problem(await http.post("/v1/workflows/import", json=bad), 422)
    assert fields(body) and all(f.startswith("steps[0]") for f in fields(body)), fields(body)

    checked = await http.post("/v1/workflows:validate", json={"definition": bad})
    assert checked.status_code == 200
    assert checked.json()["valid"] is False
    assert all(e["field"].startswith("definition.steps[0]") for e in checked.json()["errors"])
    fine = await http.post("/v1/workflows:validate", json={"definition": cart_definition()})
    assert fine.json()["valid"] is True and fine.json()["errors"] == []


async def test_runs_stats_test_runs_and_cancellation_over_http(
    http: httpx.AsyncClient, workflows_api: WorkflowServer, workspace: Workspace
) -> None:
    workflow = (await http.post("/v1/workflows", json={"definition": cart_definition()})).json()
    url = f"/v1/workflows/{workflow['id']}"
    await http.post(f"{url}/publish")
    await insert_run(
        workflows_api.pool,
        workspace.id,
        workflow["id"],
        started_at=datetime.now(UTC),
        position="reminder",
        steps=(("wait_3h", "done"),),
    )
    unknown = str(uuid.uuid4())
    body = problem(
        await http.post(
            f"{url}/test-runs", json={"contact_id": unknown, "recipient": "manager@example.com"}
        ),
        404,
    )
    assert body["detail"] == f"no contact {unknown!r} in this workspace"
    contact = await new_contact(workflows_api.contacts_address, workspace)
    test_run = await http.post(
        f"{url}/test-runs", json={"contact_id": contact, "recipient": "manager@example.com"}
    )
    assert test_run.status_code == 201, test_run.text
    assert test_run.json()["test"] is True and test_run.json()["state"] == "active"

    runs = (await http.get(f"{url}/runs", params={"state": "waiting"})).json()["runs"]
    assert [r["position"] for r in runs] == ["reminder"]
    stats = (await http.get(f"{url}/stats")).json()
    assert stats["runs_started"] == 1  # the test run is left out
    assert {s["step_id"]: s["waiting"] for s in stats["steps"]} == {"wait_3h": 0, "reminder": 1}

    cancelled = await http.post(f"/v1/workflow-runs/{test_run.json()['id']}/cancel")
    assert cancelled.status_code == 200
    assert (cancelled.json()["state"], cancelled.json()["end_reason"]) == (
        "cancelled",
        "cancelled",
    )
    problem(await http.post(f"/v1/workflow-runs/{test_run.json()['id']}/cancel"), 409)
    body = problem(
        await http.post(f"{url}/test-runs", json={"contact_id": "x", "recipient": "m@example.com"}),
        422,
    )
    assert fields(body) == {"contact_id"}
    body = problem(
        await http.post(
            f"{url}/test-runs", json={"contact_id": str(uuid.uuid4()), "recipient": "nobody"}
        ),
        422,
    )
    assert fields(body) == {"recipient"}
