"""The gateway's HTTP contract with fake services: auth, problem+json, limits, mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import Message
from nudge.contacts.v1 import contacts_pb2
from nudge.shop.v1 import shop_pb2

from tests.unit.gateway.conftest import AUTH, KEY, Gateway
from tests.unit.gateway.fakes import rpc_error

PROBLEM = "application/problem+json"


def stored_contact(request: Message) -> contacts_pb2.CreateContactResponse:
    assert isinstance(request, contacts_pb2.CreateContactRequest)
    contact = contacts_pb2.Contact()
    contact.CopyFrom(request.contact)
    contact.id = "c-1"
    contact.workspace_id = "w-1"
    contact.created_at.FromSeconds(1_700_000_000)
    return contacts_pb2.CreateContactResponse(contact=contact)


async def test_a_created_contact_is_201_with_location_and_the_key_is_forwarded(
    gateway: Gateway,
) -> None:
    gateway.contacts.answers["CreateContact"] = stored_contact
    answer = await gateway.http.post(
        "/v1/contacts",
        json={
            "email": "ada@example.com",
            "first_name": "Ada",
            "birthday": "--12-10",
            "signed_up_at": "2026-01-02T03:04:05+01:00",
            "attributes": {"plan": "gold"},
            "vip": True,
            "tags": ["a"],
            "consents": ["marketing", "automations"],
        },
        headers=AUTH,
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert answer.headers["location"] == "/v1/contacts/c-1"
    assert body["id"] == "c-1"
    assert body["birthday"] == "--12-10"
    assert body["signed_up_at"] == "2026-01-02T02:04:05Z"
    assert body["external_id"] is None
    assert body["attributes"] == {"plan": "gold"}
    method, request, metadata = gateway.contacts.calls[0]
    assert method == "CreateContact"
    assert metadata == (("authorization", f"Bearer {KEY}"),)
    assert isinstance(request, contacts_pb2.CreateContactRequest)
    assert list(request.consents) == [
        contacts_pb2.CONSENT_PURPOSE_MARKETING,
        contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
    ]
    assert (request.contact.birthday.year, request.contact.birthday.month) == (0, 12)


async def test_no_api_key_is_401_problem_and_no_call_is_made(gateway: Gateway) -> None:
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer a\tb"}):
        answer = await gateway.http.get("/v1/contacts/c-1", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["content-type"] == PROBLEM
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["status"] == 401
    assert gateway.contacts.calls == []


async def test_malformed_json_is_400(gateway: Gateway) -> None:
    answer = await gateway.http.post(
        "/v1/contacts",
        content=b'{"email": "a@b.cc",',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert problem["type"].endswith("/malformed-json")
    assert set(problem) >= {"type", "title", "status", "detail"}


async def test_wrong_types_are_422_naming_every_field(gateway: Gateway) -> None:
    answer = await gateway.http.post(
        "/v1/contacts",
        json={"email": 42, "vip": "yes", "tags": ["ok", 7], "surprise": 1},
        headers=AUTH,
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM
    fields = {e["field"] for e in answer.json()["errors"]}
    assert fields == {"email", "vip", "tags[1]", "surprise"}


async def test_missing_field_and_non_string_time_are_422(gateway: Gateway) -> None:
    answer = await gateway.http.post(
        "/v1/contacts", json={"signed_up_at": 1700000000, "birthday": "12/10"}, headers=AUTH
    )
    assert answer.status_code == 422
    fields = {e["field"] for e in answer.json()["errors"]}
    assert fields == {"email", "signed_up_at", "birthday"}


async def test_a_body_over_the_limit_is_413_before_parsing(gateway: Gateway) -> None:
    big = {"email": "a@b.cc", "first_name": "x" * 2000}
    answer = await gateway.http.post("/v1/contacts", json=big, headers=AUTH)
    assert answer.status_code == 413
    assert answer.headers["content-type"] == PROBLEM
    assert gateway.contacts.calls == []


async def test_a_streamed_body_without_length_is_counted(gateway: Gateway) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": "a@b.cc", "first_name": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    answer = await gateway.http.post(
        "/v1/contacts", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert "content-length" not in answer.request.headers
    assert answer.status_code == 413


async def test_a_streamed_body_within_the_limit_is_passed_on(gateway: Gateway) -> None:
    gateway.contacts.answers["CreateContact"] = stored_contact

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"email": '
        yield b'"a@b.cc"}'

    answer = await gateway.http.post(
        "/v1/contacts", content=chunks(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert answer.status_code == 201, answer.text


async def test_service_field_violations_become_422_with_json_field_names(
    gateway: Gateway,
) -> None:
    gateway.contacts.answers["CreateContact"] = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "contact.email: is not an e-mail address",
        {"contact.email": "is not an e-mail address", "consents[0]": "unknown"},
    )
    # The gateway's own checks pass; the (fake) service refuses it.
    answer = await gateway.http.post(
        "/v1/contacts", json={"email": "ada@example.com"}, headers=AUTH
    )
    assert answer.status_code == 422
    assert answer.json()["errors"] == [
        {"field": "email", "message": "is not an e-mail address"},
        {"field": "consents[0]", "message": "unknown"},
    ]


async def test_grpc_codes_map_to_http_statuses_without_internals(gateway: Gateway) -> None:
    cases = [
        (grpc.StatusCode.NOT_FOUND, 404, "contact not found"),
        (grpc.StatusCode.ALREADY_EXISTS, 409, "a contact with this email exists"),
        (grpc.StatusCode.UNAUTHENTICATED, 401, "unknown API key"),
        (grpc.StatusCode.UNAVAILABLE, 503, "connect failed 10.0.0.7:50051"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 503, "Deadline Exceeded"),
        (grpc.StatusCode.INTERNAL, 500, "Traceback: psycopg secret=hunter2"),
        (grpc.StatusCode.UNKNOWN, 500, "Exception calling application: boom"),
    ]
    for code, status, details in cases:
        gateway.contacts.answers["GetContact"] = rpc_error(code, details)
        answer = await gateway.http.get("/v1/contacts/c-1", headers=AUTH)
        assert answer.status_code == status, code
        assert answer.headers["content-type"] == PROBLEM
        problem = answer.json()
        assert problem["status"] == status
        if status < 500:
            assert problem["detail"] == details
        else:
            assert details not in answer.text


async def test_an_unexpected_error_is_500_without_internals(gateway: Gateway) -> None:
    gateway.contacts.answers["GetContact"] = RuntimeError("secret internals")
    answer = await gateway.http.get("/v1/contacts/c-1", headers=AUTH)
    assert answer.status_code == 500
    assert answer.headers["content-type"] == PROBLEM
    assert "secret" not in answer.text


async def test_unknown_routes_and_methods_are_problems_too(gateway: Gateway) -> None:
    missing = await gateway.http.get("/v1/nothing", headers=AUTH)
    assert (missing.status_code, missing.headers["content-type"]) == (404, PROBLEM)
    wrong = await gateway.http.put("/v1/contacts/c-1", headers=AUTH)
    assert (wrong.status_code, wrong.headers["content-type"]) == (405, PROBLEM)
    assert "GET" in wrong.headers["allow"]


async def test_an_unknown_query_parameter_is_422_naming_it_and_no_call_is_made(
    gateway: Gateway,
) -> None:
    """A misspelt filter is refused, not ignored: ``?email=`` listed every contact (the
    filter is ``q``). The message names the route's own parameters."""
    answer = await gateway.http.get(
        "/v1/contacts", params={"email": "ada@example.com", "q": "ada"}, headers=AUTH
    )
    assert (answer.status_code, answer.headers["content-type"]) == (422, PROBLEM)
    [error] = answer.json()["errors"]
    assert error["field"] == "query.email"
    assert "q," in error["message"] and "page_size" in error["message"]
    assert gateway.contacts.calls == []
    # A route without query parameters refuses every one.
    gateway.contacts.answers["GetContact"] = lambda request: contacts_pb2.GetContactResponse()
    got = await gateway.http.get("/v1/contacts/c-1", params={"verbose": "1"}, headers=AUTH)
    assert got.status_code == 422
    assert got.json()["errors"][0]["message"] == "unknown query parameter (this route takes: none)"


