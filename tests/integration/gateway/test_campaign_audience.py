"""GET /v1/campaigns/{campaign_id}/audience over HTTP, in front of the real campaigns,
segmentation, contacts and delivery services: a manager sees who a campaign would reach and
why others are left out; another workspace's campaign is not found."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.gateway.conftest import new_workspace
from tests.integration.tracking.conftest import HttpService, run_http
from tests.support import eventually, free_port

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
async def audience_gateway(contacts_service: RunningService) -> AsyncIterator[HttpService]:
    from services.campaigns.bootstrap import serve as serve_campaigns
    from services.campaigns.config import Settings as CampaignsSettings
    from services.delivery.bootstrap import serve as serve_delivery
    from services.delivery.config import Settings as DeliverySettings
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings
    from services.segmentation.bootstrap import serve as serve_segmentation
    from services.segmentation.config import Settings as SegmentationSettings

    segmentation_port, campaigns_port, delivery_port = free_port(), free_port(), free_port()
    async with (
        run_in_process(
            serve_segmentation, SegmentationSettings(grpc_port=segmentation_port), segmentation_port
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


def client(gateway: HttpService, api_key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gateway.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )


async def test_a_manager_previews_who_a_campaign_reaches(
    audience_gateway: HttpService, workspace: Workspace, contacts_service: RunningService
) -> None:
    async with client(audience_gateway, workspace.api_key) as http:
        for n in range(4):
            made = await http.post(
                "/v1/contacts",
                json={"email": f"vip{n}@example.com", "first_name": "Ada", "vip": n < 3},
            )
            assert made.status_code == 201, made.text
        suppressed = await http.post("/v1/suppressions", json={"email": "vip2@example.com"})
        assert suppressed.status_code == 201, suppressed.text

        async def followed() -> bool:
            counted = await http.get("/v1/segments/vip/count")
            return bool(counted.status_code == 200 and counted.json()["count"] == 3)

        await eventually(followed, timeout=60, interval=0.2)
        created = await http.post(
            "/v1/campaigns",
            json={
                "name": "VIP evening",
                "segment_ids": ["vip"],
                "subject": "For you",
                "body_text": "Hello",
            },
        )
        assert created.status_code == 201, created.text
        campaign_id = created.json()["id"]

        before = datetime.now(UTC)
        answer = await http.get(f"/v1/campaigns/{campaign_id}/audience")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        as_of = datetime.fromisoformat(body.pop("as_of"))
        assert before <= as_of <= datetime.now(UTC)
        # A new workspace mails contacts who never answered (consent is not required), so the
        # two VIPs not suppressed would be mailed without consent: sending must confirm that.
        assert body == {
            "members": 3,
            "eligible": 2,
            "excluded": [{"reason": "suppressed", "count": 1}],
            "sources": [{"source": "vip", "members": 3, "also_in_other_sources": 0}],
            "only_consented": False,
            "not_consented": 2,
            "confirmation_required": True,
            "sending_suspended": False,
            "suspended_reason": "",
        }

    other = await new_workspace(contacts_service)
    async with client(audience_gateway, other.api_key) as http:
        for path in (
            f"/v1/campaigns/{campaign_id}/audience",  # not this workspace's
            "/v1/campaigns/00000000-0000-4000-8000-000000000000/audience",
            "/v1/campaigns/not-an-id/audience",
        ):
            missing = await http.get(path)
            assert missing.status_code == 404, (path, missing.text)
            assert missing.headers["content-type"].startswith(PROBLEM)
        too_long = await http.get(f"/v1/campaigns/{'a' * 65}/audience")
        assert too_long.status_code == 422
        assert too_long.headers["content-type"].startswith(PROBLEM)
    async with client(audience_gateway, "nk_0000000000000000_" + "a" * 43) as http:
        refused = await http.get(f"/v1/campaigns/{campaign_id}/audience")
        assert refused.status_code == 401
