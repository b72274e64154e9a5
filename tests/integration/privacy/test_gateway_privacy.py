"""The gateway's privacy routes in front of the real contacts service (whose peers are
silent here): the export is a JSON download, erasure is ``POST /v1/contacts/{id}/erasure``,
and errors are problem+json."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration.conftest import RunningService, Workspace
from tests.integration.privacy.conftest import new_workspace
from tests.integration.tracking.conftest import HttpService, run_http
from tests.support import free_port


@pytest.fixture(scope="module")
async def gateway(privacy_contacts: RunningService, silent_peer: str) -> AsyncIterator[HttpService]:
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings

    settings = Settings(
        bind_host="127.0.0.1",
        http_port=free_port(),
        contacts_addr=privacy_contacts.address,
        segmentation_addr=silent_peer,
        campaigns_addr=silent_peer,
        triggers_addr=silent_peer,
        delivery_addr=silent_peer,
        tracking_url=f"http://127.0.0.1:{free_port()}",
        health_timeout_s=1.0,
    )
    async with run_http(serve, settings) as running:
        yield running


def client(gateway: HttpService, ws: Workspace | None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {ws.api_key}"} if ws else {}
    return httpx.AsyncClient(base_url=gateway.base_url, headers=headers, timeout=30)


async def create(http: httpx.AsyncClient, email: str) -> str:
    answer = await http.post("/v1/contacts", json={"email": email, "first_name": "Ada"})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def test_the_export_is_a_json_download_naming_the_services_that_did_not_answer(
    gateway: HttpService, ws: Workspace
) -> None:
    email = f"ada-{secrets.token_hex(5)}@example.org"
    async with client(gateway, ws) as http:
        contact_id = await create(http, email)
        answer = await http.get(f"/v1/contacts/{contact_id}/export")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert (
        answer.headers["content-disposition"] == f'attachment; filename="contact-{contact_id}.json"'
    )
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["contact_id"] == contact_id
    assert body["complete"] is False
    assert sorted(body["incomplete"]) == ["campaigns", "delivery", "segmentation", "triggers"]
    assert body["services"]["contacts"]["contact"]["email"] == email


async def test_erase_removes_the_contact_and_answers_the_same_when_repeated(
    gateway: HttpService, ws: Workspace
) -> None:
    async with client(gateway, ws) as http:
        contact_id = await create(http, f"bo-{secrets.token_hex(5)}@example.org")
        first = await http.post(f"/v1/contacts/{contact_id}/erasure")
        again = await http.post(f"/v1/contacts/{contact_id}/erasure")
        gone = await http.get(f"/v1/contacts/{contact_id}")
        export = await http.get(f"/v1/contacts/{contact_id}/export")
    assert first.status_code == 200, first.text
    assert first.json()["contact_id"] == contact_id
    assert again.json() == first.json()
    assert gone.status_code == 404
    assert set(export.json()["services"]["contacts"]) == {"erasure"}


async def test_privacy_routes_answer_problems_for_unknown_foreign_and_unauthenticated_calls(
    gateway: HttpService, ws: Workspace, privacy_contacts: RunningService
) -> None:
    stranger = await new_workspace(privacy_contacts)
    async with client(gateway, ws) as http:
        contact_id = await create(http, f"cy-{secrets.token_hex(5)}@example.org")
    cases = [
        (stranger, "GET", f"/v1/contacts/{contact_id}/export", 404),
        (stranger, "POST", f"/v1/contacts/{contact_id}/erasure", 404),
        (ws, "POST", f"/v1/contacts/{uuid.uuid4()}/erasure", 404),
        (ws, "GET", f"/v1/contacts/{uuid.uuid4()}/export", 404),
        (ws, "POST", f"/v1/contacts/{'x' * 65}/erasure", 422),
        (None, "POST", f"/v1/contacts/{contact_id}/erasure", 401),
        (None, "GET", f"/v1/contacts/{contact_id}/export", 401),
    ]
    for caller, method, path, status in cases:
        async with client(gateway, caller) as http:
            answer = await http.request(method, path)
        assert answer.status_code == status, (method, path, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    # The stranger's attempt changed nothing.
    async with client(gateway, ws) as http:
        assert (await http.get(f"/v1/contacts/{contact_id}")).status_code == 200
