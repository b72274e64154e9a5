"""A stand-in segmentation service: answers ListSegments with given ids, or fails with a
given status code, and remembers the metadata it was called with."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc


class StandInSegmentation(segmentation_pb2_grpc.SegmentServiceServicer):
    def __init__(self, segment_ids: tuple[str, ...] = ("vip", "loyal")) -> None:
        self.segment_ids = segment_ids
        self.fail_with: grpc.StatusCode | None = None
        self.delay = 0.0
        self.calls: list[dict[str, str]] = []

    async def ListSegments(
        self, request: segmentation_pb2.ListSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.ListSegmentsResponse:
        self.calls.append({k: str(v) for k, v in context.invocation_metadata() or ()})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            await context.abort(self.fail_with, f"stand-in answers {self.fail_with.name}")
        return segmentation_pb2.ListSegmentsResponse(
            segments=[segmentation_pb2.Segment(id=s) for s in self.segment_ids]
        )


@contextlib.asynccontextmanager
async def serving(standin: StandInSegmentation) -> AsyncIterator[str]:
    """Serve ``standin`` on a free local port; yields its address."""
    server = grpc.aio.server()
    segmentation_pb2_grpc.add_SegmentServiceServicer_to_server(standin, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)
