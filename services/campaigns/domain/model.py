"""Campaign drafts and what makes one valid: pure, no I/O.

Segment ids are checked against the segments the workspace has when the draft is created
(the handler asks segmentation), so a manager learns of a typo at once rather than when
sending. A segment deleted later (custom segments, a later issue) is the sender's concern.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.common import campaign_limits as limits

# The limits live in services/common, shared with the gateway; re-exported for the rules here.
from services.common.campaign_limits import MAX_BODY_TEXT as MAX_BODY_TEXT
from services.common.campaign_limits import MAX_NAME as MAX_NAME
from services.common.campaign_limits import MAX_SEGMENTS as MAX_SEGMENTS
from services.common.campaign_limits import MAX_SUBJECT as MAX_SUBJECT
from services.common.contact_limits import TAG, check_email
from services.common.errors import Validator

# Subject and text are personalised by delivery in Jinja2's sandbox; a draft whose template
# cannot even be parsed would fail for every recipient, so it is refused here.
_templates = ImmutableSandboxedEnvironment(autoescape=False)


class Status(IntEnum):
    """The gRPC enum's numbers, mirrored so the rules do not import the transport."""

    DRAFT = 1
    SCHEDULED = 2
    SENDING = 3
    SENT = 4
    CANCELLED = 5
    PAUSED = 6


# nudge.contacts.v1.ConsentPurpose and nudge.campaigns.v1 enums, mirrored (see Status).
PURPOSE_MARKETING = 1
PURPOSE_TARGETED_MESSAGES = 2
UNSET = 0  # proto3's unset enum: the field's documented default applies
PURPOSES = (UNSET, PURPOSE_MARKETING, PURPOSE_TARGETED_MESSAGES)
CAP_ACTION_SKIP = 1
CAP_ACTION_DEFER = 2
CAP_ACTIONS = (UNSET, CAP_ACTION_SKIP, CAP_ACTION_DEFER)
METRIC_UNIQUE_HUMAN_CLICKS = 1
WINNER_METRICS = (UNSET, METRIC_UNIQUE_HUMAN_CLICKS, 2)  # 2: REVENUE


# Every move a campaign may make, and who makes it: SendCampaign (draft -> scheduled or
# sending), the scheduler (scheduled -> sending), Pause/Resume, Cancel, and the fan-out
# (sending -> sent). Anything else is refused with the current status.
MOVES: Mapping[Status, frozenset[Status]] = {
    Status.DRAFT: frozenset({Status.SCHEDULED, Status.SENDING, Status.CANCELLED}),
    Status.SCHEDULED: frozenset({Status.SENDING, Status.CANCELLED}),
    Status.SENDING: frozenset({Status.PAUSED, Status.SENT, Status.CANCELLED}),
    Status.PAUSED: frozenset({Status.SENDING, Status.CANCELLED}),
    Status.SENT: frozenset(),
    Status.CANCELLED: frozenset(),
}


def may_move(before: Status, after: Status) -> bool:
    return after in MOVES.get(before, frozenset())


def allowed_from(to: Status) -> tuple[Status, ...]:
    """The statuses a campaign may be in to move to ``to`` (for ``transition()``'s
    compare-and-set)."""
    return tuple(s for s in Status if to in MOVES[s])


@dataclass(frozen=True)
class AbTestSpec:
    """A/B test of subjects as the manager asks for it (the winner is decided later)."""

    subjects: tuple[str, ...]
    sample_percent: int
    metric: int  # WinnerMetric; 0 (unset) is stored as UNIQUE_HUMAN_CLICKS
    decide_after_s: int

    def to_json(self) -> dict[str, Any]:
        """The campaigns.ab_test jsonb the fan-out and the report read and write."""
        return {
            "subjects": list(self.subjects),
            "sample_percent": self.sample_percent,
            "metric": self.metric or METRIC_UNIQUE_HUMAN_CLICKS,
            "decide_after_s": self.decide_after_s,
            "winner": -1,
            "decided_at": None,
            "sample_done_at": None,
        }


