"""Campaign drafts and what makes one valid: pure, no I/O.

Segment ids are checked against the segments the workspace has when the draft is created
(the handler asks segmentation), so a manager learns of a typo at once rather than when
sending. A segment deleted later (custom segments, a later issue) is the sender's concern.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The limits live in services/common, shared with the gateway; re-exported for the rules here.
from services.common.campaign_limits import MAX_BODY_TEXT as MAX_BODY_TEXT
from services.common.campaign_limits import MAX_NAME as MAX_NAME
from services.common.campaign_limits import MAX_SEGMENTS as MAX_SEGMENTS
from services.common.campaign_limits import MAX_SUBJECT as MAX_SUBJECT
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


@dataclass(frozen=True)
class NewCampaign:
    name: str
    segment_ids: tuple[str, ...]
    subject: str
    body_text: str


def check_new_campaign(v: Validator, c: NewCampaign) -> None:
    """Every violation of the draft's own fields (segments are checked with
    :func:`check_segments_known` once the workspace's segments are known)."""
    _check_text(v, "name", c.name, MAX_NAME)
    _check_text(v, "subject", c.subject, MAX_SUBJECT)
    v.check("\n" not in c.subject and "\r" not in c.subject, "subject", "must be one line")
    _check_template(v, "subject", c.subject)
    _check_text(v, "body_text", c.body_text, MAX_BODY_TEXT)
    _check_template(v, "body_text", c.body_text)
    v.check(
        0 < len(c.segment_ids) <= MAX_SEGMENTS,
        "segment_ids",
        f"1-{MAX_SEGMENTS} segment ids are required",
    )
    seen: set[str] = set()
    for i, segment_id in enumerate(c.segment_ids[:MAX_SEGMENTS]):
        v.check(bool(segment_id), f"segment_ids[{i}]", "is empty")
        v.check(segment_id not in seen, f"segment_ids[{i}]", "is a duplicate")
        seen.add(segment_id)


def segments_need_checking(c: NewCampaign) -> bool:
    """Whether asking segmentation about the ids is worth it (not too few, not too many)."""
    return 0 < len(c.segment_ids) <= MAX_SEGMENTS


def check_segments_known(v: Validator, c: NewCampaign, known: Collection[str]) -> None:
    for i, segment_id in enumerate(c.segment_ids):
        if segment_id:  # an empty id is reported by check_new_campaign
            v.check(
                segment_id in known, f"segment_ids[{i}]", f"unknown segment {segment_id[:100]!r}"
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
