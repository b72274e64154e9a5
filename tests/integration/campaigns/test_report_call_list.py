"""Seed 003's call list over real gRPC: contacts who opened or clicked (a human) and did not
buy, a keyset page at a time, named by the contacts service; bad pages refused."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from nudge.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.campaigns.adapters.postgres import SCHEMA
from services.common.db import create_pool
from tests.integration.campaigns.report_support import Row, insert_campaign
from tests.integration.campaigns.test_campaigns_grpc import violations
from tests.integration.conftest import RunningService, Workspace

T = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)


@pytest.fixture(scope="module")
async def pool(campaigns_service: RunningService) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(os.environ["DATABASE_URL"], SCHEMA)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def stub(
    campaigns_service: RunningService,
) -> AsyncIterator[campaigns_pb2_grpc.CampaignServiceStub]:
    async with grpc.aio.insecure_channel(campaigns_service.address) as ch:
        yield campaigns_pb2_grpc.CampaignServiceStub(ch)


async def new_contact(contacts: RunningService, ws: Workspace, first: str, last: str) -> str:
    local = "".join(ch for ch in first.lower() if ch.isalnum()) or "x"
    async with grpc.aio.insecure_channel(contacts.address) as ch:
        answer = await contacts_pb2_grpc.ContactServiceStub(ch).CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(
                    email=f"{local}-{uuid.uuid4().hex[:6]}@example.com",
                    first_name=first,
                    last_name=last,
                )
            ),
            metadata=ws.metadata,
        )
    return answer.contact.id


async def engage(
    pool: asyncpg.Pool,
    campaign_id: str,
    contact_id: str,
    *,
    opened: datetime | None = None,
    clicked: datetime | None = None,
    clicks: int = 0,
) -> None:
    await pool.execute(
        "UPDATE recipients SET first_human_open_at = $3, first_human_click_at = $4,"
        " human_opens = CASE WHEN $3::timestamptz IS NULL THEN 0 ELSE 1 END, human_clicks = $5,"
        " last_human_engaged_at = GREATEST($3, $4)"
        " WHERE campaign_id = $1 AND contact_id = $2",
        uuid.UUID(campaign_id),
        uuid.UUID(contact_id),
        opened,
        clicked,
        clicks,
    )


async def test_engaged_contacts_without_an_order_are_listed_page_by_page(
    pool: asyncpg.Pool,
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    contacts_service: RunningService,
    workspace: Workspace,
) -> None:
    people = {
        name: await new_contact(contacts_service, workspace, name, "Rossi")
        for name in ("Ada", "Bea", "Cleo", "Dino", "Eva")
    }
    campaign_id = await insert_campaign(
        pool,
        workspace.id,
        [Row(c) for c in people.values()],
        started_at=T - timedelta(hours=1),
    )
    await engage(pool, campaign_id, people["Ada"], clicked=T, clicks=2)
    await engage(pool, campaign_id, people["Bea"], opened=T)
    await engage(pool, campaign_id, people["Cleo"], opened=T, clicked=T + timedelta(hours=1))
    await engage(pool, campaign_id, people["Eva"], opened=T)
    # Bea bought (attributed to this campaign); Dino never engaged.
    await pool.execute(
        "INSERT INTO attributions (workspace_id, order_id, campaign_id, contact_id, variant,"
        " holdout, amount_minor, currency, placed_at) VALUES ($1, 'o-1', $2, $3, 0, false,"
        " 1000, 'EUR', $4)",
        uuid.UUID(workspace.id),
        uuid.UUID(campaign_id),
        uuid.UUID(people["Bea"]),
        T + timedelta(days=1),
    )
    # Eva is deleted since: contacts no longer knows her, so she is nobody to call.
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        await contacts_pb2_grpc.ContactServiceStub(ch).DeleteContact(
            contacts_pb2.DeleteContactRequest(
                contact=contacts_pb2.ContactRef(contact_id=people["Eva"])
            ),
            metadata=workspace.metadata,
        )
    listed: list[campaigns_pb2.EngagedContact] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListEngagedNonBuyers(
            campaigns_pb2.ListEngagedNonBuyersRequest(
                campaign_id=campaign_id, page_size=2, page_token=token
            ),
            metadata=workspace.metadata,
        )
        listed += page.contacts
        pages += 1
        token = page.next_page_token
        if not token:
            break
    expected = sorted(people[n] for n in ("Ada", "Cleo"))
    assert [c.contact_id for c in listed] == expected
    assert pages == 2  # Eva's row took her place on a page: pages stay keyset, not counted
    by_name = {c.first_name: c for c in listed}
    ada = by_name["Ada"]
    assert (ada.last_name, ada.clicks, ada.email.startswith("ada-")) == ("Rossi", 2, True)
    # Ada clicked without loading the pixel: her click is her open.
    assert ada.first_clicked_at.ToDatetime(UTC) == T == ada.first_opened_at.ToDatetime(UTC)
    assert by_name["Cleo"].first_opened_at.ToDatetime(UTC) == T


async def test_bad_pages_are_refused_and_other_workspaces_see_nothing(
    pool: asyncpg.Pool,
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    contacts_service: RunningService,
    workspace: Workspace,
) -> None:
    from tests.integration.campaigns.test_campaigns_grpc import new_workspace

    campaign_id = await insert_campaign(pool, workspace.id, [], started_at=T)
    cases = [
        ({"page_size": 5001}, ["page_size"]),
        ({"page_size": -1}, ["page_size"]),
        ({"page_token": "not-a-token"}, ["page_token"]),
        ({"page_token": "x" * 5000, "page_size": 9999}, ["page_size", "page_token"]),
    ]
    for fields, bad in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListEngagedNonBuyers(
                campaigns_pb2.ListEngagedNonBuyersRequest(
                    campaign_id=campaign_id,
                    **fields,  # type: ignore[arg-type]
                ),
                metadata=workspace.metadata,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err.value) == bad
    other = await new_workspace(contacts_service)
    for target in (campaign_id, "", "nope"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListEngagedNonBuyers(
                campaigns_pb2.ListEngagedNonBuyersRequest(campaign_id=target),
                metadata=other.metadata,
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    empty = await stub.ListEngagedNonBuyers(
        campaigns_pb2.ListEngagedNonBuyersRequest(campaign_id=campaign_id),
        metadata=workspace.metadata,
    )
    assert list(empty.contacts) == [] and empty.next_page_token == ""
