"""The gateway's campaign lifecycle routes in front of the real campaigns, segmentation,
contacts and delivery services: change a draft, send, pause, resume, cancel, transitions,
settings, and every refusal as problem+json."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.common.auth import parse_key_id
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.gateway.conftest import new_workspace
from tests.integration.tracking.conftest import HttpService, run_http
from tests.support import free_port

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def lifecycle_gateway(contacts_service: RunningService) -> AsyncIterator[HttpService]:
    from services.campaigns.bootstrap import serve as serve_campaigns
    from services.campaigns.config import Settings as CampaignsSettings
    from services.delivery.bootstrap import serve as serve_delivery
    from services.delivery.config import Settings as DeliverySettings
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings
    from services.segmentation.bootstrap import serve as serve_segmentation
    from services.segmentation.config import Settings as SegmentationSettings

    seg_port, campaigns_port, delivery_port = free_port(), free_port(), free_port()
    async with (
        run_in_process(
            serve_segmentation, SegmentationSettings(grpc_port=seg_port), seg_port
        ) as segmentation,
        run_in_process(
            serve_delivery, DeliverySettings(grpc_port=delivery_port), delivery_port
        ) as delivery,
        run_in_process(
            serve_campaigns,
            CampaignsSettings(
                grpc_port=campaigns_port,
                segmentation_addr=segmentation.address,
                delivery_addr=delivery.address,
                # No fan-out round during a test: these campaigns' audiences are empty, and
                # a round would make a campaign SENT between its send and its pause (a race
                # a loaded machine lost once). The routes' transitions are what is tested.
                fanout_poll_interval_s=3600,
            ),
            campaigns_port,
        ) as campaigns,
        run_http(
            serve,
            Settings(
                bind_host="127.0.0.1",
                http_port=free_port(),
                contacts_addr=contacts_service.address,
                segmentation_addr=segmentation.address,
                campaigns_addr=campaigns.address,
                delivery_addr=delivery.address,
            ),
        ) as gateway,
    ):
        yield gateway


def client(gateway: HttpService, ws: Workspace) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gateway.base_url,
        headers={"Authorization": f"Bearer {ws.api_key}"},
        timeout=30,
    )


@pytest.fixture
async def http(
    lifecycle_gateway: HttpService, workspace: Workspace
) -> AsyncIterator[httpx.AsyncClient]:
    async with client(lifecycle_gateway, workspace) as c:
        yield c


async def create(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"name": "Spring", "segment_ids": ["vip"], "subject": "Hi", "body_text": "Hello"}
    body.update(fields)
    answer = await http.post("/v1/campaigns", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()  # type: ignore[no-any-return]


def problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    return answer.json()  # type: ignore[no-any-return]


async def test_every_field_goes_through_create_patch_and_get(http: httpx.AsyncClient) -> None:
    c = await create(
        http,
        tags_any=["newsletter"],
        reply_to="anna@example.com",
        purpose="marketing",
        cap_action="defer",
        time_zone="Europe/Berlin",
        holdout_percent=10,
        ab_test={"subjects": ["A", "B"], "sample_percent": 20, "decide_after_s": 3600.0},
    )
    assert (c["status"], c["purpose"], c["cap_action"], c["holdout_percent"]) == (
        "draft",
        "marketing",
        "defer",
        10,
    )
    assert c["ab_test"]["winner"] == -1 and c["ab_test"]["metric"] == "unique_human_clicks"
    patched = await http.patch(
        f"/v1/campaigns/{c['id']}",
        json={"subject": "New", "ab_test": None, "body_markdown": "**Hi**", "body_text": ""},
    )
    assert patched.status_code == 200, patched.text
    p = patched.json()
    assert (p["subject"], p["ab_test"], p["body_markdown"], p["holdout_percent"]) == (
        "New",
        None,
        "**Hi**",
        10,
    )
    got = await http.get(f"/v1/campaigns/{c['id']}")
    assert got.json() == p
    # Tags alone are an audience, Markdown alone a body.
    answer = await http.post(
        "/v1/campaigns",
        json={"name": "Tagged", "tags_any": ["vip"], "subject": "Hi", "body_markdown": "# Hi"},
    )
    assert answer.status_code == 201, answer.text
    assert (answer.json()["segment_ids"], answer.json()["body_text"]) == ([], "")
    both = await http.post(
        "/v1/campaigns",
        json={"name": "n", "subject": "s", "body_markdown": "# Hi", "body_text": "Hi"},
    )
    assert [e["field"] for e in problem(both, 422)["errors"]] == ["segment_ids", "body_text"]


async def test_bad_fields_are_422_with_the_json_names(http: httpx.AsyncClient) -> None:
    c = await create(http)
    # The gateway's own schema (the zone is an enum of the document)...
    answer = await http.patch(f"/v1/campaigns/{c['id']}", json={"time_zone": "Nowhere/City"})
    assert [e["field"] for e in problem(answer, 422)["errors"]] == ["time_zone"]
    # ...and the service's checks, named as the JSON names them.
    answer = await http.patch(
        f"/v1/campaigns/{c['id']}",
        json={"exclude_segment_ids": ["vip", "nope"], "tags_any": ["a", "a"]},
    )
    fields = [e["field"] for e in problem(answer, 422)["errors"]]
    assert fields == ["exclude_segment_ids[0]", "tags_any[1]", "exclude_segment_ids[1]"]
    answer = await http.patch(f"/v1/campaigns/{c['id']}", json={"name": None})
    problem(answer, 422)
    # Wrong types and oversized values never reach the service.
    for patch, field in [
        ({"holdout_percent": "10"}, "holdout_percent"),
        ({"local_time": "yes"}, "local_time"),
        ({"body_html": "x" * 50_001}, "body_html"),
        ({"reply_to": "not-an-address"}, "reply_to"),
    ]:
        answer = await http.patch(f"/v1/campaigns/{c['id']}", json=patch)
        assert field in [e["field"] for e in problem(answer, 422)["errors"]], patch
    answer = await http.post(f"/v1/campaigns/{c['id']}/pause", json={"note": "x" * 501})
    assert [e["field"] for e in problem(answer, 422)["errors"]] == ["note"]
    answer = await http.patch(f"/v1/campaigns/{c['id']}", json={})
    problem(answer, 422)
    answer = await http.post(
        "/v1/campaigns",
        json={
            "name": "n",
            "segment_ids": ["vip"],
            "subject": "s",
            "body_text": "t",
            "ab_test": {"subjects": ["A", "B"], "sample_percent": 1, "decide_after_s": 60},
        },
    )
    fields = [e["field"] for e in problem(answer, 422)["errors"]]
    assert "body.ab_test.sample_percent" in fields or "ab_test.sample_percent" in fields


async def test_send_pause_resume_cancel_and_their_refusals(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    c = await create(http)
    base = f"/v1/campaigns/{c['id']}"
    sent = await http.post(f"{base}/send")
    assert sent.status_code == 200, sent.text
    assert sent.json()["status"] == "sending"
    replay = problem(await http.post(f"{base}/send"), 409)
    assert replay["detail"] == "only a draft can be sent; this campaign is sending"
    problem(await http.patch(base, json={"subject": "late"}), 409)
    paused = await http.post(f"{base}/pause", json={"note": "typo"})
    assert paused.json()["status"] == "paused" and paused.json()["status_reason"] == "typo"
    assert (await http.post(f"{base}/resume")).json()["status"] == "sending"
    assert (await http.post(f"{base}/cancel", json={"note": "stop"})).json()["status"] == (
        "cancelled"
    )
    refused = problem(await http.post(f"{base}/resume"), 409)
    assert refused["detail"] == "cancelled campaigns cannot be resumed"
    assert refused["type"].endswith("failed-precondition")
    problem(await http.post(f"{base}/pause"), 409)
    problem(await http.post(f"{base}/cancel"), 409)
    transitions = (await http.get(f"{base}/transitions")).json()["transitions"]
    actor = f"api_key:{parse_key_id(workspace.api_key)}"
    assert [(t["from_status"], t["to_status"], t["actor"], t["note"]) for t in transitions] == [
        ("draft", "sending", actor, ""),
        ("sending", "paused", actor, "typo"),
        ("paused", "sending", actor, ""),
        ("sending", "cancelled", actor, "stop"),
    ]


async def test_a_send_in_the_past_is_422_and_a_future_one_schedules(
    http: httpx.AsyncClient,
) -> None:
    c = await create(http)
    base = f"/v1/campaigns/{c['id']}"
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    answer = problem(await http.post(f"{base}/send", json={"send_at": past}), 422)
    assert [e["field"] for e in answer["errors"]] == ["send_at"]
    future = datetime.now(UTC) + timedelta(days=1)
    scheduled = await http.post(f"{base}/send", json={"send_at": future.isoformat()})
    assert scheduled.status_code == 200, scheduled.text
    body = scheduled.json()
    assert body["status"] == "scheduled"
    assert abs(datetime.fromisoformat(body["scheduled_at"]) - future) < timedelta(seconds=1)
    problem(await http.post(f"{base}/send", json={"confirm_not_consented": -1}), 422)


async def test_a_suspended_workspace_gets_409_with_the_reason(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    c = await create(http)
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        await conn.execute(
            "INSERT INTO delivery.guard_suspensions (workspace_id, rule, reason, figures,"
            " suspended_at) VALUES ($1, 'hard_bounce_rate', 'hard bounce rate 7.00 %',"
            " '{}'::jsonb, now())",
            uuid.UUID(workspace.id),
        )
    finally:
        await conn.close()
    answer = problem(await http.post(f"/v1/campaigns/{c['id']}/send"), 409)
    assert answer["detail"] == (
        "sending is suspended by the anti-spam guard: hard bounce rate 7.00 %"
    )
    assert (await http.get(f"/v1/campaigns/{c['id']}")).json()["status"] == "draft"


async def test_another_workspaces_campaign_is_404_on_every_route(
    http: httpx.AsyncClient, lifecycle_gateway: HttpService, contacts_service: RunningService
) -> None:
    c = await create(http)
    other = await new_workspace(contacts_service)
    async with client(lifecycle_gateway, other) as theirs:
        base = f"/v1/campaigns/{c['id']}"
        for answer in [
            await theirs.patch(base, json={"subject": "x"}),
            await theirs.post(f"{base}/send"),
            await theirs.post(f"{base}/pause"),
            await theirs.post(f"{base}/resume"),
            await theirs.post(f"{base}/cancel"),
            await theirs.get(f"{base}/transitions"),
        ]:
            problem(answer, 404)
        assert (await theirs.get("/v1/campaign-settings")).json()["time_zone"] == "UTC"
    assert (await http.get(f"/v1/campaigns/{c['id']}")).json()["status"] == "draft"


async def test_settings_read_and_patch(http: httpx.AsyncClient) -> None:
    got = await http.get("/v1/campaign-settings")
    assert got.json() == {
        "frequency_cap_messages": 1,
        "frequency_cap_days": 30,
        "time_zone": "UTC",
        "default_reply_to": "",
    }
    patched = await http.patch("/v1/campaign-settings", json={"frequency_cap_days": 7})
    assert patched.json() == {
        "frequency_cap_messages": 1,
        "frequency_cap_days": 7,
        "time_zone": "UTC",
        "default_reply_to": "",
    }
    replies = await http.patch(
        "/v1/campaign-settings", json={"default_reply_to": "replies@shop.example"}
    )
    assert replies.json()["default_reply_to"] == "replies@shop.example"
    assert replies.json()["frequency_cap_days"] == 7
    answer = problem(
        await http.patch("/v1/campaign-settings", json={"default_reply_to": "not-an-address"}),
        422,
    )
    assert [e["field"] for e in answer["errors"]] == ["default_reply_to"]
    answer = problem(
        await http.patch("/v1/campaign-settings", json={"time_zone": "Mars/Base"}), 422
    )
    assert [e["field"] for e in answer["errors"]] == ["time_zone"]
    problem(await http.patch("/v1/campaign-settings", json={"frequency_cap_messages": 0}), 422)
    problem(await http.patch("/v1/campaign-settings", json={}), 422)
    kept = (await http.get("/v1/campaign-settings")).json()
    assert (kept["frequency_cap_days"], kept["default_reply_to"]) == (7, "replies@shop.example")
