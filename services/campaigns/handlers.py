"""Campaign use cases: validate, save, read back.

Segment ids are validated when the draft is created, against the segments segmentation
says the workspace has (``SegmentService.ListSegments``, internal call on the workspace's
behalf), so the manager hears about an unknown segment with the other field errors. If
segmentation does not answer, creating fails with ``Unavailable`` (UNAVAILABLE, worth a
retry) rather than storing a draft nobody checked; any other failure of that call is a fault
of ours and surfaces as INTERNAL.

UpdateCampaign changes drafts only (a campaign on its way out must not change under the
fan-out): it applies the FieldMask to the stored draft, validates the result as a whole (as
CreateCampaign would), and writes it with a compare-and-set on the status, so a draft sent
between the read and the write is refused rather than silently edited.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Protocol

import asyncpg
from nudge.campaigns.v1 import campaigns_pb2

from services.campaigns.adapters import postgres as db
from services.campaigns.domain import model, paging
from services.campaigns.domain.model import NewCampaign, Status
from services.common import clock
from services.common.errors import FailedPrecondition, NotFound, Validator


class SegmentCatalogue(Protocol):
    async def segment_ids(self, workspace_id: str) -> set[str]:
        """The workspace's segment ids; raises ``Unavailable`` when they cannot be known now."""
        ...


async def create_campaign(
    pool: asyncpg.Pool, segments: SegmentCatalogue, workspace_id: str, new: NewCampaign
) -> campaigns_pb2.Campaign:
    """A new draft, once every field is valid and every segment exists in the workspace.
    Segmentation is asked only when the number of segment ids is in range."""
    await _validate(segments, workspace_id, new)
    async with pool.acquire() as conn:
        row = await db.insert_campaign(conn, workspace_id, new.with_defaults(), clock.now())
    return db.campaign_to_proto(row)


async def _validate(segments: SegmentCatalogue, workspace_id: str, new: NewCampaign) -> None:
    v = Validator()
    model.check_new_campaign(v, new)
    if model.segments_need_checking(new):
        model.check_segments_known(v, new, await segments.segment_ids(workspace_id))
    v.raise_if_any()


def campaign_key(campaign_id: str) -> uuid.UUID:
    """The campaign's id as a UUID; anything else names no campaign (NOT_FOUND, as another
    workspace's id would be)."""
    try:
        return uuid.UUID(campaign_id)
    except ValueError as err:
        raise NotFound("campaign not found") from err


async def update_campaign(
    pool: asyncpg.Pool,
    segments: SegmentCatalogue,
    workspace_id: str,
    campaign_id: str,
    paths: list[str],
    changes: NewCampaign,
) -> campaigns_pb2.Campaign:
    """The draft with the fields named by ``paths`` taken from ``changes``."""
    v = Validator()
    v.check(bool(paths), "update_mask", "is required: the fields to change")
    for i, path in enumerate(paths):
        v.check(path in model.UPDATABLE, f"update_mask.paths[{i}]", f"unknown path {path[:100]!r}")
    v.check(len(set(paths)) == len(paths), "update_mask", "names a path twice")
    v.raise_if_any()
    key = campaign_key(campaign_id)
    async with pool.acquire() as conn:
        row = await db.find_campaign(conn, workspace_id, key)
    if row is None:
        raise NotFound("campaign not found")
    _ensure_draft(row["status"])
    current = db.new_campaign_of(row)
    updated = replace(current, **{p: getattr(changes, p) for p in paths})
    await _validate(segments, workspace_id, updated)
    async with pool.acquire() as conn:
        written = await db.update_draft(
            conn, workspace_id, key, updated.with_defaults(), clock.now()
        )
        if written is None:  # sent, scheduled or cancelled meanwhile
            now_row = await db.find_campaign(conn, workspace_id, key)
            _ensure_draft(now_row["status"] if now_row else Status.CANCELLED)
            raise NotFound("campaign not found")
    return db.campaign_to_proto(written)


def _ensure_draft(status: int) -> None:
    if status != Status.DRAFT:
        raise FailedPrecondition(
            f"only drafts can be changed; this campaign is {Status(status).name.lower()}"
        )


async def get_campaign(
    pool: asyncpg.Pool, workspace_id: str, campaign_id: str
) -> campaigns_pb2.Campaign:
    """One of the workspace's campaigns; another workspace's id is simply not found."""
    key = campaign_key(campaign_id)
    async with pool.acquire() as conn:
        row = await db.find_campaign(conn, workspace_id, key)
    if row is None:
        raise NotFound("campaign not found")
    return db.campaign_to_proto(row)


async def list_campaigns(
    pool: asyncpg.Pool, workspace_id: str, page_size: int, page_token: str
) -> campaigns_pb2.ListCampaignsResponse:
    """A page of the workspace's campaigns, newest first, and the token of the next page
    (empty when this is the last)."""
    v = Validator()
    size = paging.page_size_of(v, page_size)
    after = paging.decode_token(page_token) if page_token else None
    v.check(not page_token or after is not None, "page_token", "is not a token of this list")
    v.raise_if_any()
    async with pool.acquire() as conn:
        rows = await db.list_campaigns(conn, workspace_id, after, size + 1)
    page = rows[:size]
    next_token = ""
    if len(rows) > size:
        last = page[-1]
        next_token = paging.encode_token(paging.Cursor(last["created_at"], last["id"]))
    return campaigns_pb2.ListCampaignsResponse(
        campaigns=[db.campaign_to_proto(r) for r in page], next_page_token=next_token
    )
