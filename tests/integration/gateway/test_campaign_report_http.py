"""The report's HTTP routes in front of the real campaigns, segmentation and contacts
services: the report as JSON, the call list in pages and as a streamed CSV that spreadsheets
cannot run formulas from, and problem+json for what is wrong or not the caller's."""

from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from services.campaigns.adapters.postgres import SCHEMA
from services.common.db import create_pool
from services.gateway.entrypoints import campaign_report
from tests.integration.campaigns.report_support import Row, insert_campaign
from tests.integration.campaigns.test_report_call_list import engage, new_contact
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.gateway.conftest import new_workspace
from tests.integration.tracking.conftest import HttpService, run_http
from tests.support import free_port

PROBLEM = "application/problem+json"
T = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


@pytest.fixture(scope="module")
async def report_gateway(contacts_service: RunningService) -> AsyncIterator[HttpService]:
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
            CampaignsSettings(grpc_port=camp_port, segmentation_addr=seg.address),
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


@pytest.fixture(scope="module")
async def pool(report_gateway: HttpService) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(os.environ["DATABASE_URL"], SCHEMA)
    yield pool
    await pool.close()


def client(gateway: HttpService, ws: Workspace) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gateway.base_url, headers={"Authorization": f"Bearer {ws.api_key}"}, timeout=15
    )


def problem(answer: httpx.Response, status: int) -> dict[str, object]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    body: dict[str, object] = answer.json()
    assert body["status"] == status
    return body


async def seeded_campaign(
    pool: asyncpg.Pool, contacts: RunningService, ws: Workspace
) -> tuple[str, dict[str, str]]:
    """Three engaged contacts (two with names a spreadsheet would run), one who did not
    engage."""
    people = {
        "=HYPERLINK(evil)": await new_contact(contacts, ws, "=HYPERLINK(evil)", "-2+3"),
        "Ada": await new_contact(contacts, ws, "Ada", "Lovelace"),
        "@cmd": await new_contact(contacts, ws, "@cmd", "Plain"),
        "Quiet": await new_contact(contacts, ws, "Quiet", "One"),
    }
    campaign_id = await insert_campaign(
        pool, ws.id, [Row(c) for c in people.values()], started_at=T
    )
    for name in ("=HYPERLINK(evil)", "Ada", "@cmd"):
        await engage(pool, campaign_id, people[name], opened=T, clicked=T, clicks=1)
    return campaign_id, people


async def test_the_report_reads_as_json_and_is_not_found_elsewhere(
    report_gateway: HttpService,
    pool: asyncpg.Pool,
    contacts_service: RunningService,
    workspace: Workspace,
) -> None:
    campaign_id, _ = await seeded_campaign(pool, contacts_service, workspace)
    async with client(report_gateway, workspace) as http:
        answer = await http.get(f"/v1/campaigns/{campaign_id}/report")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["campaign_id"], body["status"], body["audience"]) == (
            campaign_id,
            "sending",
            4,
        )
        assert body["sent"] == 4 and body["final"] is False and body["holdout"] is None
        assert body["opened"]["unique_human"] == 3
        assert body["orders"] == {"orders": 0, "revenue": []}
        problem(await http.get(f"/v1/campaigns/{uuid.uuid4()}/report"), 404)
        problem(await http.get("/v1/campaigns/not-a-campaign/report"), 404)
    other = await new_workspace(contacts_service)
    async with client(report_gateway, other) as http:
        problem(await http.get(f"/v1/campaigns/{campaign_id}/report"), 404)
        problem(await http.get(f"/v1/campaigns/{campaign_id}/engaged-non-buyers"), 404)
        problem(await http.get(f"/v1/campaigns/{campaign_id}/engaged-non-buyers.csv"), 404)
    async with httpx.AsyncClient(base_url=report_gateway.base_url) as anonymous:
        problem(await anonymous.get(f"/v1/campaigns/{campaign_id}/report"), 401)


async def test_the_call_list_pages_and_refuses_bad_pages(
    report_gateway: HttpService,
    pool: asyncpg.Pool,
    contacts_service: RunningService,
    workspace: Workspace,
) -> None:
    campaign_id, people = await seeded_campaign(pool, contacts_service, workspace)
    url = f"/v1/campaigns/{campaign_id}/engaged-non-buyers"
    async with client(report_gateway, workspace) as http:
        seen: list[str] = []
        token = ""
        while True:
            answer = await http.get(url, params={"page_size": 2, "page_token": token})
            assert answer.status_code == 200, answer.text
            seen += [c["contact_id"] for c in answer.json()["contacts"]]
            token = answer.json()["next_page_token"]
            if not token:
                break
        assert seen == sorted(people[n] for n in ("=HYPERLINK(evil)", "Ada", "@cmd"))
        for params in ({"page_size": 0}, {"page_size": 5001}, {"page_size": "many"}):
            problem(await http.get(url, params=params), 422)
        body = problem(await http.get(url, params={"page_token": "bogus"}), 422)
        assert [e["field"] for e in body["errors"]] == ["query.page_token"]  # type: ignore[attr-defined]


async def test_the_csv_export_streams_every_page_and_defuses_formulas(
    report_gateway: HttpService,
    pool: asyncpg.Pool,
    contacts_service: RunningService,
    workspace: Workspace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    campaign_id, people = await seeded_campaign(pool, contacts_service, workspace)
    # Pages of 2, so the 3 contacts need two calls to the campaigns service.
    monkeypatch.setattr(campaign_report, "CSV_PAGE_SIZE", 2)
    async with client(report_gateway, workspace) as http:
        answer = await http.get(f"/v1/campaigns/{campaign_id}/engaged-non-buyers.csv")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == list(campaign_report.CSV_COLUMNS)
    by_id = {r[0]: r for r in rows[1:]}
    assert sorted(by_id) == sorted(people[n] for n in ("=HYPERLINK(evil)", "Ada", "@cmd"))
    evil = by_id[people["=HYPERLINK(evil)"]]
    assert (evil[2], evil[3]) == ("'=HYPERLINK(evil)", "'-2+3")
    assert by_id[people["@cmd"]][2] == "'@cmd"
    ada = by_id[people["Ada"]]
    assert (ada[2], ada[3], ada[6]) == ("Ada", "Lovelace", "1")
    assert datetime.fromisoformat(ada[4]) == T and datetime.fromisoformat(ada[5]) == T