@dataclass(frozen=True)
class NewCampaign:
    """Every field a manager sets on a campaign (Create, and the result of an Update)."""

    name: str
    segment_ids: tuple[str, ...]
    subject: str
    body_text: str
    exclude_segment_ids: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    body_html: str = ""
    body_markdown: str = ""
    reply_to: str = ""
    purpose: int = PURPOSE_TARGETED_MESSAGES
    cap_action: int = CAP_ACTION_SKIP
    local_time: bool = False
    time_zone: str = ""  # empty: the workspace's setting
    ab_test: AbTestSpec | None = None
    holdout_percent: int = 0

    def with_defaults(self) -> NewCampaign:
        """Unset enums (0) become their documented defaults, a reply_to its normal form."""
        return replace(
            self,
            purpose=self.purpose or PURPOSE_TARGETED_MESSAGES,
            cap_action=self.cap_action or CAP_ACTION_SKIP,
            reply_to=check_email(self.reply_to)[0] if self.reply_to else "",
        )


# The fields UpdateCampaign's mask may name (the Campaign message's names).
UPDATABLE = frozenset(
    {
        "name",
        "segment_ids",
        "subject",
        "body_text",
        "exclude_segment_ids",
        "tags_any",
        "body_html",
        "body_markdown",
        "reply_to",
        "purpose",
        "cap_action",
        "local_time",
        "time_zone",
        "ab_test",
        "holdout_percent",
    }
)


def is_time_zone(name: str) -> bool:
    """A zone zoneinfo knows (the IANA database), by its canonical-looking name."""
    if not name or len(name) > limits.MAX_TIME_ZONE or name.startswith(("/", ".")):
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def check_new_campaign(v: Validator, c: NewCampaign) -> None:
    """Every violation of the draft's own fields (segments are checked with
    :func:`check_segments_known` once the workspace's segments are known)."""
    _check_text(v, "name", c.name, MAX_NAME)
    _check_text(v, "subject", c.subject, MAX_SUBJECT)
    v.check("\n" not in c.subject and "\r" not in c.subject, "subject", "must be one line")
    _check_template(v, "subject", c.subject)
    # Bodies: body_text (with an optional body_html), or body_markdown alone, rendered to both
    # (a campaign with both kinds would leave it unclear which one recipients get).
    if c.body_markdown:
        v.check(
            not c.body_text, "body_text", "must be empty when body_markdown is given (one of them)"
        )
        v.check(
            not c.body_html, "body_html", "must be empty when body_markdown is given (one of them)"
        )
        _check_text(v, "body_markdown", c.body_markdown, limits.MAX_BODY_MARKDOWN)
        _check_template(v, "body_markdown", c.body_markdown)
    else:
        _check_text(v, "body_text", c.body_text, MAX_BODY_TEXT)
        _check_template(v, "body_text", c.body_text)
        if c.body_html:
            _check_text(v, "body_html", c.body_html, limits.MAX_BODY_HTML)
            _check_template(v, "body_html", c.body_html)
    v.check(
        len(c.segment_ids) <= MAX_SEGMENTS and (bool(c.segment_ids) or bool(c.tags_any)),
        "segment_ids",
        f"1-{MAX_SEGMENTS} segment ids are required (or tags_any)",
    )
    seen: set[str] = set()
    for i, segment_id in enumerate(c.segment_ids[:MAX_SEGMENTS]):
        v.check(bool(segment_id), f"segment_ids[{i}]", "is empty")
        v.check(segment_id not in seen, f"segment_ids[{i}]", "is a duplicate")
        seen.add(segment_id)
    v.check(
        len(c.exclude_segment_ids) <= limits.MAX_EXCLUDE_SEGMENTS,
        "exclude_segment_ids",
        f"at most {limits.MAX_EXCLUDE_SEGMENTS} segment ids",
    )
    excluded: set[str] = set()
    for i, segment_id in enumerate(c.exclude_segment_ids[: limits.MAX_EXCLUDE_SEGMENTS]):
        name = f"exclude_segment_ids[{i}]"
        v.check(bool(segment_id), name, "is empty")
        v.check(segment_id not in excluded, name, "is a duplicate")
        v.check(segment_id not in seen, name, "is also a chosen segment")
        excluded.add(segment_id)
    v.check(
        len(c.tags_any) <= limits.MAX_TAGS_ANY, "tags_any", f"at most {limits.MAX_TAGS_ANY} tags"
    )
    tags: set[str] = set()
    for i, tag in enumerate(c.tags_any[: limits.MAX_TAGS_ANY]):
        v.check(TAG.match(tag) is not None, f"tags_any[{i}]", "lower-case [a-z0-9_:-], 1-64")
        v.check(tag not in tags, f"tags_any[{i}]", "is a duplicate")
        tags.add(tag)
    if c.reply_to:
        _, problem = check_email(c.reply_to)
        v.check(not problem, "reply_to", f"not an e-mail address: {problem}")
    v.check(c.purpose in PURPOSES, "purpose", "must be TARGETED_MESSAGES (default) or MARKETING")
    v.check(c.cap_action in CAP_ACTIONS, "cap_action", "unknown")
    v.check(
        not c.time_zone or is_time_zone(c.time_zone),
        "time_zone",
        "not an IANA time zone (e.g. Europe/Berlin)",
    )
    v.check(
        0 <= c.holdout_percent <= limits.MAX_HOLDOUT_PERCENT,
        "holdout_percent",
        f"must be 0-{limits.MAX_HOLDOUT_PERCENT}",
    )
    if c.ab_test is not None:
        _check_ab_test(v, c.ab_test)


