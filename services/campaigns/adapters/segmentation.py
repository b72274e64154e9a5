"""Asks the segmentation service which segments a workspace has."""

from __future__ import annotations

import logging

import grpc
from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from services.common.auth import internal_metadata

log = logging.getLogger(__name__)


class SegmentsUnavailable(Exception):
    """Segmentation did not answer; the caller may try again."""


class SegmentCatalogue:
    def __init__(self, channel: grpc.aio.Channel, internal_token: str) -> None:
        self._stub = segmentation_pb2_grpc.SegmentServiceStub(channel)
        self._token = internal_token

    async def segment_ids(self, workspace_id: str) -> set[str]:
        """The ids of every segment ``workspace_id`` has (built-in and its own)."""
        try:
            answer: segmentation_pb2.ListSegmentsResponse = await self._stub.ListSegments(
                segmentation_pb2.ListSegmentsRequest(),
                metadata=internal_metadata(self._token, workspace_id),
                timeout=5,
            )
        except grpc.aio.AioRpcError as err:
            log.warning("segmentation answered %s: %s", err.code().name, err.details())
            raise SegmentsUnavailable(f"segmentation answered {err.code().name}") from err
        return {s.id for s in answer.segments}