async def test_an_event_is_202_and_reaches_track_event_as_protobuf(gateway: Gateway) -> None:
    gateway.contacts.answers["TrackEvent"] = shop_pb2.TrackEventResponse(
        event_id="e-1", duplicate=False, contact_id="c-1"
    )
    answer = await gateway.http.post(
        "/v1/events",
        json={
            "idempotency_key": "order-77",
            "contact": {"external_id": "cust-9"},
            "type": "order_placed",
            "occurred_at": "2026-03-01T10:00:00Z",
            "data": {
                "order_id": "o-77",
                "items": [
                    {
                        "product_id": "p1",
                        "quantity": 2,
                        "unit_price": {"amount_minor": 1250, "currency": "EUR"},
                    }
                ],
                "total": {"amount_minor": 2500, "currency": "EUR"},
            },
        },
        headers=AUTH,
    )
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"event_id": "e-1", "duplicate": False, "contact_id": "c-1"}
    _, request, _ = gateway.contacts.calls[0]
    assert isinstance(request, shop_pb2.TrackEventRequest)
    assert request.contact.external_id == "cust-9"
    assert request.event.WhichOneof("kind") == "order_placed"
    assert request.event.order_placed.items[0].unit_price.amount_minor == 1250
    assert request.event.order_placed.total.currency == "EUR"
    assert request.event.occurred_at.seconds == 1_772_359_200


