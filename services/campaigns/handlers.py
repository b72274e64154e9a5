"""Campaign use cases: validate, save, read back.

Segment ids are validated when the draft is created, against the segments segmentation
says the workspace has (``SegmentService.ListSegments``, internal call on the workspace's
behalf), so the manager hears about an unknown segment with the other field errors. If
segmentation does not answer, creating fails with ``Unavailable`` (UNAVAILABLE, worth a
retry) rather than storing a draft nobody checked; any other failure of that call is a fault
of ours and surfaces as INTERNAL.
"""

from __future__ import annotations

import uuid
from typing import Protocol

import asyncpg
from nudge.campaigns.v1 import campaigns_pb2

from services.campaigns.adapters import postgres as db
from services.campaigns.domain import model, paging
from services.campaigns.domain.model import NewCampaign
from services.common import clock
from services.common.errors import NotFound, Validator


class SegmentCatalogue(Protocol):
    async def segment_ids(self, workspace_id: str) -> set[str]:
        """The workspace's segment ids; raises ``Unavailable`` when they cannot be known now."""
        ...


async def create_campaign(
    pool: asyncpg.Pool, segments: SegmentCatalogue, workspace_id: str, new: NewCampaign
) -> campaigns_pb2.Campaign:
    """A new draft, once every field is valid and every segment exists in the workspace.
    Segmentation is asked only when the number of segment ids is in range."""
    v = Validator()
    model.check_new_campaign(v, new)
    if model.segments_need_checking(new):
        model.check_segments_known(v, new, await segments.segment_ids(workspace_id))
    v.raise_if_any()
    async with pool.acquire() as conn:
        row = await db.insert_campaign(conn, workspace_id, new, clock.now())
    return db.campaign_to_proto(row)


async def get_campaign(
    pool: asyncpg.Pool, workspace_id: str, campaign_id: str
) -> campaigns_pb2.Campaign:
    """One of the workspace's campaigns; another workspace's id is simply not found."""
    try:
        key = uuid.UUID(campaign_id)
    except ValueError as err:
        raise NotFound("campaign not found") from err
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
