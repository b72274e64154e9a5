"""The segments, campaigns and messages routes with fake services, and date-times at the
edges of what a protobuf Timestamp can hold."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import grpc
import httpx
import pytest
from google.protobuf.message import Message
from nudge.campaigns.v1 import campaigns_pb2
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2
from nudge.segmentation.v1 import segmentation_pb2
from nudge.shop.v1 import shop_pb2

from services.campaigns.domain import model as campaign_rules
from services.campaigns.domain import paging
from services.gateway.schemas import uuid_message
from tests.unit.gateway.conftest import AUTH, Gateway
from tests.unit.gateway.fakes import rpc_error

PROBLEM = "application/problem+json"
# UTC has no such day: the first is in the year 10000, the second in the year 0.
OUT_OF_RANGE = ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00")


def field_errors(answer: httpx.Response) -> list[str]:
    return [e["field"] for e in answer.json()["errors"]]


# --- date-times -----------------------------------------------------------------------------


@pytest.mark.parametrize("when", OUT_OF_RANGE)
async def test_a_signup_time_outside_utc_is_a_422_naming_the_field(
    gateway: Gateway, when: str
) -> None:
    answer = await gateway.http.post(
        "/v1/contacts", json={"email": "a@b.cc", "signed_up_at": when}, headers=AUTH
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    [error] = answer.json()["errors"]
    assert error["field"] == "signed_up_at"
    assert "out of range" in error["message"]
    assert gateway.contacts.calls == []


@pytest.mark.parametrize("when", OUT_OF_RANGE)
async def test_an_event_time_outside_utc_is_a_422_naming_the_field(
    gateway: Gateway, when: str
) -> None:
    answer = await gateway.http.post(
        "/v1/events",
        json={
            "idempotency_key": "k",
            "contact": {"id": "c-1"},
            "type": "signed_up",
            "occurred_at": when,
        },
        headers=AUTH,
    )
    assert answer.status_code == 422, answer.text
    assert field_errors(answer) == ["occurred_at"]
    assert gateway.contacts.calls == []


@pytest.mark.parametrize("when", OUT_OF_RANGE)
async def test_an_as_of_outside_utc_is_a_422_naming_the_parameter(
    gateway: Gateway, when: str
) -> None:
    answer = await gateway.http.get("/v1/segments/vip/count", params={"as_of": when}, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert field_errors(answer) == ["query.as_of"]
    assert gateway.segments.calls == []


async def test_times_at_the_edges_of_utc_still_go_through(gateway: Gateway) -> None:
    gateway.contacts.answers["TrackEvent"] = shop_pb2.TrackEventResponse(event_id="e")
    base = {"idempotency_key": "k", "contact": {"id": "c-1"}, "type": "signed_up"}
    for when, utc in [
        ("9999-12-31T23:59:59+01:00", datetime(9999, 12, 31, 22, 59, 59, tzinfo=UTC)),
        ("0001-01-01T00:00:00-01:00", datetime(1, 1, 1, 1, 0, 0, tzinfo=UTC)),
    ]:
        answer = await gateway.http.post(
            "/v1/events", json={**base, "occurred_at": when}, headers=AUTH
        )
        assert answer.status_code == 202, answer.text
        request = gateway.contacts.calls[-1][1]
        assert isinstance(request, shop_pb2.TrackEventRequest)
        assert request.event.occurred_at.ToDatetime(tzinfo=UTC) == utc


async def test_a_signup_time_with_an_offset_reaches_contacts_in_utc(gateway: Gateway) -> None:
    stored = contacts_pb2.Contact(id="c-1", email="a@b.c")
    stored.signed_up_at.FromDatetime(datetime(2026, 4, 30, 22, 30, 5, tzinfo=UTC))
    gateway.contacts.answers["CreateContact"] = contacts_pb2.CreateContactResponse(contact=stored)
    answer = await gateway.http.post(
        "/v1/contacts",
        json={"email": "a@b.cc", "signed_up_at": "2026-05-01T00:30:00+02:00"},
        headers=AUTH,
    )
    assert answer.status_code == 201, answer.text
    # What the gateway asked contacts for, in UTC...
    method, request, _ = gateway.contacts.calls[0]
    assert method == "CreateContact"
    assert isinstance(request, contacts_pb2.CreateContactRequest)
    assert request.contact.signed_up_at.ToDatetime(tzinfo=UTC) == datetime(
        2026, 4, 30, 22, 30, tzinfo=UTC
    )
    # ...and what contacts stored, as the client reads it: RFC 3339 in UTC.
    assert answer.json()["signed_up_at"] == "2026-04-30T22:30:05Z"


async def test_a_time_must_be_an_rfc_3339_string_not_epoch_seconds(gateway: Gateway) -> None:
    answer = await gateway.http.post(
        "/v1/contacts", json={"email": "a@b.cc", "signed_up_at": "1700000000"}, headers=AUTH
    )
    assert answer.status_code == 422, answer.text
    assert field_errors(answer) == ["signed_up_at"]


# --- segments -------------------------------------------------------------------------------


async def test_a_count_as_of_a_time_is_asked_in_utc(gateway: Gateway) -> None:
    counted = segmentation_pb2.CountSegmentResponse(count=42)
    counted.as_of.FromDatetime(datetime(2026, 3, 1, 9, 59, 58, tzinfo=UTC))  # the service's
    gateway.segments.answers["CountSegment"] = counted
    answer = await gateway.http.get(
        "/v1/segments/vip/count", params={"as_of": "2026-03-01T12:00:00+02:00"}, headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "segment_id": "vip",
        "count": 42,
        "as_of": "2026-03-01T09:59:58Z",
        "count_30_days_ago": None,
        "count_30_days_ago_day": None,
    }
    method, request, _ = gateway.segments.calls[0]
    assert method == "CountSegment"
    assert isinstance(request, segmentation_pb2.CountSegmentRequest)
    assert request.segment_id == "vip"
    assert request.as_of.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 1, 10, tzinfo=UTC)


async def test_a_count_without_as_of_leaves_it_to_segmentation(gateway: Gateway) -> None:
    gateway.segments.answers["CountSegment"] = segmentation_pb2.CountSegmentResponse(count=3)
    answer = await gateway.http.get("/v1/segments/vip/count", headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "segment_id": "vip",
        "count": 3,
        "as_of": None,
        "count_30_days_ago": None,
        "count_30_days_ago_day": None,
    }
    request = gateway.segments.calls[0][1]
    assert isinstance(request, segmentation_pb2.CountSegmentRequest)
    assert not request.HasField("as_of")


@pytest.mark.parametrize("as_of", ["2026-03-01T12:00:00", "yesterday", "1700000000"])
async def test_an_as_of_without_offset_or_not_a_time_is_422(gateway: Gateway, as_of: str) -> None:
    answer = await gateway.http.get("/v1/segments/vip/count", params={"as_of": as_of}, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert field_errors(answer) == ["query.as_of"]


async def test_segments_are_listed_with_short_kind_names(gateway: Gateway) -> None:
    gateway.segments.answers["ListSegments"] = segmentation_pb2.ListSegmentsResponse(
        segments=[
            segmentation_pb2.Segment(
                id="vip", name="VIP", kind=segmentation_pb2.SEGMENT_KIND_BUILT_IN
            )
        ]
    )
    answer = await gateway.http.get("/v1/segments", headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "segments": [
            {
                "id": "vip",
                "name": "VIP",
                "kind": "built_in",
                "description": "",
                "rule": {},
                "version": 0,
                "created_at": None,
                "updated_at": None,
                "depends_on": [],
            }
        ]
    }


# --- campaigns ------------------------------------------------------------------------------

CAMPAIGN = {
    "name": "Spring",
    "segment_ids": ["vip", "loyal"],
    "subject": "Spring at the shop",
    "body_text": "Hello {{ contact.first_name }}",
}


def stored_campaign(request: Message) -> campaigns_pb2.CreateCampaignResponse:
    assert isinstance(request, campaigns_pb2.CreateCampaignRequest)
    campaign = campaigns_pb2.Campaign(
        id="5d0c1f8e-0000-4000-8000-000000000001",
        workspace_id="w-1",
        name=request.name,
        segment_ids=request.segment_ids,
        subject=request.subject,
        body_text=request.body_text,
        status=campaigns_pb2.CAMPAIGN_STATUS_DRAFT,
    )
    campaign.created_at.FromSeconds(1_700_000_000)
    return campaigns_pb2.CreateCampaignResponse(campaign=campaign)


async def test_a_created_campaign_is_201_at_its_location(gateway: Gateway) -> None:
    gateway.campaigns.answers["CreateCampaign"] = stored_campaign
    answer = await gateway.http.post("/v1/campaigns", json=CAMPAIGN, headers=AUTH)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert answer.headers["location"] == f"/v1/campaigns/{body['id']}"
    assert (body["status"], body["segment_ids"], body["scheduled_at"]) == (
        "draft",
        ["vip", "loyal"],
        None,
    )
    assert body["created_at"] == "2023-11-14T22:13:20Z"
    method, request, _ = gateway.campaigns.calls[0]
    assert method == "CreateCampaign"
    assert isinstance(request, campaigns_pb2.CreateCampaignRequest)
    assert (request.name, list(request.segment_ids)) == ("Spring", ["vip", "loyal"])

    # The location reads the campaign back from the service, whatever it has become since.
    later = stored_campaign(request).campaign
    later.status = campaigns_pb2.CAMPAIGN_STATUS_SCHEDULED
    later.scheduled_at.FromSeconds(1_800_000_000)
    gateway.campaigns.answers["GetCampaign"] = campaigns_pb2.GetCampaignResponse(campaign=later)
    again = await gateway.http.get(answer.headers["location"], headers=AUTH)
    assert again.status_code == 200, again.text
    assert again.json() == {
        **body,
        "status": "scheduled",
        "scheduled_at": "2027-01-15T08:00:00Z",
    }
    assert gateway.campaigns.calls[-1][1] == campaigns_pb2.GetCampaignRequest(
        campaign_id=body["id"]
    )


async def test_openapi_documents_the_campaigns_services_own_limits(gateway: Gateway) -> None:
    schema = (await gateway.http.get("/openapi.json")).json()
    campaign_in = schema["components"]["schemas"]["CampaignIn"]["properties"]
    assert campaign_in["name"]["maxLength"] == campaign_rules.MAX_NAME
    assert campaign_in["segment_ids"]["maxItems"] == campaign_rules.MAX_SEGMENTS
    assert campaign_in["subject"]["maxLength"] == campaign_rules.MAX_SUBJECT
    assert campaign_in["body_text"]["maxLength"] == campaign_rules.MAX_BODY_TEXT
    parameters = {
        p["name"]: p["schema"] for p in schema["paths"]["/v1/campaigns"]["get"]["parameters"]
    }
    assert parameters["page_size"]["maximum"] == paging.MAX_PAGE_SIZE
    assert parameters["page_size"]["default"] == paging.DEFAULT_PAGE_SIZE


async def test_too_many_segments_and_a_long_subject_are_422_before_campaigns(
    gateway: Gateway,
) -> None:
    answer = await gateway.http.post(
        "/v1/campaigns",
        json={
            **CAMPAIGN,
            "segment_ids": [f"s{i}" for i in range(campaign_rules.MAX_SEGMENTS + 1)],
            "subject": "x" * (campaign_rules.MAX_SUBJECT + 1),
        },
        headers=AUTH,
    )
    assert answer.status_code == 422, answer.text
    assert sorted(field_errors(answer)) == ["segment_ids", "subject"]
    assert gateway.campaigns.calls == []


async def test_campaign_field_errors_of_the_service_keep_their_names(gateway: Gateway) -> None:
    gateway.campaigns.answers["CreateCampaign"] = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "2 invalid fields",
        {"segment_ids[1]": "is a duplicate", "subject": "must be one line"},
    )
    answer = await gateway.http.post("/v1/campaigns", json=CAMPAIGN, headers=AUTH)
    assert answer.status_code == 422
    assert field_errors(answer) == ["segment_ids[1]", "subject"]


@pytest.mark.parametrize(
    "params",
    [
        {"page_size": 0},
        {"page_size": paging.MAX_PAGE_SIZE + 1},
        {"page_size": "ten"},
        {"page_token": "t" * 201},
    ],
)
async def test_page_parameters_out_of_bounds_are_422(
    gateway: Gateway, params: dict[str, str | int]
) -> None:
    answer = await gateway.http.get("/v1/campaigns", params=params, headers=AUTH)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert field_errors(answer) == [f"query.{next(iter(params))}"]
    assert gateway.campaigns.calls == []


async def test_pages_are_asked_with_the_given_or_the_default_size(gateway: Gateway) -> None:
    gateway.campaigns.answers["ListCampaigns"] = campaigns_pb2.ListCampaignsResponse(
        campaigns=[campaigns_pb2.Campaign(id="c-1", name="Spring")], next_page_token="next"
    )
    first = await gateway.http.get("/v1/campaigns", headers=AUTH)
    assert first.status_code == 200, first.text
    assert [c["id"] for c in first.json()["campaigns"]] == ["c-1"]
    assert first.json()["next_page_token"] == "next"
    biggest = await gateway.http.get(
        "/v1/campaigns",
        params={"page_size": paging.MAX_PAGE_SIZE, "page_token": "next"},
        headers=AUTH,
    )
    assert biggest.status_code == 200, biggest.text
    requests = [call[1] for call in gateway.campaigns.calls]
    assert requests == [
        campaigns_pb2.ListCampaignsRequest(page_size=paging.DEFAULT_PAGE_SIZE),
        campaigns_pb2.ListCampaignsRequest(page_size=paging.MAX_PAGE_SIZE, page_token="next"),
    ]


async def test_a_page_token_refused_by_campaigns_names_the_query_parameter(
    gateway: Gateway,
) -> None:
    gateway.campaigns.answers["ListCampaigns"] = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token: is not a token of this list",
        {"page_token": "is not a token of this list"},
    )
    answer = await gateway.http.get("/v1/campaigns", params={"page_token": "x"}, headers=AUTH)
    assert answer.status_code == 422
    assert answer.json()["errors"] == [
        {"field": "query.page_token", "message": "is not a token of this list"}
    ]


async def test_a_campaign_of_nobody_is_404(gateway: Gateway) -> None:
    gateway.campaigns.answers["GetCampaign"] = rpc_error(
        grpc.StatusCode.NOT_FOUND, "campaign not found"
    )
    answer = await gateway.http.get("/v1/campaigns/nope", headers=AUTH)
    assert (answer.status_code, answer.headers["content-type"]) == (404, PROBLEM)


# --- messages -------------------------------------------------------------------------------


async def test_a_messages_status_reads_like_the_json(gateway: Gateway) -> None:
    answer_pb = delivery_pb2.GetMessageStatusResponse(
        message_id="0b6c3f5e-1d2a-4c1e-9f00-000000000001",
        status=delivery_pb2.MessageStatus.Value("MESSAGE_STATUS_SKIPPED"),
        detail="no consent",
    )
    answer_pb.updated_at.FromSeconds(1_700_000_000)
    gateway.delivery.answers["GetMessageStatus"] = answer_pb
    answer = await gateway.http.get(
        "/v1/messages/0b6c3f5e-1d2a-4c1e-9f00-000000000001", headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "message_id": "0b6c3f5e-1d2a-4c1e-9f00-000000000001",
        "status": "skipped",
        "detail": "no consent",
        "updated_at": "2023-11-14T22:13:20Z",
    }
    assert gateway.delivery.calls[0][1] == delivery_pb2.GetMessageStatusRequest(
        message_id="0b6c3f5e-1d2a-4c1e-9f00-000000000001"
    )


async def test_an_unknown_message_is_404_and_a_malformed_id_is_422(gateway: Gateway) -> None:
    gateway.delivery.answers["GetMessageStatus"] = rpc_error(
        grpc.StatusCode.NOT_FOUND, "message not found"
    )
    missing = await gateway.http.get(
        "/v1/messages/0b6c3f5e-1d2a-4c1e-9f00-000000000002", headers=AUTH
    )
    assert (missing.status_code, missing.headers["content-type"]) == (404, PROBLEM)
    for malformed in ("m" * 201, "not-a-message", "0b6c3f5e-1d2a-4c1e-9f00-0000000000020"):
        refused = await gateway.http.get(f"/v1/messages/{malformed}?explain=true", headers=AUTH)
        assert refused.status_code == 422, malformed
        assert field_errors(refused) == ["path.message_id"]
        assert refused.json()["errors"][0]["message"] == "not a message id (a UUID)"
    assert len(gateway.delivery.calls) == 1  # only the unknown one reached delivery


CONTACT = "0b6c3f5e-1d2a-4c1e-9f00-00000000c001"


async def test_a_contacts_messages_read_like_the_json_a_page_at_a_time(gateway: Gateway) -> None:
    """GET /v1/contacts/{id}/messages (issue 18): statuses and kinds as the message routes
    spell them, the counts and the token passed through, the paging asked of delivery."""
    page = delivery_pb2.ListContactMessagesResponse(next_page_token="tok-2")
    sent = page.messages.add(
        message_id="0b6c3f5e-1d2a-4c1e-9f00-000000000003",
        kind=delivery_pb2.MESSAGE_KIND_CAMPAIGN,
        campaign_id="camp-1",
        status=delivery_pb2.MESSAGE_STATUS_SENT,
        detail="250 ok",
        attempts=1,
        human_opens=2,
        machine_opens=1,
        human_clicks=1,
        machine_clicks=3,
    )
    sent.claimed_at.FromSeconds(1_700_000_000)
    sent.updated_at.FromSeconds(1_700_000_060)
    gateway.delivery.answers["ListContactMessages"] = page
    answer = await gateway.http.get(
        f"/v1/contacts/{CONTACT}/messages",
        params={"page_size": 5, "page_token": "tok-1"},
        headers=AUTH,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "messages": [
            {
                "message_id": "0b6c3f5e-1d2a-4c1e-9f00-000000000003",
                "kind": "campaign",
                "campaign_id": "camp-1",
                "workflow_id": "",
                "status": "sent",
                "detail": "250 ok",
                "attempts": 1,
                "claimed_at": "2023-11-14T22:13:20Z",
                "updated_at": "2023-11-14T22:14:20Z",
                "human_opens": 2,
                "machine_opens": 1,
                "human_clicks": 1,
                "machine_clicks": 3,
            }
        ],
        "next_page_token": "tok-2",
    }
    assert gateway.delivery.calls[0][1] == delivery_pb2.ListContactMessagesRequest(
        contact_id=CONTACT, page_size=5, page_token="tok-1"
    )
    default = await gateway.http.get(f"/v1/contacts/{CONTACT}/messages", headers=AUTH)
    assert default.status_code == 200, default.text
    assert gateway.delivery.calls[1][1].page_size == 20


async def test_a_contacts_messages_name_the_bad_field_of_the_path_or_the_query(
    gateway: Gateway,
) -> None:
    for query, field in (("page_size=0", "query.page_size"), ("page_size=101", "query.page_size")):
        refused = await gateway.http.get(f"/v1/contacts/{CONTACT}/messages?{query}", headers=AUTH)
        assert refused.status_code == 422, query
        assert field_errors(refused) == [field]
    # Not a UUID: the document says contact ids are, and delivery would refuse it.
    malformed = await gateway.http.get("/v1/contacts/c-1/messages", headers=AUTH)
    assert (malformed.status_code, field_errors(malformed)) == (422, ["path.contact_id"])
    assert malformed.json()["errors"][0]["message"] == "not a contact id (a UUID)"
    assert gateway.delivery.calls == []  # refused before delivery
    for violation, field in (("contact_id", "path.contact_id"), ("page_token", "query.page_token")):
        gateway.delivery.answers["ListContactMessages"] = rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT, "invalid", {violation: "bad"}
        )
        refused = await gateway.http.get(
            f"/v1/contacts/{CONTACT}/messages?page_token=x", headers=AUTH
        )
        assert (refused.status_code, refused.headers["content-type"]) == (422, PROBLEM)
        assert field_errors(refused) == [field]


async def test_a_confirmation_beyond_int64_is_422_not_a_500(gateway: Gateway) -> None:
    """Schemathesis sent 96995991023757274644480: the RPC's int64 could not hold it."""
    campaign = "56d1dd49-35db-43d6-9386-47245a4ef776"
    answer = await gateway.http.post(
        f"/v1/campaigns/{campaign}/send",
        json={"send_at": None, "confirm_not_consented": 96995991023757274644480},
        headers=AUTH,
    )
    assert answer.status_code == 422, answer.text
    assert field_errors(answer) == ["confirm_not_consented"]
    assert gateway.campaigns.calls == []