async def test_event_errors_name_the_fields_of_the_json(gateway: Gateway) -> None:
    base = {"idempotency_key": "k", "contact": {"id": "c-1"}}
    unknown_type = await gateway.http.post(
        "/v1/events", json={**base, "type": "teleported"}, headers=AUTH
    )
    assert unknown_type.status_code == 422
    assert [e["field"] for e in unknown_type.json()["errors"]] == ["type"]

    bad_data = await gateway.http.post(
        "/v1/events",
        json={**base, "type": "cart_updated", "data": {"items": [{"quantity": "2"}]}},
        headers=AUTH,
    )
    assert [e["field"] for e in bad_data.json()["errors"]] == ["data.items[0].quantity"]

    two_refs = await gateway.http.post(
        "/v1/events",
        json={**base, "contact": {"id": "c", "email": "a@b.cc"}, "type": "signed_up"},
        headers=AUTH,
    )
    assert [e["field"] for e in two_refs.json()["errors"]] == ["contact"]

    gateway.contacts.answers["TrackEvent"] = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, "in the future", {"event.occurred_at": "in the future"}
    )
    future = await gateway.http.post("/v1/events", json={**base, "type": "signed_up"}, headers=AUTH)
    assert future.json()["errors"] == [{"field": "occurred_at", "message": "in the future"}]


async def test_healthz_is_503_naming_what_is_down(gateway: Gateway) -> None:
    assert (await gateway.http.get("/healthz")).status_code == 200
    gateway.checks.report = {
        "postgres": {"ok": True, "latency_ms": 1.0},
        "kafka": {"ok": True, "latency_ms": 2.0, "kind": "tansu 0.6.0", "brokers": 1},
        "campaigns": {"ok": False, "latency_ms": 3.0, "detail": "UNAVAILABLE"},
    }
    answer = await gateway.http.get("/healthz")
    assert answer.status_code == 503
    body = answer.json()
    assert body["status"] == "degraded"
    assert body["checks"]["kafka"]["kind"] == "tansu 0.6.0"
    assert [name for name, c in body["checks"].items() if not c["ok"]] == ["campaigns"]


async def test_openapi_documents_problems_and_the_bearer_scheme(gateway: Gateway) -> None:
    schema = (await gateway.http.get("/openapi.json")).json()
    create = schema["paths"]["/v1/contacts"]["post"]
    assert "application/problem+json" in create["responses"]["422"]["content"]
    assert create["security"] == [{"ApiKey": []}]
    assert schema["components"]["schemas"]["ContactIn"]["properties"]["email"]["maxLength"] == 254


async def test_options_and_other_methods_name_every_method_of_the_path(gateway: Gateway) -> None:
    """Starlette named only the first route of the path: `allow: POST` though GET exists."""
    for method in ("OPTIONS", "DELETE", "PUT"):
        answer = await gateway.http.request(method, "/v1/campaigns", headers=AUTH)
        assert (answer.status_code, answer.headers["content-type"]) == (405, PROBLEM)
        assert answer.headers["allow"] == "GET, POST"
    answer = await gateway.http.options("/v1/contacts/c-1", headers=AUTH)
    assert answer.headers["allow"] == "DELETE, GET, PATCH"
    # A path a route without parameters names is that resource, not also a contact id.
    for path in ("/v1/contacts/tags:bulk", "/v1/contacts/imports"):
        answer = await gateway.http.options(path, headers=AUTH)
        assert answer.headers["allow"] == "POST"


async def test_every_error_answer_is_documented_as_problem_json(gateway: Gateway) -> None:
    schema = (await gateway.http.get("/openapi.json")).json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400 and path != "/healthz":
                    assert list(answer["content"]) == [PROBLEM], (method, path, status)
                    assert answer["content"][PROBLEM]["schema"] == {
                        "$ref": "#/components/schemas/ProblemDetails"
                    }
            if operation.get("parameters") or operation.get("requestBody"):
                assert "422" in operation["responses"], (method, path)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


