"""A campaign's audience as a stream: every contact of its chosen segments and tags, once, in
ascending contact id, each with what the fan-out must do with it.

The stream is what both the fan-out (services/campaigns/fanout.py) and the audience preview
read, so that the numbers a manager sees before sending are the ones the send applies.

PLACEHOLDER until the AUDIENCE part of issue 15 lands: only the first segment is read and
every member is eligible, variant 0, due now. The types and the signature are the contract.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from services.campaigns.ports import Ports
from services.common.auth import internal_metadata
from services.common.events import deterministic_id

# "all": a campaign without an A/B test (the hold-out, if any, comes back excluded).
# "sample": an A/B test's first send: the sample's contacts (variants 0..n-1) and the
#   hold-out; the rest is not yielded. "rest": the contacts of neither (variant -1).
Phase = Literal["all", "sample", "rest"]


def message_id(campaign_id: uuid.UUID | str, contact_id: uuid.UUID | str) -> str:
    """The one message a contact gets from a campaign, whatever the phase or the retry:
    delivery claims it once, so a replayed fan-out never mails anyone twice."""
    return deterministic_id("campaign", str(campaign_id), str(contact_id))


@dataclass(frozen=True)
class AbSpec:
    variants: int  # 2-5
    sample_percent: int  # the whole sample across variants


@dataclass(frozen=True)
class AudienceSpec:
    """What the stream needs of a campaign (read from its row)."""

    workspace_id: str
    campaign_id: uuid.UUID
    segment_ids: tuple[str, ...]
    exclude_segment_ids: tuple[str, ...]
    tags_any: tuple[str, ...]
    purpose: int  # nudge.contacts.v1.ConsentPurpose
    cap_action: int  # nudge.campaigns.v1.CapAction
    local_time: bool
    time_zone: str  # IANA, the campaign's (or the workspace's setting)
    scheduled_at: datetime | None  # the wall-clock moment for local_time campaigns
    holdout_percent: int
    ab: AbSpec | None


@dataclass(frozen=True)
class Recipient:
    contact_id: uuid.UUID
    email: str
    # ExcludedCount.reason ("no_consent", "suppressed", "frequency_cap", "holdout", ...);
    # None: to be mailed.
    excluded: str | None
    variant: int  # 0..n-1 (0 without an A/B test), -1 in the "rest" phase
    due_at: datetime | None  # not before this (cap deferral, local time); None: now
    first_name: str = ""
    last_name: str = ""
    locale: str = ""
    time_zone: str = ""


async def stream_recipients(
    ports: Ports,
    spec: AudienceSpec,
    *,
    phase: Phase,
    as_of: datetime,
    after: uuid.UUID | None = None,
    batch_size: int = 1000,
) -> AsyncIterator[list[Recipient]]:
    """Every contact of the audience after ``after``, once, in ascending contact id, in
    batches of at most ``batch_size``; excluded contacts included with their reason. The same
    ``as_of`` gives the same audience, so a resumed fan-out continues the stream it began."""
    stub = segmentation_pb2_grpc.SegmentServiceStub(ports.segmentation)
    request = segmentation_pb2.StreamMembersRequest(
        target=segmentation_pb2.SegmentTarget(segment_id=spec.segment_ids[0]),
        after_contact_id=str(after) if after else "",
        batch_size=batch_size,
    )
    request.as_of.FromDatetime(as_of)
    metadata = internal_metadata(ports.settings.internal_token, spec.workspace_id)
    async for answer in stub.StreamMembers(request, metadata=metadata):
        yield [
            Recipient(
                contact_id=uuid.UUID(m.contact_id),
                email=m.email,
                excluded=None,
                variant=0,
                due_at=None,
            )
            for m in answer.members
        ]
