"""The gateway's campaign content routes over HTTP, in front of the real campaigns,
segmentation and contacts services: content check, preview and test send, and every error a
problem+json (422 naming the field, 404 for another workspace's campaign, 409 for content
that cannot render, 429 past the test sends' limit)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.gateway.conftest import new_workspace
from tests.integration.gateway.test_segments_http import client, error_fields, problem
from tests.integration.tracking.conftest import HttpService, run_http
from tests.support import free_port


@pytest.fixture(scope="module")
async def content_gateway(contacts_service: RunningService) -> AsyncIterator[HttpService]:
    from services.campaigns.bootstrap import serve as serve_campaigns
    from services.campaigns.config import Settings as CampaignsSettings
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings
    from services.segmentation.bootstrap import serve as serve_segmentation
    from services.segmentation.config import Settings as SegmentationSettings

    seg_port, camp_port = free_port(), free_port()
    async with (
        run_in_process(
            serve_segmentation, SegmentationSettings(grpc_port=seg_port), seg_port
        ) as seg,
        run_in_process(
            serve_campaigns,
            CampaignsSettings(
                grpc_port=camp_port,
                segmentation_addr=seg.address,
                contacts_addr=contacts_service.address,
                test_sends_per_hour=2,
            ),
            camp_port,
        ) as campaigns,
        run_http(
            serve,
            Settings(
                bind_host="127.0.0.1",
                http_port=free_port(),
                contacts_addr=contacts_service.address,
                segmentation_addr=seg.address,
                campaigns_addr=campaigns.address,
            ),
        ) as gateway,
    ):
        yield gateway


@pytest.fixture
async def http(
    content_gateway: HttpService, workspace: Workspace
) -> AsyncIterator[httpx.AsyncClient]:
    async with client(content_gateway, workspace) as c:
        yield c


async def new_campaign(http: httpx.AsyncClient, body_text: str) -> str:
    answer = await http.post(
        "/v1/campaigns",
        json={
            "name": "Tea",
            "segment_ids": ["vip"],
            "subject": "{{ workspace.name }}: new tea",
            "body_text": body_text,
        },
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def test_check_preview_and_test_send_over_http(http: httpx.AsyncClient) -> None:
    campaign_id = await new_campaign(
        http, 'Hi {{ contact.first_name | default("there") }}\nFREE MONEY!!!'
    )
    check = await http.post(f"/v1/campaigns/{campaign_id}/content-check")
    assert check.status_code == 200, check.text
    assert {(w["code"], w["field"]) for w in check.json()["warnings"]} == {
        ("spam_like", "body_text")
    }

    preview = await http.post(f"/v1/campaigns/{campaign_id}/preview", json={})
    assert preview.status_code == 200, preview.text
    assert preview.json() == {
        "subject": "Test shop: new tea",
        "body_text": "Hi there\nFREE MONEY!!!",
        "body_html": "",
        "from": "Test shop <no-reply@nudge.localhost>",
        "reply_to": "",
    }

    sent = await http.post(
        f"/v1/campaigns/{campaign_id}/test-send", json={"email": "me@example.com"}
    )
    assert sent.status_code == 202, sent.text
    assert sent.json()["message_id"]


async def test_bad_requests_are_problems(
    http: httpx.AsyncClient, contacts_service: RunningService
) -> None:
    campaign_id = await new_campaign(http, "Hi")
    url = f"/v1/campaigns/{campaign_id}"
    assert error_fields(await http.post(f"{url}/test-send", json={"email": "nope"})) == ["email"]
    assert "email" in str(error_fields(await http.post(f"{url}/test-send", json={})))
    assert error_fields(
        await http.post(f"{url}/test-send", json={"email": "me@example.com", "contact_id": "x"})
    ) == ["contact_id"]
    wrong_type = await http.post(f"{url}/preview", json={"variant": "1"})
    assert wrong_type.status_code == 422
    unknown_field = await http.post(f"{url}/preview", json={"subject": "x"})
    assert unknown_field.status_code == 422
    assert error_fields(await http.post(f"{url}/preview", json={"variant": 3})) == ["variant"]
    problem(await http.post("/v1/campaigns/not-a-campaign/preview", json={}), 404)

    other = await new_workspace(contacts_service)
    async with httpx.AsyncClient(
        base_url=str(http.base_url), headers={"Authorization": f"Bearer {other.api_key}"}
    ) as stranger:
        problem(await stranger.post(f"{url}/content-check"), 404)
        problem(await stranger.post(f"{url}/preview", json={}), 404)


async def test_content_that_cannot_render_is_409_and_the_test_limit_429(
    http: httpx.AsyncClient,
) -> None:
    broken = await new_campaign(http, "{{ ''.__class__.__mro__ }}")
    problem(await http.post(f"/v1/campaigns/{broken}/preview", json={}), 409)

    campaign_id = await new_campaign(http, "Hi")
    for _ in range(2):  # this gateway's campaigns allow 2 test sends an hour
        answer = await http.post(
            f"/v1/campaigns/{campaign_id}/test-send", json={"email": "me@example.com"}
        )
        assert answer.status_code == 202, answer.text
    problem(
        await http.post(f"/v1/campaigns/{campaign_id}/test-send", json={"email": "me@example.com"}),
        429,
    )
