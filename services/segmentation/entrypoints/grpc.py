"""gRPC servicer of the segmentation service: decode, call a use case, encode. No rules here.

Definitions are in :mod:`services.segmentation.definitions`, questions about members in
:mod:`services.segmentation.queries`. A rule's violations are field violations named by the
rule's path (``rule.all[1].value``), whether the rule came in ``rule`` (create, update,
validate) or in a query's ``target.rule``: the same path a manager reads in the rule.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.privacy.v1 import privacy_pb2, privacy_pb2_grpc
from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from services.common.auth import current_workspace
from services.common.errors import FieldViolation, InvalidArgument
from services.segmentation import definitions, handlers, queries
from services.segmentation.definitions import Catalogue, Definition
from services.segmentation.domain import evaluate

pb = segmentation_pb2


def segment_to_proto(d: Definition) -> pb.Segment:
    segment = pb.Segment(
        id=d.id,
        name=d.name,
        kind=pb.SEGMENT_KIND_BUILT_IN if d.built_in else pb.SEGMENT_KIND_CUSTOM,
        description=d.description,
        rule=d.rule_text,
        version=d.version,
        depends_on=list(d.depends_on),
    )
    if d.created_at is not None:
        segment.created_at.FromDatetime(d.created_at)
    if d.updated_at is not None:
        segment.updated_at.FromDatetime(d.updated_at)
    return segment


def _time(message: object, field: str = "as_of") -> datetime | None:
    """The request's ``field`` (a Timestamp) as a UTC datetime, None when unset."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    value: Timestamp = getattr(message, field)
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as err:
        raise InvalidArgument(FieldViolation(field, "not a valid timestamp")) from err


def _stamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _target(target: pb.SegmentTarget, *, fallback_id: str | None = None) -> queries.Target:
    """The request's target; without one, requests that kept a ``segment_id`` field (count,
    explain) name that segment (``fallback_id``), and its errors name that field."""
    field = "target"
    kind = target.WhichOneof("target")
    if kind == "rule":
        return queries.Target(rule=target.rule, field=field)
    if kind == "segment_id":
        return queries.Target(segment_id=target.segment_id, field=field)
    if fallback_id is not None:
        return queries.Target(segment_id=fallback_id, field="segment_id")
    return queries.Target(field=field)


def explanation_to_proto(e: evaluate.Explanation) -> pb.RuleNodeResult:
    return pb.RuleNodeResult(
        path=e.path,
        kind=e.kind,
        held=e.held,
        summary=e.summary,
        observed=dict(e.observed),
        children=[explanation_to_proto(c) for c in e.children],
    )


