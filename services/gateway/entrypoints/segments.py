"""``/v1/segments``: built-in and custom segments, and how many contacts each holds
(SegmentService)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from nudge.segmentation.v1 import segmentation_pb2

from services.gateway import convert, problems
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.schemas import Rfc3339, SegmentCount, SegmentList

router = APIRouter(prefix="/v1/segments", tags=["segments"])

SegmentId = Annotated[
    str, Path(min_length=1, max_length=200, description="A segment id, e.g. `vip`.")
]


@router.get(
    "",
    response_model=SegmentList,
    summary="List segments",
    responses=problems.responses(401, 503),
)
async def list_segments(caller: CallerDep, backends: BackendsDep) -> SegmentList:
    """Every segment of the workspace: the built-in lifecycle ones and custom ones."""
    answer: segmentation_pb2.ListSegmentsResponse = await caller.call(
        backends.segments.ListSegments,
        segmentation_pb2.ListSegmentsRequest(),
        service="segmentation",
    )
    return SegmentList(segments=[convert.segment_json(s) for s in answer.segments])


@router.get(
    "/{segment_id}/count",
    response_model=SegmentCount,
    summary="Count a segment's contacts",
    responses=problems.responses(401, 404, 422, 503),
)
async def count_segment(
    segment_id: SegmentId,
    caller: CallerDep,
    backends: BackendsDep,
    as_of: Annotated[
        Rfc3339 | None, Query(description="Evaluation time (RFC 3339); now if missing.")
    ] = None,
) -> SegmentCount:
    """How many contacts are in the segment at `as_of`."""
    answer: segmentation_pb2.CountSegmentResponse = await caller.call(
        backends.segments.CountSegment,
        convert.count_segment_request(segment_id, as_of),
        service="segmentation",
    )
    return convert.segment_count_json(segment_id, answer)