async def test_a_rule_preview_takes_a_limit_written_as_a_whole_float(gateway: Gateway) -> None:
    """JSON Schema counts 44.0 as an integer, and so does the route (schemathesis sent it)."""
    gateway.segments.answers["PreviewSegment"] = segmentation_pb2.PreviewSegmentResponse(count=0)
    rule = {"tag": "newsletter"}
    answer = await gateway.http.post(
        "/v1/segments:preview", json={"rule": rule, "limit": 44.0}, headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    assert gateway.segments.calls[0][1].limit == 44
    refused = await gateway.http.post(
        "/v1/segments:preview", json={"rule": rule, "limit": 4.5}, headers=AUTH
    )
    assert (refused.status_code, field_errors(refused)) == (422, ["limit"])


async def test_a_malformed_uuid_is_said_with_the_name_of_its_id_wherever_it_is(
    gateway: Gateway,
) -> None:
    """One UUID pattern for every id (schemas.UUID_PATTERN); the message names the id from
    its field: in the path, the query, a body field, an item of a body list."""
    manager = await gateway.http.patch("/v1/managers/m-1", json={"role": "viewer"}, headers=AUTH)
    after = await gateway.http.get(f"/v1/segments/{uuid.uuid4()}/members?after=x", headers=AUTH)
    cases = [
        (manager, "path.manager_id", "not a manager id (a UUID)"),
        (after, "query.after", "not a UUID"),
    ]
    for answer, field, message in cases:
        assert answer.status_code == 422, answer.text
        [error] = answer.json()["errors"]
        assert (error["field"], error["message"]) == (field, message)
    assert uuid_message(("body", "contact_ids", 3)) == "not a contact id (a UUID)"
    assert uuid_message(("body", "audit_event_id")) == "not an audit event id (a UUID)"
