"""``/v1/campaigns/{campaign_id}/report`` and the call list of seed 003
(``/engaged-non-buyers``, JSON pages or a streamed CSV): CampaignService's report part."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.campaigns.v1 import campaigns_pb2

from services.gateway import problems
from services.gateway.campaign_report_schemas import (
    CampaignReportOut,
    EngagedContactList,
    EngagedContactOut,
)
from services.gateway.deps import BackendsDep, Caller, CallerDep
from services.gateway.entrypoints.campaigns import MAX_PAGE_TOKEN, CampaignId

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])

MAX_PAGE_SIZE = 5000
DEFAULT_PAGE_SIZE = 500
CSV_PAGE_SIZE = 1000
CSV_COLUMNS = (
    "contact_id",
    "email",
    "first_name",
    "last_name",
    "first_opened_at",
    "first_clicked_at",
    "clicks",
)
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection, OWASP).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _query_field(field: str) -> str:
    return f"query.{field}"


def _time(ts: Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


def _status(value: int) -> str:
    try:
        return campaigns_pb2.CampaignStatus.Name(value).removeprefix("CAMPAIGN_STATUS_").lower()  # type: ignore[arg-type]
    except ValueError:
        return "unspecified"


@router.get(
    "/{campaign_id}/report",
    response_model=CampaignReportOut,
    summary="A campaign's report",
    responses=problems.responses(401, 404, 422, 503),
)
async def get_campaign_report(
    campaign_id: CampaignId, caller: CallerDep, backends: BackendsDep
) -> CampaignReportOut:
    """Live while the campaign sends, exact after (``final``): audience, exclusions, delivery
    outcomes, opens and clicks (human and machine apart), unsubscribes, rates, attributed
    orders, A/B variants and the hold-out's lift."""
    answer: campaigns_pb2.CampaignReport = await caller.call(
        backends.campaigns.GetCampaignReport,
        campaigns_pb2.GetCampaignReportRequest(campaign_id=campaign_id),
        service="campaigns",
    )
    body = MessageToDict(
        answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    body["status"] = _status(answer.status)
    body["as_of"] = _time(answer.as_of, answer.HasField("as_of"))
    body["holdout"] = body.get("holdout") if answer.HasField("holdout") else None
    return CampaignReportOut.model_validate(body)


def _contact_json(c: campaigns_pb2.EngagedContact) -> EngagedContactOut:
    return EngagedContactOut(
        contact_id=c.contact_id,
        email=c.email,
        first_name=c.first_name,
        last_name=c.last_name,
        first_opened_at=_time(c.first_opened_at, c.HasField("first_opened_at")),
        first_clicked_at=_time(c.first_clicked_at, c.HasField("first_clicked_at")),
        clicks=c.clicks,
    )


async def _page(
    caller: Caller, backends: BackendsDep, campaign_id: str, size: int, token: str
) -> campaigns_pb2.ListEngagedNonBuyersResponse:
    answer: campaigns_pb2.ListEngagedNonBuyersResponse = await caller.call(
        backends.campaigns.ListEngagedNonBuyers,
        campaigns_pb2.ListEngagedNonBuyersRequest(
            campaign_id=campaign_id, page_size=size, page_token=token
        ),
        service="campaigns",
        fields=_query_field,
    )
    return answer


@router.get(
    "/{campaign_id}/engaged-non-buyers",
    response_model=EngagedContactList,
    summary="Contacts who opened or clicked and did not buy",
    responses=problems.responses(401, 404, 422, 503),
)
async def list_engaged_non_buyers(
    campaign_id: CampaignId,
    caller: CallerDep,
    backends: BackendsDep,
    page_size: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="At most this many.")
    ] = DEFAULT_PAGE_SIZE,
    page_token: Annotated[
        str,
        Query(max_length=MAX_PAGE_TOKEN, description="`next_page_token` of the previous page."),
    ] = "",
) -> EngagedContactList:
    """Seed 003's call list: contacts who opened or clicked (a person, not a scanner) and
    placed no order within the attribution window, in contact id order."""
    answer = await _page(caller, backends, campaign_id, page_size, page_token)
    return EngagedContactList(
        contacts=[_contact_json(c) for c in answer.contacts],
        next_page_token=answer.next_page_token,
    )


def csv_cell(value: str) -> str:
    """A cell a spreadsheet shows as text: one that would start a formula gets a ``'``."""
    return f"'{value}" if value.startswith(_FORMULA_START) else value


def csv_rows(contacts: list[campaigns_pb2.EngagedContact], header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for c in contacts:
        opened = _time(c.first_opened_at, c.HasField("first_opened_at"))
        clicked = _time(c.first_clicked_at, c.HasField("first_clicked_at"))
        writer.writerow(
            [
                c.contact_id,
                csv_cell(c.email),
                csv_cell(c.first_name),
                csv_cell(c.last_name),
                opened.isoformat() if opened else "",
                clicked.isoformat() if clicked else "",
                c.clicks,
            ]
        )
    return out.getvalue()


@router.get(
    "/{campaign_id}/engaged-non-buyers.csv",
    summary="The call list as CSV",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        **problems.responses(401, 404, 422, 503),
    },
)
async def export_engaged_non_buyers(
    campaign_id: CampaignId, caller: CallerDep, backends: BackendsDep
) -> StreamingResponse:
    """The whole call list, streamed a page at a time (constant memory whatever its size).
    The first page is read before answering, so a wrong campaign is a 404 problem; should a
    later page fail, the download ends early (logged)."""
    first = await _page(caller, backends, campaign_id, CSV_PAGE_SIZE, "")

    async def body() -> AsyncIterator[str]:
        page = first
        yield csv_rows(list(page.contacts), header=True)
        while page.next_page_token:
            try:
                page = await _page(
                    caller, backends, campaign_id, CSV_PAGE_SIZE, page.next_page_token
                )
            except problems.Problem as err:
                log.warning("call list of campaign %s cut short: %s", campaign_id, err)
                return
            yield csv_rows(list(page.contacts), header=False)

    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="engaged-non-buyers-{campaign_id}.csv"'
        },
    )