def _check_ab_test(v: Validator, ab: AbTestSpec) -> None:
    lo, hi = limits.MIN_AB_SUBJECTS, limits.MAX_AB_SUBJECTS
    v.check(lo <= len(ab.subjects) <= hi, "ab_test.subjects", f"{lo}-{hi} subjects are required")
    seen: set[str] = set()
    for i, subject in enumerate(ab.subjects[:hi]):
        name = f"ab_test.subjects[{i}]"
        _check_text(v, name, subject, MAX_SUBJECT)
        v.check("\n" not in subject and "\r" not in subject, name, "must be one line")
        v.check(subject not in seen, name, "is a duplicate")
        _check_template(v, name, subject)
        seen.add(subject)
    lo, hi = limits.MIN_AB_SAMPLE_PERCENT, limits.MAX_AB_SAMPLE_PERCENT
    v.check(lo <= ab.sample_percent <= hi, "ab_test.sample_percent", f"must be {lo}-{hi}")
    v.check(ab.metric in WINNER_METRICS, "ab_test.metric", "unknown")
    v.check(
        limits.MIN_AB_DECIDE_AFTER_S <= ab.decide_after_s <= limits.MAX_AB_DECIDE_AFTER_S,
        "ab_test.decide_after",
        "must be 10 minutes - 7 days",
    )


def segments_need_checking(c: NewCampaign) -> bool:
    """Whether asking segmentation about the ids is worth it (some, not too many)."""
    return (
        bool(c.segment_ids or c.exclude_segment_ids)
        and len(c.segment_ids) <= MAX_SEGMENTS
        and len(c.exclude_segment_ids) <= limits.MAX_EXCLUDE_SEGMENTS
    )


def check_segments_known(v: Validator, c: NewCampaign, known: Collection[str]) -> None:
    """Included and excluded ids alike must be the workspace's (another workspace's custom
    segment is unknown here: segmentation answers for the caller's workspace only)."""
    for field_name, ids in (
        ("segment_ids", c.segment_ids),
        ("exclude_segment_ids", c.exclude_segment_ids),
    ):
        for i, segment_id in enumerate(ids):
            if segment_id:  # an empty id is reported by check_new_campaign
                v.check(
                    segment_id in known,
                    f"{field_name}[{i}]",
                    f"unknown segment {segment_id[:100]!r}",
                )


def _check_text(v: Validator, field: str, value: str, limit: int) -> None:
    v.check(
        bool(value.strip()) and len(value) <= limit, field, f"1-{limit} characters are required"
    )
    # PostgreSQL text cannot hold U+0000; refused here rather than failing the INSERT.
    v.check("\x00" not in value, field, "must not contain NUL characters")


def _check_template(v: Validator, field: str, value: str) -> None:
    try:
        _templates.parse(value)
    except RecursionError:
        # Jinja's parser recurses once per nesting level: a few hundred "(" exhaust the stack.
        v.check(False, field, "not a valid template: nested too deeply")
    except TemplateError as err:
        v.check(False, field, f"not a valid template: {err.message or type(err).__name__}")
