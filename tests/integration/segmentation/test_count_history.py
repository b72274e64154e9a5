"""The counts segmentation keeps for the console's "change over 30 days" (migration 0060):
a stored segment counted at now keeps the day's last count; a rule or a count at a given
``as_of`` keeps nothing (neither is the segment's count of today); the count kept 30 to 37
days back is answered, and nothing when none was kept then."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from nudge.segmentation.v1 import segmentation_pb2 as pb
from nudge.segmentation.v1 import segmentation_pb2_grpc

from tests.integration.conftest import RunningService, Workspace
from tests.integration.segmentation.queries_support import Person, connect, seed


@pytest.fixture
async def stub(
    segmentation_service: RunningService,
) -> AsyncIterator[segmentation_pb2_grpc.SegmentServiceStub]:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        yield segmentation_pb2_grpc.SegmentServiceStub(ch)


async def kept(workspace_id: str) -> dict[tuple[str, int], int]:
    """Every kept count of the workspace: (segment, days ago) -> count."""
    today = datetime.now(UTC).date()
    conn = await connect()
    try:
        rows = await conn.fetch(
            "SELECT segment_id, day, count FROM segment_count_snapshots WHERE workspace_id = $1",
            uuid.UUID(workspace_id),
        )
    finally:
        await conn.close()
    return {(r["segment_id"], (today - r["day"]).days): r["count"] for r in rows}


async def keep(workspace_id: str, segment_id: str, days_ago: int, count: int) -> None:
    conn = await connect()
    try:
        await conn.execute(
            "INSERT INTO segment_count_snapshots VALUES ($1, $2, $3, $4)",
            uuid.UUID(workspace_id),
            segment_id,
            datetime.now(UTC).date() - timedelta(days=days_ago),
            count,
        )
    finally:
        await conn.close()


async def test_a_count_at_now_keeps_the_days_last_count_and_answers_the_one_of_30_days_ago(
    stub: segmentation_pb2_grpc.SegmentServiceStub, workspace: Workspace
) -> None:
    md = workspace.metadata
    vip = pb.CountSegmentRequest(target=pb.SegmentTarget(segment_id="vip"))
    await seed(workspace.id, Person(vip=True))
    first = await stub.CountSegment(vip, metadata=md)
    assert first.count == 1 and not first.HasField("earlier_count")
    assert not first.HasField("earlier_day")
    assert await kept(workspace.id) == {("vip", 0): 1}

    await seed(workspace.id, Person(vip=True))
    assert (await stub.CountSegment(vip, metadata=md)).count == 2
    assert await kept(workspace.id) == {("vip", 0): 2}  # the last count of the day wins

    # Neither a past evaluation time nor a rule is the segment's count of today.
    await seed(workspace.id, Person(vip=True))
    at_time = pb.CountSegmentRequest(target=pb.SegmentTarget(segment_id="vip"))
    at_time.as_of.FromDatetime(datetime.now(UTC))
    assert (await stub.CountSegment(at_time, metadata=md)).count == 3
    rule = pb.CountSegmentRequest(target=pb.SegmentTarget(rule=json.dumps({"segment": "vip"})))
    assert (await stub.CountSegment(rule, metadata=md)).count == 3
    assert await kept(workspace.id) == {("vip", 0): 2}

    await keep(workspace.id, "vip", 38, 40)  # older than the window: not answered
    assert not (await stub.CountSegment(vip, metadata=md)).HasField("earlier_count")
    await keep(workspace.id, "vip", 33, 7)
    answer = await stub.CountSegment(vip, metadata=md)
    assert (answer.count, answer.earlier_count) == (3, 7)
    day = datetime.now(UTC).date() - timedelta(days=33)
    assert answer.earlier_day.ToDatetime(UTC) == datetime(day.year, day.month, day.day, tzinfo=UTC)
    assert (await kept(workspace.id))[("vip", 0)] == 3