class SegmentServicer(segmentation_pb2_grpc.SegmentServiceServicer):
    """The segments of the caller's workspace: definitions, and who is in them."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def ListSegments(
        self, request: pb.ListSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSegmentsResponse:
        found = await definitions.list_segments(self.pool, current_workspace())
        return pb.ListSegmentsResponse(segments=[segment_to_proto(d) for d in found])

    async def GetSegment(
        self, request: pb.GetSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.Segment:
        return segment_to_proto(
            await definitions.get_segment(self.pool, current_workspace(), request.segment_id)
        )

    async def CreateSegment(
        self, request: pb.CreateSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.Segment:
        created = await definitions.create_segment(
            self.pool, current_workspace(), request.name, request.description, request.rule
        )
        return segment_to_proto(created)

    async def UpdateSegment(
        self, request: pb.UpdateSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.Segment:
        updated = await definitions.update_segment(
            self.pool,
            current_workspace(),
            request.segment_id,
            paths=list(request.update_mask.paths),
            name=request.name,
            description=request.description,
            rule_text=request.rule,
            expected_version=request.expected_version,
        )
        return segment_to_proto(updated)

    async def DeleteSegment(
        self, request: pb.DeleteSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSegmentResponse:
        await definitions.delete_segment(
            self.pool, current_workspace(), request.segment_id, request.expected_version
        )
        return pb.DeleteSegmentResponse()

    async def ValidateRule(
        self, request: pb.ValidateRuleRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidateRuleResponse:
        async with self.pool.acquire() as conn:
            catalogue = await Catalogue.load(conn, current_workspace())
        violations, doc = definitions.validate_rule(catalogue, request.rule)
        return pb.ValidateRuleResponse(
            valid=not violations,
            violations=[pb.RuleViolation(path=v.field, message=v.description) for v in violations],
            normalized_rule=definitions.rule_json(doc) if doc is not None else "",
        )

    async def CountSegment(
        self, request: pb.CountSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountSegmentResponse:
        target = _target(request.target, fallback_id=request.segment_id)
        count, as_of, earlier = await queries.count_with_history(
            self.pool, current_workspace(), target, _time(request)
        )
        answer = pb.CountSegmentResponse(count=count, as_of=_stamp(as_of))
        if earlier is not None:
            answer.earlier_count = earlier.count
            answer.earlier_day.FromDatetime(
                datetime.combine(earlier.day, datetime.min.time(), tzinfo=UTC)
            )
        return answer

    async def PreviewSegment(
        self, request: pb.PreviewSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.PreviewSegmentResponse:
        members, total, as_of = await queries.preview(
            self.pool, current_workspace(), _target(request.target), _time(request), request.limit
        )
        answer = pb.PreviewSegmentResponse(count=total, as_of=_stamp(as_of))
        for m in members:
            member = answer.members.add(
                contact_id=m.contact_id,
                email=m.email,
                first_name=m.first_name,
                last_name=m.last_name,
                total_spent=[
                    pb.Money(amount_minor=amount, currency=currency)
                    for currency, amount in m.total_spent.items()
                ],
                orders=m.orders,
                tags=m.tags,
                vip=m.vip,
            )
            if m.last_order_at is not None:
                member.last_order_at.FromDatetime(m.last_order_at)
        return answer

    async def StreamMembers(
        self, request: pb.StreamMembersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamMembersResponse]:
        workspace = current_workspace()
        queries.check_stream(request.after_contact_id, request.batch_size)
        as_of = queries.evaluation_time(_time(request))
        target = _target(request.target)
        await queries.prepare(self.pool, workspace, target)
        stamp = _stamp(as_of)
        sent = False
        async for batch in queries.stream_members(
            self.pool, workspace, target, as_of, request.after_contact_id, request.batch_size
        ):
            sent = True
            yield pb.StreamMembersResponse(
                members=[pb.Member(contact_id=r[0], email=r[1]) for r in batch], as_of=stamp
            )
        if not sent:  # no member: one empty message still says the evaluation time
            yield pb.StreamMembersResponse(as_of=stamp)

    async def ListContactSegments(
        self, request: pb.ListContactSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListContactSegmentsResponse:
        found, as_of = await queries.contact_segments(
            self.pool, current_workspace(), request.contact_id, _time(request)
        )
        return pb.ListContactSegmentsResponse(
            segments=[segment_to_proto(d) for d in found], as_of=_stamp(as_of)
        )

    async def ExplainMembership(
        self, request: pb.ExplainMembershipRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainMembershipResponse:
        target = _target(request.target, fallback_id=request.segment_id)
        explanation, as_of = await queries.explain_membership(
            self.pool, current_workspace(), target, request.contact_id, _time(request)
        )
        return pb.ExplainMembershipResponse(
            member=explanation.held, root=explanation_to_proto(explanation), as_of=_stamp(as_of)
        )

    async def SegmentOverlap(
        self, request: pb.SegmentOverlapRequest, context: grpc.aio.ServicerContext
    ) -> pb.SegmentOverlapResponse:
        result, as_of = await queries.overlap(
            self.pool, current_workspace(), list(request.segment_ids), _time(request)
        )
        return pb.SegmentOverlapResponse(
            segment_ids=result.segment_ids,
            sizes=result.sizes,
            counts=result.counts,
            union_count=result.union_count,
            as_of=_stamp(as_of),
        )


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
