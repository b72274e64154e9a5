"""Campaign drafts: what is valid, their status numbers, and page tokens."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from nudge.campaigns.v1 import campaigns_pb2

from services.campaigns.domain.model import (
    NewCampaign,
    Status,
    check_new_campaign,
    check_segments_known,
    segments_need_checking,
)
from services.campaigns.domain.paging import (
    DEFAULT_PAGE_SIZE,
    Cursor,
    decode_token,
    encode_token,
    page_size_of,
)
from services.common.errors import Validator

GOOD = NewCampaign(
    name="Spring sale",
    segment_ids=("vip", "loyal"),
    subject="{{ workspace.name }}: spring is here",
    body_text="Hello {{ contact.first_name }},\nnew tea arrived.",
)


def violations(c: NewCampaign, known: set[str] | None = None) -> list[str]:
    v = Validator()
    check_new_campaign(v, c)
    if known is not None and segments_need_checking(c):
        check_segments_known(v, c, known)
    return [x.field for x in v.violations]


def test_a_plain_draft_is_valid() -> None:
    assert violations(GOOD, {"vip", "loyal", "lost"}) == []


def test_every_bad_field_is_reported_at_once() -> None:
    bad = NewCampaign(name=" ", segment_ids=(), subject="x" * 201, body_text="")
    assert violations(bad) == ["name", "subject", "body_text", "segment_ids"]


def test_limits_are_inclusive() -> None:
    edge = NewCampaign(
        name="n" * 200,
        segment_ids=tuple(f"s{i}" for i in range(20)),
        subject="s" * 200,
        body_text="b" * 10_000,
    )
    assert violations(edge) == []
    over = NewCampaign(
        name="n" * 201,
        segment_ids=tuple(f"s{i}" for i in range(21)),
        subject="s",
        body_text="b" * 10_001,
    )
    assert violations(over) == ["name", "body_text", "segment_ids"]
    assert not segments_need_checking(over)


def test_a_subject_is_one_line_and_templates_must_parse() -> None:
    c = NewCampaign(
        name="n", segment_ids=("vip",), subject="Hi\r\nBcc: x", body_text="{{ contact.name"
    )
    assert violations(c) == ["subject", "body_text"]


def test_unknown_empty_and_duplicate_segments_are_named_by_position() -> None:
    c = NewCampaign(name="n", segment_ids=("vip", "", "vip", "nope"), subject="s", body_text="b")
    assert violations(c, {"vip"}) == ["segment_ids[1]", "segment_ids[2]", "segment_ids[3]"]
    unknown = NewCampaign(name="n", segment_ids=("vip", "nope"), subject="s", body_text="b")
    assert violations(unknown, {"vip"}) == ["segment_ids[1]"]


def test_page_tokens_round_trip_to_the_microsecond() -> None:
    cursor = Cursor(datetime(2026, 5, 31, 12, 0, 0, 123456, tzinfo=UTC), uuid.uuid4())
    assert decode_token(encode_token(cursor)) == cursor


@pytest.mark.parametrize(
    "token",
    [
        "x",
        "!!!!",
        "djEuMTIz",
        "djIuMS4wMA",
        encode_token(Cursor(datetime.now(UTC), uuid.uuid4()))[:-3],
        "A" * 300,
    ],
)
def test_a_malformed_page_token_is_rejected(token: str) -> None:
    assert decode_token(token) is None


def test_page_size_defaults_to_20_and_allows_1_to_100() -> None:
    v = Validator()
    assert page_size_of(v, 0) == DEFAULT_PAGE_SIZE
    assert page_size_of(v, 1) == 1
    assert page_size_of(v, 100) == 100
    assert v.violations == []
    for bad in (-1, 101):
        v = Validator()
        page_size_of(v, bad)
        assert [x.field for x in v.violations] == ["page_size"]


@pytest.mark.parametrize(
    "template",
    [
        "{{" + "(" * 3000,  # under the 10,000-character limit, deeper than Python's stack
        "{{" + "(" * 3000 + "1" + ")" * 3000 + "}}",
        "{{ " + "[" * 4000 + " }}",
        "{% if a %}" * 400 + "{% endif %}" * 400,
    ],
)
def test_a_template_nested_too_deeply_is_a_field_violation_not_a_crash(template: str) -> None:
    c = NewCampaign(name="n", segment_ids=("vip",), subject="s", body_text=template)
    v = Validator()
    check_new_campaign(v, c)
    assert [(x.field, x.description) for x in v.violations] == [
        ("body_text", "not a valid template: nested too deeply")
    ]


@pytest.mark.parametrize("field", ["name", "subject", "body_text"])
def test_nul_characters_are_refused_in_every_text(field: str) -> None:
    values = {"name": "n", "subject": "s", "body_text": "b"}
    values[field] = "before\x00after"
    c = NewCampaign(segment_ids=("vip",), **values)
    v = Validator()
    check_new_campaign(v, c)
    assert [(x.field, x.description) for x in v.violations] == [
        (field, "must not contain NUL characters")
    ]


def test_the_status_numbers_are_the_proto_enums() -> None:
    proto = {
        name.removeprefix("CAMPAIGN_STATUS_"): number
        for name, number in campaigns_pb2.CampaignStatus.items()
        if number != campaigns_pb2.CAMPAIGN_STATUS_UNSPECIFIED
    }
    assert {s.name: s.value for s in Status} == proto
