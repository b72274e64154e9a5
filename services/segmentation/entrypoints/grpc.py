"""gRPC servicer of the segmentation service: decode, call a handler, encode. No rules here."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import grpc
from google.protobuf import json_format, struct_pb2
from nudge.privacy.v1 import privacy_pb2, privacy_pb2_grpc
from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from services.common.auth import current_workspace
from services.common.errors import FieldViolation, InvalidArgument
from services.segmentation import handlers
from services.segmentation.domain.segments import BuiltInSegment


def segment_to_proto(segment: BuiltInSegment) -> segmentation_pb2.Segment:
    return segmentation_pb2.Segment(
        id=segment.id,
        name=segment.name,
        kind=segmentation_pb2.SEGMENT_KIND_BUILT_IN,
        description=segment.description,
    )


def _as_of(request: segmentation_pb2.CountSegmentRequest) -> datetime | None:
    if not request.HasField("as_of"):
        return None
    try:
        return request.as_of.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as err:
        raise InvalidArgument(FieldViolation("as_of", "not a valid timestamp")) from err


class SegmentServicer(segmentation_pb2_grpc.SegmentServiceServicer):
    """The segments of the caller's workspace, and how many contacts each holds."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ListSegments(
        self, request: segmentation_pb2.ListSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.ListSegmentsResponse:
        current_workspace()  # every answer is a workspace's, even when it is the same for all
        return segmentation_pb2.ListSegmentsResponse(
            segments=[segment_to_proto(s) for s in handlers.list_segments()]
        )

    async def CountSegment(
        self, request: segmentation_pb2.CountSegmentRequest, context: grpc.aio.ServicerContext
    ) -> segmentation_pb2.CountSegmentResponse:
        count, as_of = await handlers.count_segment(
            self.pool, current_workspace(), request.segment_id, _as_of(request)
        )
        answer = segmentation_pb2.CountSegmentResponse(count=count)
        answer.as_of.FromDatetime(as_of)
        return answer


class ContactDataServicer(privacy_pb2_grpc.ContactDataServiceServicer):
    """What segmentation holds about one contact, for contacts' PrivacyService export. Only
    Nudge's own services may ask (internal token, AUTH_POLICY in bootstrap)."""

    SERVICE = "segmentation"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ExportContactData(
        self, request: privacy_pb2.ExportContactDataRequest, context: grpc.aio.ServicerContext
    ) -> privacy_pb2.ExportContactDataResponse:
        data = await handlers.export_contact(self.pool, current_workspace(), request.contact_id)
        struct = struct_pb2.Struct()
        json_format.ParseDict(data, struct)
        return privacy_pb2.ExportContactDataResponse(service=self.SERVICE, data=struct)
