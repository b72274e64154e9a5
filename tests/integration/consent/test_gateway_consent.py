"""The consent API over the gateway's HTTP: history, suppressions, workspace settings and
eligibility counts, with problem+json for bad input, each scoped to the key's workspace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.integration.conftest import RunningService, Workspace
from tests.integration.gateway.conftest import gateway, new_workspace
from tests.integration.tracking.conftest import HttpService, spans
from tests.support import unique

__all__ = ["gateway", "spans"]  # fixtures shared with the gateway tests


@pytest.fixture
async def api(gateway: HttpService, workspace: Workspace) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=gateway.base_url,
        headers={"authorization": f"Bearer {workspace.api_key}"},
        timeout=10,
    ) as client:
        yield client


def fields(answer: httpx.Response) -> list[str]:
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.text
    return [e["field"] for e in answer.json().get("errors") or []]


async def new_contact(api: httpx.AsyncClient, *consents: str) -> str:
    answer = await api.post(
        "/v1/contacts",
        json={"email": f"{unique('g')}@example.com", "consents": list(consents)},
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def test_consent_recorded_with_its_proof_reads_back_in_the_history(
    api: httpx.AsyncClient,
) -> None:
    contact_id = await new_contact(api)
    given = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    recorded = await api.post(
        f"/v1/contacts/{contact_id}/consents",
        json={
            "purpose": "targeted_messages",
            "status": "granted",
            "source": "form",
            "wording": "Yes, personal offers",
            "actor": "checkout",
            "ip": "198.51.100.4",
            "user_agent": "Mozilla/5.0 shop",
            "recorded_at": given.isoformat(),
        },
    )
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["pending_confirmation"] is False
    history = await api.get(f"/v1/contacts/{contact_id}/consents")
    assert history.status_code == 200
    body = history.json()
    record = body["records"][0]
    assert record["id"] == recorded.json()["consent_event_id"]
    assert (record["purpose"], record["status"], record["source"], record["actor"]) == (
        "targeted_messages",
        "granted",
        "form",
        "checkout",
    )
    assert (record["ip"], record["user_agent"]) == ("198.51.100.4", "Mozilla/5.0 shop")
    assert datetime.fromisoformat(record["recorded_at"]) == given
    states = {c["purpose"]: c["state"] for c in body["current"]}
    assert states == {
        "marketing": "never_asked",
        "targeted_messages": "granted",
        "automations": "never_asked",
    }

    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for bad, field in (
        ({"ip": "999.1.1.1"}, "ip"),
        ({"recorded_at": future}, "recorded_at"),
        ({"user_agent": "x" * 513}, "user_agent"),
    ):
        refused = await api.post(
            f"/v1/contacts/{contact_id}/consents",
            json={"purpose": "marketing", "status": "granted", **bad},
        )
        assert refused.status_code == 422, refused.text
        assert any(f.endswith(field) for f in fields(refused)), refused.text
    again = await api.get(f"/v1/contacts/{contact_id}/consents")
    assert len(again.json()["records"]) == 1


async def test_suppressions_over_http(api: httpx.AsyncClient) -> None:
    email = f"{unique('h')}@example.com"
    added = await api.post("/v1/suppressions", json={"email": email})
    assert added.status_code == 201 and added.json()["reason"] == "manual"
    again = await api.post("/v1/suppressions", json={"email": email})
    assert again.status_code == 200
    listed = await api.get("/v1/suppressions", params={"reason": "manual"})
    assert [s["email"] for s in listed.json()["suppressions"]] == [email]
    assert (
        await api.post("/v1/suppressions", json={"email": "x@y.z", "reason": "erased"})
    ).status_code == 422
    assert (await api.post("/v1/suppressions", json={"email": "no-at"})).status_code == 422
    assert (await api.delete(f"/v1/suppressions/{email}")).status_code == 204
    assert (await api.delete(f"/v1/suppressions/{email}")).status_code == 404
    bounced = f"{unique('hb')}@example.com"
    await api.post("/v1/suppressions", json={"email": bounced, "reason": "hard_bounce"})
    refused = await api.delete(f"/v1/suppressions/{bounced}")
    assert refused.status_code == 409


async def test_workspace_settings_over_http_are_the_keys_own(
    api: httpx.AsyncClient, gateway: HttpService, contacts_service: RunningService
) -> None:
    patched = await api.patch("/v1/workspace/settings", json={"double_opt_in": True})
    assert patched.status_code == 200, patched.text
    assert patched.json()["double_opt_in"] is True
    read = await api.get("/v1/workspace/settings")
    assert read.json() == patched.json()
    for bad in ({"name": ""}, {"double_opt_in": None}, {"slug": "x"}, {"double_opt_in": "yes"}):
        refused = await api.patch("/v1/workspace/settings", json=bad)
        assert refused.status_code == 422, (bad, refused.text)
    other = await new_workspace(contacts_service)
    async with httpx.AsyncClient(
        base_url=gateway.base_url, headers={"authorization": f"Bearer {other.api_key}"}
    ) as theirs:
        assert (await theirs.get("/v1/workspace/settings")).json()["double_opt_in"] is False


async def test_eligibility_count_over_http(api: httpx.AsyncClient) -> None:
    await api.patch("/v1/workspace/settings", json={"consent_required_for_campaigns": True})
    tag = "seed-001"
    for consents in (["marketing"], []):
        contact_id = await new_contact(api, *consents)
        tagged = await api.post(f"/v1/contacts/{contact_id}/tags", json={"add": [tag]})
        assert tagged.status_code == 200, tagged.text
    counted = await api.post(
        "/v1/eligibility:count", json={"purpose": "marketing", "filter": {"tags_all": [tag]}}
    )
    assert counted.status_code == 200, counted.text
    assert counted.json() == {
        "total": 2,
        "eligible": 1,
        "ineligible": {
            "no_consent": 1,
            "consent_withdrawn": 0,
            "consent_pending": 0,
            "suppressed": 0,
        },
    }
    refused = await api.post("/v1/eligibility:count", json={"purpose": "nope"})
    assert refused.status_code == 422
    refused = await api.post(
        "/v1/eligibility:count",
        json={"purpose": "marketing", "filter": {}, "segment_id": "vip"},
    )
    assert refused.status_code == 422
