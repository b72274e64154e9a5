"""A contact's messages (issue 18): DeliveryService.ListContactMessages over a real delivery
service and PostgreSQL.

What is proven: newest claim first, ties of one group claim (one clock reading) broken by the
message id; paging with the token walks every message once, none lost or twice, even when a
message is claimed between two pages; the opens and clicks tracking saw are counted, people
apart from machines; another workspace's messages never show, even for the same contact id;
an unknown contact has none; a bad contact id, page size or token is INVALID_ARGUMENT naming
the field.

The ledger rows are written with the statement delivery's group commit claims with
(adapters/postgres.claim_many), so the test sets the claim times and ties it needs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc

from services.delivery.adapters.postgres import ClaimRow, claim_many
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.delivery.helpers import Sink, running_sink
from tests.support import free_port

S = delivery_pb2
SEARCH_PATH = {"search_path": "delivery"}  # as delivery's own connections have it
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
async def sink(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sink]:
    async with running_sink(tmp_path_factory.mktemp("sink")) as running:
        yield running


@pytest.fixture(scope="module")
async def delivery(contacts_service: RunningService, sink: Sink) -> AsyncIterator[RunningService]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    async with run_in_process(serve, Settings(grpc_port=port, smtp_url=sink.url), port) as running:
        yield running


@pytest.fixture
async def ledger(delivery: RunningService) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"], server_settings=SEARCH_PATH)
    yield conn
    await conn.close()


async def claim(
    conn: asyncpg.Connection, ws: Workspace, contact_id: str, at: datetime, n: int = 1, **kw: str
) -> list[str]:
    """``n`` new messages to the contact, claimed in one group at ``at``: their ids."""
    rows = [
        ClaimRow(
            message_id=str(uuid.uuid4()),
            workspace_id=ws.id,
            contact_id=contact_id,
            kind=kw.get("kind", S.MESSAGE_KIND_CAMPAIGN),  # type: ignore[arg-type]
            campaign_id=kw.get("campaign_id", ""),
            workflow_id=kw.get("workflow_id", ""),
            queued=b"",
            trace="{}",
            pending=None,
        )
        for _ in range(n)
    ]
    await claim_many(conn, rows, "test.delivery.queued", at)
    return [r.message_id for r in rows]


async def track(
    conn: asyncpg.Connection, ws: Workspace, message_id: str, kind: int, machine: bool
) -> None:
    await conn.execute(
        "INSERT INTO message_tracking (event_id, workspace_id, message_id, at, kind, machine)"
        " VALUES ($1, $2, $3, now(), $4, $5)",
        str(uuid.uuid4()),
        uuid.UUID(ws.id),
        uuid.UUID(message_id),
        kind,
        machine,
    )


async def page(
    delivery: RunningService, ws: Workspace, contact_id: str, size: int = 0, token: str = ""
) -> delivery_pb2.ListContactMessagesResponse:
    async with grpc.aio.insecure_channel(delivery.address) as ch:
        answer: delivery_pb2.ListContactMessagesResponse = (
            await delivery_pb2_grpc.DeliveryServiceStub(ch).ListContactMessages(
                delivery_pb2.ListContactMessagesRequest(
                    contact_id=contact_id, page_size=size, page_token=token
                ),
                metadata=ws.metadata,
            )
        )
    return answer


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    status = status_pb2.Status.FromString(
        dict(err.trailing_metadata() or ())["grpc-status-details-bin"]  # type: ignore[arg-type]
    )
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return [v.field for v in bad.field_violations]


async def test_newest_first_with_the_outcome_and_what_tracking_saw_counted(
    delivery: RunningService, workspace: Workspace, ledger: asyncpg.Connection
) -> None:
    contact = str(uuid.uuid4())
    [old] = await claim(ledger, workspace, contact, T0, campaign_id="camp-1")
    [new] = await claim(
        ledger,
        workspace,
        contact,
        T0 + timedelta(hours=1),
        kind=S.MESSAGE_KIND_AUTOMATION,
        workflow_id="wf-1",  # type: ignore[arg-type]
    )
    await ledger.execute(
        "UPDATE messages SET status = $2, detail = '250 2.0.0 queued' WHERE message_id = $1",
        uuid.UUID(old),
        S.MESSAGE_STATUS_SENT,
    )
    for kind, machine, times in (
        (S.TRACKING_EVENT_KIND_OPEN, False, 2),
        (S.TRACKING_EVENT_KIND_OPEN, True, 3),
        (S.TRACKING_EVENT_KIND_CLICK, False, 1),
        (S.TRACKING_EVENT_KIND_CLICK, True, 4),
        (S.TRACKING_EVENT_KIND_UNSUBSCRIBE, False, 1),  # neither an open nor a click
    ):
        for _ in range(times):
            await track(ledger, workspace, old, kind, machine)

    answer = await page(delivery, workspace, contact)
    assert [m.message_id for m in answer.messages] == [new, old]
    assert answer.next_page_token == ""
    first, second = answer.messages
    assert (first.kind, first.workflow_id, first.campaign_id) == (
        S.MESSAGE_KIND_AUTOMATION,
        "wf-1",
        "",
    )
    assert (first.status, first.attempts) == (S.MESSAGE_STATUS_CLAIMED, 1)
    assert first.claimed_at.ToDatetime(tzinfo=UTC) == T0 + timedelta(hours=1)
    assert (first.human_opens, first.machine_opens, first.human_clicks, first.machine_clicks) == (
        0,
        0,
        0,
        0,
    )
    assert (second.kind, second.campaign_id) == (S.MESSAGE_KIND_CAMPAIGN, "camp-1")
    assert (second.status, second.detail) == (S.MESSAGE_STATUS_SENT, "250 2.0.0 queued")
    assert (
        second.human_opens,
        second.machine_opens,
        second.human_clicks,
        second.machine_clicks,
    ) == (2, 3, 1, 4)
    assert second.updated_at.ToDatetime(tzinfo=UTC) >= T0


async def test_pages_walk_every_message_once_in_order_even_when_one_is_claimed_meanwhile(
    delivery: RunningService, workspace: Workspace, ledger: asyncpg.Connection
) -> None:
    contact = str(uuid.uuid4())
    made: list[tuple[datetime, str]] = []
    for hour in range(4):  # groups of 3 share their claim time: ties broken by the id
        at = T0 + timedelta(hours=hour)
        made += [(at, m) for m in await claim(ledger, workspace, contact, at, n=3)]
    await claim(ledger, workspace, str(uuid.uuid4()), T0 + timedelta(hours=2))  # another contact
    expected = [m for _, m in sorted(made, key=lambda p: (p[0], uuid.UUID(p[1])), reverse=True)]

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        answer = await page(delivery, workspace, contact, size=5, token=token)
        seen += [m.message_id for m in answer.messages]
        pages += 1
        if pages == 1:  # a newer mail while the list is read: later pages do not shift
            await claim(ledger, workspace, contact, T0 + timedelta(days=1))
        token = answer.next_page_token
        if not token:
            break
    assert seen == expected
    assert pages == 3  # 5 + 5 + 2

    exact = await page(delivery, workspace, contact, size=13)  # the whole list, the newer one too
    assert len(exact.messages) == 13 and exact.next_page_token == ""


async def test_another_workspaces_messages_never_show_and_an_unknown_contact_has_none(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    ledger: asyncpg.Connection,
) -> None:
    from tests.integration.gateway.conftest import new_workspace

    contact = str(uuid.uuid4())
    [mine] = await claim(ledger, workspace, contact, T0)
    other = await new_workspace(contacts_service)
    await claim(ledger, other, contact, T0 + timedelta(hours=1))  # the same contact id

    assert [m.message_id for m in (await page(delivery, workspace, contact)).messages] == [mine]
    theirs = await page(delivery, other, contact)
    assert mine not in [m.message_id for m in theirs.messages] and len(theirs.messages) == 1
    unknown = await page(delivery, workspace, str(uuid.uuid4()))
    assert list(unknown.messages) == [] and unknown.next_page_token == ""


async def test_a_bad_contact_id_page_size_or_token_is_invalid_argument_naming_the_field(
    delivery: RunningService, workspace: Workspace, ledger: asyncpg.Connection
) -> None:
    contact = str(uuid.uuid4())
    await claim(ledger, workspace, contact, T0, n=2)
    token = (await page(delivery, workspace, contact, size=1)).next_page_token
    assert token

    for asked, field in (
        (("not-a-contact", 0, ""), "contact_id"),
        ((contact, 101, ""), "page_size"),
        ((contact, -1, ""), "page_size"),
        ((contact, 0, "bm90IGEgdG9rZW4"), "page_token"),
        ((contact, 0, "%%%"), "page_token"),
        ((str(uuid.uuid4()), 0, token), "page_token"),  # another contact's token
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await page(delivery, workspace, *asked)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, asked
        assert violations(err.value) == [field], asked
