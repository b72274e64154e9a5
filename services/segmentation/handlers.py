"""Segmentation use cases: apply what other services announced to the read model, and
answer questions about segments.

Every change is applied once per event id: the claim in ``processed_events`` and the change
commit in one transaction, so a redelivered event (at-least-once Kafka, a replaying outbox
relay) changes nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime

import asyncpg

from services.common import clock
from services.common.errors import NotFound, Validator
from services.common.idempotency import claim_event
from services.segmentation.adapters import postgres as db
from services.segmentation.domain.readmodel import (
    OrderPlaced,
    OrderVoided,
    ProfileSnapshot,
    ReadModelChange,
    SignedUp,
)
from services.segmentation.domain.segments import BUILT_IN, BY_ID, BuiltInSegment

log = logging.getLogger(__name__)

CONSUMER = "segmentation"


async def apply_change(
    pool: asyncpg.Pool, workspace_id: str, event_id: str, change: ReadModelChange
) -> bool:
    """Apply one change to the read model; False when this event was handled before."""
    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        if not await claim_event(conn, CONSUMER, event_id):
            log.info("event %s already applied; skipping", event_id)
            return False
        match change:
            case ProfileSnapshot():
                await db.upsert_profile(conn, workspace_id, change, now)
            case SignedUp():
                await db.record_signup(conn, workspace_id, change.contact_id, change.at, now)
            case OrderPlaced():
                await db.record_order(conn, workspace_id, change, now)
            case OrderVoided():
                await db.void_order(conn, workspace_id, change, now)
    return True


def list_segments() -> tuple[BuiltInSegment, ...]:
    """The segments every workspace has; custom segments are a later issue."""
    return BUILT_IN


async def count_segment(
    pool: asyncpg.Pool, workspace_id: str, segment_id: str, as_of: datetime | None
) -> tuple[int, datetime]:
    """How many of the workspace's contacts the segment's rule picks when evaluated at
    ``as_of`` (default now), and the evaluation time used. ``workspace_id`` is a UUID: the
    guard interceptor lets no other through. What ``as_of`` means exactly (the read model as
    it is now, with orders and signups after ``as_of`` left out) is in the package docstring."""
    v = Validator()
    v.check(bool(segment_id), "segment_id", "is required")
    v.raise_if_any()
    if segment_id not in BY_ID:
        raise NotFound(f"segment {segment_id[:100]!r} not found")
    at = as_of or clock.now()
    async with pool.acquire() as conn:
        count = await db.count_members(conn, workspace_id, segment_id, at)
    return count, at