async def test_openapi_states_the_services_limits(gateway: Gateway) -> None:
    """The document is not looser than the services (campaigns' and contacts' own rules)."""
    import re

    from pydantic import ValidationError

    from services.campaigns.domain import model as campaign_rules
    from services.common.contact_limits import check_email
    from services.gateway.schemas import ContactIn

    schemas = (await gateway.http.get("/openapi.json")).json()["components"]["schemas"]
    email = schemas["ContactIn"]["properties"]["email"]
    assert email["minLength"] >= 1
    # What the document states (its pattern) is what the gateway takes, and the service too.
    for address in (
        "ada@example.com",
        "a@b.cc",
        "a\x1f@b.cc",
        "a b@c.dd",
        "a@b.c",
        "a@b.cc\n",
        "first.last+x@mail.example.co",
        "ada@exa--mple.com",
    ):
        try:
            ContactIn.model_validate({"email": address})
            accepted = True
        except ValidationError:
            accepted = False
        documented = re.fullmatch(email["pattern"], address) is not None
        assert accepted == documented, address
        if accepted:
            assert check_email(address)[1] == "", address
    campaign = schemas["CampaignIn"]["properties"]
    for field, limit in (
        ("name", campaign_rules.MAX_NAME),
        ("subject", campaign_rules.MAX_SUBJECT),
    ):
        assert (campaign[field]["minLength"], campaign[field]["maxLength"]) == (1, limit)
    assert campaign["body_text"]["maxLength"] == campaign_rules.MAX_BODY_TEXT
    assert campaign["segment_ids"]["maxItems"] == campaign_rules.MAX_SEGMENTS
    assert campaign["segment_ids"]["uniqueItems"] is True
    assert set(schemas["CampaignIn"]["required"]) == {"name", "subject"}
    # Issue 15: segments or tags (at least one), body_text (filled) or body_markdown alone.
    audience, body = schemas["CampaignIn"]["allOf"]
    assert [b["properties"] for b in audience["anyOf"]] == [
        {"segment_ids": {"minItems": 1}},
        {"tags_any": {"minItems": 1}},
    ]
    assert [b["required"] for b in body["oneOf"]] == [["body_text"], ["body_markdown"]]
    assert body["oneOf"][0]["properties"]["body_text"]["minLength"] == 1
    ref = schemas["ContactRefIn"]
    assert [branch["required"] for branch in ref["oneOf"]] == [["id"], ["external_id"], ["email"]]


async def test_campaign_texts_the_service_refuses_are_422_at_the_gateway(gateway: Gateway) -> None:
    answer = await gateway.http.post(
        "/v1/campaigns",
        json={"name": " ", "segment_ids": [], "subject": "Hi\nthere", "body_text": "\u3000"},
        headers=AUTH,
    )
    assert answer.status_code == 422
    fields = [e["field"] for e in answer.json()["errors"]]
    assert fields == ["name", "segment_ids", "subject", "body_text"]
    assert gateway.campaigns.calls == []


def test_the_white_space_class_is_what_str_strip_removes() -> None:
    """Campaigns refuses texts that strip to nothing; the pattern must agree character by
    character, in every regex dialect (hence spelled out, not `\\s`)."""
    import re
    import sys

    from services.gateway.schemas import WHITE_SPACE

    in_class = re.compile(f"[{WHITE_SPACE}]")
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert bool(in_class.fullmatch(char)) == (char.strip() == ""), hex(code)


def test_the_birthday_pattern_agrees_with_contacts_on_every_day() -> None:
    import re
    from datetime import date

    from services.gateway.convert import parse_birthday
    from services.gateway.schemas import BIRTHDAY_PATTERN

    def real(text: str) -> bool:
        year, month, day = parse_birthday(text)
        try:
            date(year or 2000, month, day)  # contacts' rule: domain/model.py _is_date
        except ValueError:
            return False
        return True

    pattern = re.compile(BIRTHDAY_PATTERN)
    for year in ("-", "0000", "1900", "1996", "1999", "2000", "2023", "2024", "2100", "2400"):
        for month in range(13 + 1):
            for day in range(32 + 1):
                text = f"{year}-{month:02d}-{day:02d}"
                assert bool(pattern.match(text)) == real(text), text
