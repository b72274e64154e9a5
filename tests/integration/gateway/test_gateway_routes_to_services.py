"""The gateway's segment and campaign routes in front of the real segmentation and
campaigns services (started in-process here), as a manager's frontend uses them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.tracking.conftest import HttpService, run_http
from tests.support import free_port


@pytest.fixture(scope="module")
async def full_gateway(contacts_service: RunningService) -> AsyncIterator[HttpService]:
    from services.campaigns.bootstrap import serve as serve_campaigns
    from services.campaigns.config import Settings as CampaignsSettings
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings
    from services.segmentation.bootstrap import serve as serve_segmentation
    from services.segmentation.config import Settings as SegmentationSettings

    segmentation_port, campaigns_port = free_port(), free_port()
    async with (
        run_in_process(
            serve_segmentation, SegmentationSettings(grpc_port=segmentation_port), segmentation_port
        ) as segmentation,
        run_in_process(
            serve_campaigns,
            CampaignsSettings(
                grpc_port=campaigns_port, segmentation_addr=f"127.0.0.1:{segmentation_port}"
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
            ),
        ) as gateway,
    ):
        yield gateway


@pytest.fixture
async def http(full_gateway: HttpService, workspace: Workspace) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=full_gateway.base_url,
        headers={"Authorization": f"Bearer {workspace.api_key}"},
        timeout=15,
    ) as client:
        yield client


async def test_segments_are_listed_and_counted(http: httpx.AsyncClient) -> None:
    listed = await http.get("/v1/segments")
    assert listed.status_code == 200, listed.text
    ids = {s["id"] for s in listed.json()["segments"]}
    assert {"vip", "loyal", "lost"} <= ids
    counted = await http.get("/v1/segments/vip/count")
    assert counted.status_code == 200, counted.text
    assert counted.json()["segment_id"] == "vip"
    assert counted.json()["count"] == 0
    missing = await http.get("/v1/segments/no-such-segment/count")
    assert missing.status_code == 404


async def test_a_campaign_is_created_read_and_listed(http: httpx.AsyncClient) -> None:
    created = await http.post(
        "/v1/campaigns",
        json={
            "name": "Spring sale",
            "segment_ids": ["vip"],
            "subject": "Spring at the shop",
            "body_text": "Hello {{ contact.first_name }}",
        },
    )
    assert created.status_code == 201, created.text
    campaign = created.json()
    assert campaign["status"] == "draft"
    again = await http.get(created.headers["location"])
    assert again.json() == campaign
    listed = await http.get("/v1/campaigns", params={"page_size": 10})
    assert campaign["id"] in {c["id"] for c in listed.json()["campaigns"]}


async def test_campaign_field_errors_come_back_as_422(http: httpx.AsyncClient) -> None:
    answer = await http.post(
        "/v1/campaigns",
        # Both pass the gateway's schema (a line break in the subject would not): the service
        # refuses them, and its field errors come back.
        json={"name": "x", "segment_ids": ["vip", "vip"], "subject": "Hi {{", "body_text": "t"},
    )
    assert answer.status_code == 422, answer.text
    fields = {e["field"] for e in answer.json()["errors"]}
    assert {"segment_ids[1]", "subject"} <= fields
