"""The campaign rules of issue 15, pure: the status machine, every field's validation, and
when a local-time campaign starts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.campaigns.domain import model
from services.campaigns.domain.model import AbTestSpec, NewCampaign, Status
from services.campaigns.lifecycle import local_start
from services.common.errors import Validator

GOOD = NewCampaign(name="Spring", segment_ids=("vip",), subject="Hi", body_text="Hello")
AB = AbTestSpec(subjects=("A", "B"), sample_percent=20, metric=1, decide_after_s=3600)

ALLOWED = {
    (Status.DRAFT, Status.SCHEDULED),
    (Status.DRAFT, Status.SENDING),
    (Status.DRAFT, Status.CANCELLED),
    (Status.SCHEDULED, Status.SENDING),
    (Status.SCHEDULED, Status.CANCELLED),
    (Status.SENDING, Status.PAUSED),
    (Status.SENDING, Status.SENT),
    (Status.SENDING, Status.CANCELLED),
    (Status.PAUSED, Status.SENDING),
    (Status.PAUSED, Status.CANCELLED),
}


@pytest.mark.parametrize("before", list(Status))
@pytest.mark.parametrize("after", list(Status))
def test_every_move_is_allowed_or_refused_as_the_issue_says(before: Status, after: Status) -> None:
    assert model.may_move(before, after) == ((before, after) in ALLOWED)
    assert (before in model.allowed_from(after)) == ((before, after) in ALLOWED)


def violations(c: NewCampaign) -> list[str]:
    v = Validator()
    model.check_new_campaign(v, c)
    return [x.field for x in v.violations]


def test_a_campaign_with_every_field_set_well_is_valid() -> None:
    full = replace(
        GOOD,
        exclude_segment_ids=("lost",),
        tags_any=("newsletter", "vip:gold"),
        body_html="<p>Hello {{ contact.first_name | default('there') }}</p>",
        reply_to="Anna@Example.com",
        purpose=model.PURPOSE_MARKETING,
        cap_action=model.CAP_ACTION_DEFER,
        local_time=True,
        time_zone="Europe/Berlin",
        ab_test=AB,
        holdout_percent=50,
    )
    assert violations(full) == []
    assert full.with_defaults().reply_to == "Anna@example.com"  # the domain normalised


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"segment_ids": (), "tags_any": ("newsletter",)}, []),  # tags alone are an audience
        ({"segment_ids": ()}, ["segment_ids"]),
        ({"exclude_segment_ids": ("vip",)}, ["exclude_segment_ids[0]"]),
        ({"exclude_segment_ids": ("a", "a")}, ["exclude_segment_ids[1]"]),
        ({"exclude_segment_ids": tuple(f"s{i}" for i in range(21))}, ["exclude_segment_ids"]),
        ({"tags_any": ("Bad Tag",)}, ["tags_any[0]"]),
        ({"tags_any": ("a", "a")}, ["tags_any[1]"]),
        ({"tags_any": tuple(f"t{i}" for i in range(21))}, ["tags_any"]),
        ({"reply_to": "not-an-address"}, ["reply_to"]),
        ({"purpose": 3}, ["purpose"]),
        ({"cap_action": 7}, ["cap_action"]),
        ({"time_zone": "Mars/Olympus"}, ["time_zone"]),
        ({"time_zone": "../../etc/passwd"}, ["time_zone"]),
        ({"holdout_percent": 51}, ["holdout_percent"]),
        ({"holdout_percent": -1}, ["holdout_percent"]),
        ({"body_markdown": "**Hi**"}, ["body_text"]),  # exclusive with body_text
        ({"body_markdown": "**Hi**", "body_text": ""}, []),
        ({"body_markdown": "# Hi", "body_text": "", "body_html": "<p>x</p>"}, ["body_html"]),
        ({"body_html": "x" * 50_001}, ["body_html"]),
        ({"body_html": "{% if %}"}, ["body_html"]),
        ({"body_markdown": "x" * 10_001, "body_text": ""}, ["body_markdown"]),
        ({"ab_test": replace(AB, subjects=("A",))}, ["ab_test.subjects"]),
        ({"ab_test": replace(AB, subjects=tuple("ABCDEF"))}, ["ab_test.subjects"]),
        ({"ab_test": replace(AB, subjects=("A", "A"))}, ["ab_test.subjects[1]"]),
        ({"ab_test": replace(AB, subjects=("A", " "))}, ["ab_test.subjects[1]"]),
        ({"ab_test": replace(AB, subjects=("A", "B\nC"))}, ["ab_test.subjects[1]"]),
        ({"ab_test": replace(AB, sample_percent=1)}, ["ab_test.sample_percent"]),
        ({"ab_test": replace(AB, sample_percent=51)}, ["ab_test.sample_percent"]),
        ({"ab_test": replace(AB, metric=3)}, ["ab_test.metric"]),
        ({"ab_test": replace(AB, decide_after_s=599)}, ["ab_test.decide_after"]),
        ({"ab_test": replace(AB, decide_after_s=7 * 86400 + 1)}, ["ab_test.decide_after"]),
        ({"ab_test": replace(AB, decide_after_s=7 * 86400)}, []),
    ],
)
def test_each_bad_field_is_named(change: dict[str, object], fields: list[str]) -> None:
    assert violations(replace(GOOD, **change)) == fields  # type: ignore[arg-type]


def test_unknown_included_and_excluded_segments_are_named() -> None:
    c = replace(GOOD, segment_ids=("vip", "theirs"), exclude_segment_ids=("other",))
    v = Validator()
    model.check_segments_known(v, c, {"vip", "lost"})
    assert [x.field for x in v.violations] == ["segment_ids[1]", "exclude_segment_ids[0]"]


def test_ab_test_is_stored_undecided() -> None:
    assert AB.to_json() == {
        "subjects": ["A", "B"],
        "sample_percent": 20,
        "metric": 1,
        "decide_after_s": 3600,
        "winner": -1,
        "decided_at": None,
        "sample_done_at": None,
    }
    assert replace(AB, metric=0).to_json()["metric"] == 1  # unset: unique human clicks


def test_unset_enums_become_their_defaults() -> None:
    c = replace(GOOD, purpose=0, cap_action=0).with_defaults()
    assert (c.purpose, c.cap_action) == (model.PURPOSE_TARGETED_MESSAGES, model.CAP_ACTION_SKIP)


def test_a_local_time_campaign_starts_when_the_earliest_zone_reaches_its_wall_time() -> None:
    # 09:00 in Berlin (UTC+1 in December) is the wall time; UTC+14 reaches 09:00 at 19:00 UTC
    # the day before.
    at = datetime(2026, 12, 10, 8, 0, tzinfo=UTC)
    assert local_start(at, "Europe/Berlin") == datetime(2026, 12, 9, 19, 0, tzinfo=UTC)
    assert local_start(at, "UTC") == datetime(2026, 12, 9, 18, 0, tzinfo=UTC)
