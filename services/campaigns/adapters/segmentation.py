"""Asks the segmentation service which segments a workspace has."""

from __future__ import annotations

import logging

import grpc
from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from services.common.auth import internal_metadata
from services.common.errors import Unavailable

log = logging.getLogger(__name__)

# The answers that mean segmentation could not be reached in time: worth a retry by the
# caller. Any other status (a bad internal token, a bug) is ours to fix, not the caller's.
_NOT_ANSWERING = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class SegmentCatalogue:
    def __init__(self, channel: grpc.aio.Channel, internal_token: str, timeout: float = 5) -> None:
        self._stub = segmentation_pb2_grpc.SegmentServiceStub(channel)
        self._token = internal_token
        self._timeout = timeout

    async def segment_ids(self, workspace_id: str) -> set[str]:
        """The ids of every segment ``workspace_id`` has (built-in and its own).

        Raises :class:`Unavailable` when segmentation does not answer (UNAVAILABLE, or no
        answer within the timeout); any other failure propagates as the ``AioRpcError`` it is,
        and the guard interceptor answers INTERNAL."""
        try:
            answer: segmentation_pb2.ListSegmentsResponse = await self._stub.ListSegments(
                segmentation_pb2.ListSegmentsRequest(),
                metadata=internal_metadata(self._token, workspace_id),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() not in _NOT_ANSWERING:
                raise
            log.warning("segmentation answered %s: %s", err.code().name, err.details())
            raise Unavailable(f"cannot check the segments now: {err.code().name}") from err
        return {s.id for s in answer.segments}
