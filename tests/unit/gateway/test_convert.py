"""JSON <-> protobuf conversions and field-name mapping, without HTTP."""

from __future__ import annotations

import pytest
from nudge.campaigns.v1 import campaigns_pb2
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2
from pydantic import TypeAdapter

from services.gateway import convert, schemas
from services.gateway.problems import field_path, validation_problem


@pytest.mark.parametrize(
    ("text", "parts"), [("1990-02-28", (1990, 2, 28)), ("--02-29", (0, 2, 29))]
)
def test_birthdays_round_trip(text: str, parts: tuple[int, int, int]) -> None:
    assert convert.parse_birthday(text) == parts
    year, month, day = parts
    assert convert.format_birthday(contacts_pb2.Date(year=year, month=month, day=day)) == text


def test_a_contact_without_optional_fields_has_nulls_not_zero_values() -> None:
    out = convert.contact_json(contacts_pb2.Contact(id="c", email="a@b.c"))
    assert (out.birthday, out.signed_up_at, out.external_id, out.created_at) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize("kind", schemas.EVENT_TYPES)
def test_every_event_type_becomes_its_shop_event_member(kind: str) -> None:
    body = TypeAdapter(schemas.EventIn).validate_python(
        {"idempotency_key": "k", "contact": {"email": "a@b.c"}, "type": kind}
    )
    request = convert.track_event_request(body)
    assert request.event.WhichOneof("kind") == kind
    assert request.contact.email == "a@b.c"
    assert not request.event.HasField("occurred_at")


def test_a_failed_login_carries_the_shops_reset_link() -> None:
    link = "https://shop.example/password/reset?token=abc"
    body = TypeAdapter(schemas.EventIn).validate_python(
        {
            "idempotency_key": "k",
            "contact": {"email": "a@b.c"},
            "type": "login_failed",
            "data": {"reset_url": link},
        }
    )
    assert convert.track_event_request(body).event.login_failed.reset_url == link


@pytest.mark.parametrize(
    ("service_field", "json_field"),
    [
        ("event.kind", "type"),
        ("event.occurred_at", "occurred_at"),
        ("event.cart_updated.items", "data.items"),
        ("idempotency_key", "idempotency_key"),
        ("contact", "contact"),
    ],
)
def test_event_fields_are_renamed_to_the_json_shape(service_field: str, json_field: str) -> None:
    assert convert.event_field(service_field) == json_field


def test_enums_travel_as_short_lower_case_names() -> None:
    campaign = convert.campaign_json(
        campaigns_pb2.Campaign(id="x", status=campaigns_pb2.CAMPAIGN_STATUS_SENDING)
    )
    assert campaign.status == "sending"
    status = convert.message_status_json(
        delivery_pb2.GetMessageStatusResponse(
            status=delivery_pb2.MessageStatus.Value("MESSAGE_STATUS_SKIPPED")
        )
    )
    assert status.status == "skipped"
    assert convert.message_status_json(delivery_pb2.GetMessageStatusResponse(status=99)).status == (  # type: ignore[arg-type]
        "unspecified"
    )
    consent = convert.record_consent_request(
        "c", schemas.ConsentIn(purpose="targeted_messages", status="withdrawn")
    )
    assert consent.purpose == contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES
    assert consent.status == contacts_pb2.CONSENT_STATUS_WITHDRAWN
    assert consent.source == contacts_pb2.CONSENT_SOURCE_API


def test_field_paths_read_like_the_json() -> None:
    assert field_path(("body", "data", "items", 0, "quantity")) == "data.items[0].quantity"
    assert field_path(("query", "page_size")) == "query.page_size"
    assert field_path(("body",)) == "body"


def test_a_json_decode_error_is_a_400_not_a_422() -> None:
    problem = validation_problem(
        [{"type": "json_invalid", "loc": ("body", 7), "msg": "x", "ctx": {"error": "Expecting"}}]
    )
    assert problem.status == 400
    assert "position 7" in problem.details.detail
