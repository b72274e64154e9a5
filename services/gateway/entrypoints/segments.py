"""``/v1/segments``: built-in and custom segments, who is in them, why, and how they
overlap (SegmentService; docs/segments-api.md).

The custom methods (``/v1/segments:validate``, ``:count``, ``:overlap``) hang off the
collection, not off ``/v1/segments/{segment_id}``, so no id segment can swallow them.

Members are served as JSON pages with a cursor (``after``: the last contact id of the
previous page) rather than one streamed NDJSON answer: a page is an ordinary JSON document
that every client and the OpenAPI document describe, an interrupted export resumes from its
last page, and each page is one bounded read of SegmentService.StreamMembers (ascending
contact id, keyset order). Pass the first page's ``as_of`` back so every page is evaluated at
the same moment. Campaigns' fan-out streams over gRPC directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Annotated, TypeVar

import grpc
from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from nudge.segmentation.v1 import segmentation_pb2

from services.gateway import convert, problems
from services.gateway.adapters.grpc import Backends
from services.gateway.deps import BackendsDep, Caller, CallerDep
from services.gateway.paths import CONTACT_ID_PATTERN, ContactId
from services.gateway.schemas import (
    AS_OF_DESCRIPTION,
    UUID_PATTERN,
    AdHocCountIn,
    AdHocPreviewIn,
    ContactSegments,
    MemberOut,
    MemberPage,
    MembershipExplanation,
    OverlapIn,
    OverlapOut,
    Rfc3339,
    RuleCount,
    RuleIn,
    RuleValidation,
    RuleViolationOut,
    SegmentCount,
    SegmentIn,
    SegmentList,
    SegmentOut,
    SegmentPatchIn,
    SegmentPreview,
)

router = APIRouter(tags=["segments"])

SegmentId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=200,
        pattern=CONTACT_ID_PATTERN,
        description="A segment id: a built-in's name (`vip`) or a custom segment's UUID.",
    ),
]
AsOf = Annotated[Rfc3339 | None, Query(description=AS_OF_DESCRIPTION)]
IfMatch = Annotated[
    str,
    Header(
        pattern=r'^(?:"?[1-9][0-9]{0,17}"?)?$',
        description="The segment's `version` (its ETag) the change is meant for: 409 when it"
        " changed since.",
    ),
]
SEGMENTATION = "segmentation"
R = TypeVar("R")

# A new contact reaches segmentation through contacts.events.v1, a moment after contacts
# answered its creation. A client that creates a contact and at once asks for its segments
# (as schemathesis's stateful phase does) must not be told that it does not exist: when
# segmentation does not know the contact but contacts does, the gateway waits for
# segmentation to catch up, then answers 503 with Retry-After rather than a false 404.
CATCH_UP_S = 5.0
CATCH_UP_POLL_S = 0.1


def _unknown_contact(problem: problems.Problem) -> bool:
    return problem.status == 404 and problem.details.detail.startswith("contact ")


async def _about_contact(
    call: Callable[[], Awaitable[R]], contact_id: str, caller: Caller, backends: Backends
) -> R:
    """``call()`` (a segmentation RPC about ``contact_id``), read-your-writes: see above."""
    try:
        return await call()
    except problems.Problem as problem:
        if not _unknown_contact(problem):
            raise
        unknown = problem
    try:  # contacts owns the contact: a 404 there is the true answer
        await caller.call(
            backends.contacts.GetContact,
            convert.get_contact_request(contact_id),
            service="contacts",
        )
    except problems.Problem as problem:
        if problem.status == 404:
            raise unknown from None
        raise
    deadline = time.monotonic() + CATCH_UP_S
    while time.monotonic() < deadline:
        await asyncio.sleep(CATCH_UP_POLL_S)
        try:
            return await call()
        except problems.Problem as problem:
            if not _unknown_contact(problem):
                raise
    raise problems.Problem(
        503,
        "unavailable",
        "Service unavailable",
        f"contact {contact_id[:100]!r} exists but segmentation has not received it yet;"
        " retry shortly",
        headers={"Retry-After": "1"},
    )


def _etag(response: Response, segment: segmentation_pb2.Segment) -> None:
    response.headers["ETag"] = f'"{segment.version}"'


def _version(if_match: str) -> int:
    return int(if_match.strip('"')) if if_match else 0


@router.get(
    "/v1/segments",
    response_model=SegmentList,
    summary="List segments",
    responses=problems.responses(401, 503),
)
async def list_segments(caller: CallerDep, backends: BackendsDep) -> SegmentList:
    """Every segment of the workspace: the built-in lifecycle ones first, then custom ones by
    name."""
    answer: segmentation_pb2.ListSegmentsResponse = await caller.call(
        backends.segments.ListSegments,
        segmentation_pb2.ListSegmentsRequest(),
        service=SEGMENTATION,
    )
    return SegmentList(segments=[convert.segment_json(s) for s in answer.segments])


@router.post(
    "/v1/segments",
    status_code=201,
    response_model=SegmentOut,
    summary="Create a custom segment",
    responses=problems.responses(400, 401, 409, 413, 422, 503),
)
async def create_segment(
    body: SegmentIn, caller: CallerDep, backends: BackendsDep, request: Request, response: Response
) -> SegmentOut:
    """A segment of the workspace's own. A name taken (case-insensitively, built-ins'
    included): 409. An invalid rule: 422 with one error per violation, named by its path
    (`rule.all[1].value`); a reference to an unknown segment or a cycle is such a violation."""
    answer: segmentation_pb2.Segment = await caller.call(
        backends.segments.CreateSegment,
        segmentation_pb2.CreateSegmentRequest(
            name=body.name, description=body.description, rule=convert.rule_text(body.rule)
        ),
        service=SEGMENTATION,
    )
    _etag(response, answer)
    response.headers["Location"] = request.app.url_path_for("get_segment", segment_id=answer.id)
    return convert.segment_json(answer)


@router.post(
    "/v1/segments:validate",
    response_model=RuleValidation,
    summary="Check a rule without saving it",
    responses=problems.responses(400, 401, 413, 422, 503),
)
async def validate_rule(body: RuleIn, caller: CallerDep, backends: BackendsDep) -> RuleValidation:
    """Always 200 for a rule object: an invalid rule's violations are the answer (`valid`
    false), each with the path of its node."""
    answer: segmentation_pb2.ValidateRuleResponse = await caller.call(
        backends.segments.ValidateRule,
        segmentation_pb2.ValidateRuleRequest(rule=convert.rule_text(body.rule)),
        service=SEGMENTATION,
    )
    return RuleValidation(
        valid=answer.valid,
        violations=[RuleViolationOut(path=v.path, message=v.message) for v in answer.violations],
        normalized_rule=convert._rule_object(answer.normalized_rule) if answer.valid else None,
    )


@router.post(
    "/v1/segments:count",
    response_model=RuleCount,
    summary="Count the contacts a rule picks (not saved)",
    responses=problems.responses(400, 401, 413, 422, 503),
)
async def count_rule(body: AdHocCountIn, caller: CallerDep, backends: BackendsDep) -> RuleCount:
    """How many contacts the rule picks at `as_of`, without saving it."""
    request = segmentation_pb2.CountSegmentRequest(
        target=segmentation_pb2.SegmentTarget(rule=convert.rule_text(body.rule))
    )
    if body.as_of is not None:
        request.as_of.FromDatetime(body.as_of)
    answer: segmentation_pb2.CountSegmentResponse = await caller.call(
        backends.segments.CountSegment, request, service=SEGMENTATION
    )
    counted = convert.segment_count_json("", answer)
    return RuleCount(count=counted.count, as_of=counted.as_of)


@router.post(
    "/v1/segments:preview",
    response_model=SegmentPreview,
    summary="The first members a rule picks (not saved)",
    responses=problems.responses(400, 401, 413, 422, 503),
)
async def preview_rule(
    body: AdHocPreviewIn, caller: CallerDep, backends: BackendsDep
) -> SegmentPreview:
    """The first `limit` contacts the rule picks at `as_of` by contact id, with what a manager
    needs to recognise them, and the number of all: the rule builder's preview, without
    saving the rule (as `GET /v1/segments/{segment_id}/preview` for a saved one)."""
    request = segmentation_pb2.PreviewSegmentRequest(
        target=segmentation_pb2.SegmentTarget(rule=convert.rule_text(body.rule)),
        limit=body.limit,
    )
    if body.as_of is not None:
        request.as_of.FromDatetime(body.as_of)
    answer: segmentation_pb2.PreviewSegmentResponse = await caller.call(
        backends.segments.PreviewSegment, request, service=SEGMENTATION
    )
    return convert.preview_json(answer)


@router.post(
    "/v1/segments:overlap",
    response_model=OverlapOut,
    summary="How chosen segments overlap",
    responses=problems.responses(400, 401, 404, 413, 422, 503),
)
async def overlap(body: OverlapIn, caller: CallerDep, backends: BackendsDep) -> OverlapOut:
    """For every pair of the segments, the contacts in both (one scan of the workspace), each
    segment's size and the union (what a campaign to all of them reaches). An unknown segment
    id: 404."""
    request = segmentation_pb2.SegmentOverlapRequest(segment_ids=body.segment_ids)
    if body.as_of is not None:
        request.as_of.FromDatetime(body.as_of)
    answer: segmentation_pb2.SegmentOverlapResponse = await caller.call(
        backends.segments.SegmentOverlap, request, service=SEGMENTATION
    )
    return convert.overlap_json(answer)


@router.get(
    "/v1/segments/{segment_id}",
    response_model=SegmentOut,
    summary="Get a segment",
    responses=problems.responses(401, 404, 422, 503),
)
async def get_segment(
    segment_id: SegmentId, caller: CallerDep, backends: BackendsDep, response: Response
) -> SegmentOut:
    """The segment with its rule; its ETag is its version (`If-Match` of PATCH and DELETE)."""
    answer: segmentation_pb2.Segment = await caller.call(
        backends.segments.GetSegment,
        segmentation_pb2.GetSegmentRequest(segment_id=segment_id),
        service=SEGMENTATION,
    )
    _etag(response, answer)
    return convert.segment_json(answer)


@router.patch(
    "/v1/segments/{segment_id}",
    response_model=SegmentOut,
    summary="Change a custom segment (JSON merge patch)",
    responses=problems.responses(400, 401, 404, 409, 413, 422, 503),
)
async def patch_segment(
    segment_id: SegmentId,
    body: Annotated[SegmentPatchIn, Body(media_type="application/merge-patch+json")],
    caller: CallerDep,
    backends: BackendsDep,
    response: Response,
    if_match: IfMatch = "",
) -> SegmentOut:
    """Sets the members given (a plain JSON body with the same members works too); the
    version grows by one. A built-in segment cannot be changed (409); with `If-Match`, a
    segment changed meanwhile: 409. A rule that would make a cycle: 422."""
    answer: segmentation_pb2.Segment = await caller.call(
        backends.segments.UpdateSegment,
        convert.update_segment_request(segment_id, body, _version(if_match)),
        service=SEGMENTATION,
    )
    _etag(response, answer)
    return convert.segment_json(answer)


@router.delete(
    "/v1/segments/{segment_id}",
    status_code=204,
    summary="Delete a custom segment",
    responses=problems.responses(401, 404, 409, 422, 503),
)
async def delete_segment(
    segment_id: SegmentId, caller: CallerDep, backends: BackendsDep, if_match: IfMatch = ""
) -> None:
    """A segment another segment references cannot be deleted (409, naming them), nor a
    built-in one (409)."""
    await caller.call(
        backends.segments.DeleteSegment,
        segmentation_pb2.DeleteSegmentRequest(
            segment_id=segment_id, expected_version=_version(if_match)
        ),
        service=SEGMENTATION,
    )


@router.get(
    "/v1/segments/{segment_id}/count",
    response_model=SegmentCount,
    summary="Count a segment's contacts",
    responses=problems.responses(401, 404, 422, 503),
)
async def count_segment(
    segment_id: SegmentId, caller: CallerDep, backends: BackendsDep, as_of: AsOf = None
) -> SegmentCount:
    """How many contacts are in the segment at `as_of`."""
    answer: segmentation_pb2.CountSegmentResponse = await caller.call(
        backends.segments.CountSegment,
        convert.count_segment_request(segment_id, as_of),
        service=SEGMENTATION,
    )
    return convert.segment_count_json(segment_id, answer)


@router.get(
    "/v1/segments/{segment_id}/preview",
    response_model=SegmentPreview,
    summary="The first members, with what a manager needs",
    responses=problems.responses(401, 404, 422, 503),
)
async def preview_segment(
    segment_id: SegmentId,
    caller: CallerDep,
    backends: BackendsDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Members shown (1-100).")] = 20,
    as_of: AsOf = None,
) -> SegmentPreview:
    """The first `limit` members by contact id (name, e-mail, last order, total spent per
    currency, orders, tags, VIP) and the number of every member."""
    request = segmentation_pb2.PreviewSegmentRequest(
        target=segmentation_pb2.SegmentTarget(segment_id=segment_id), limit=limit
    )
    if as_of is not None:
        request.as_of.FromDatetime(as_of)
    answer: segmentation_pb2.PreviewSegmentResponse = await caller.call(
        backends.segments.PreviewSegment, request, service=SEGMENTATION
    )
    return convert.preview_json(answer)


@router.get(
    "/v1/segments/{segment_id}/members",
    response_model=MemberPage,
    summary="Every member, a page at a time",
    responses=problems.responses(401, 404, 422, 503),
)
async def list_members(
    segment_id: SegmentId,
    caller: CallerDep,
    backends: BackendsDep,
    after: Annotated[
        str | None,
        Query(
            pattern=UUID_PATTERN,
            description="The previous page's `next_after`: members after this contact id.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000, description="Members per page.")] = 1000,
    as_of: AsOf = None,
) -> MemberPage:
    """Members in ascending contact id. The answer's `as_of` and `next_after` fetch the next
    page (null at the end)."""
    request = segmentation_pb2.StreamMembersRequest(
        target=segmentation_pb2.SegmentTarget(segment_id=segment_id),
        after_contact_id=after or "",
        batch_size=limit,
    )
    if as_of is not None:
        request.as_of.FromDatetime(as_of)
    call = backends.segments.StreamMembers(
        request, metadata=caller.metadata, timeout=caller.timeout_s
    )
    first: segmentation_pb2.StreamMembersResponse | None = None
    try:
        async for message in call:
            first = message
            break
    except grpc.aio.AioRpcError as err:
        raise problems.from_rpc_error(err, SEGMENTATION, None) from err
    finally:
        call.cancel()
    if first is None:  # the service always sends a message; none means it broke off
        raise problems.Problem(503, "unavailable", "Service unavailable", "no answer")
    members = list(first.members)
    return MemberPage(
        members=[MemberOut(contact_id=m.contact_id, email=m.email) for m in members],
        next_after=members[-1].contact_id if len(members) == limit else None,
        as_of=first.as_of.ToDatetime(tzinfo=UTC),
    )


@router.get(
    "/v1/segments/{segment_id}/explain/{contact_id}",
    response_model=MembershipExplanation,
    summary="Why a contact is in a segment or not",
    responses=problems.responses(401, 404, 422, 503),
)
async def explain_membership(
    segment_id: SegmentId,
    contact_id: ContactId,
    caller: CallerDep,
    backends: BackendsDep,
    as_of: AsOf = None,
) -> MembershipExplanation:
    """The rule evaluated for the contact, node by node: which clause held or failed, with
    the values it looked at."""
    request = segmentation_pb2.ExplainMembershipRequest(
        target=segmentation_pb2.SegmentTarget(segment_id=segment_id), contact_id=contact_id
    )
    if as_of is not None:
        request.as_of.FromDatetime(as_of)
    answer: segmentation_pb2.ExplainMembershipResponse = await _about_contact(
        lambda: caller.call(backends.segments.ExplainMembership, request, service=SEGMENTATION),
        contact_id,
        caller,
        backends,
    )
    return MembershipExplanation(
        member=answer.member,
        root=convert.rule_node_json(answer.root),
        as_of=answer.as_of.ToDatetime(tzinfo=UTC),
    )


@router.get(
    "/v1/contacts/{contact_id}/segments",
    response_model=ContactSegments,
    tags=["segments"],
    summary="The segments a contact is in",
    responses=problems.responses(401, 404, 422, 503),
)
async def contact_segments(
    contact_id: ContactId, caller: CallerDep, backends: BackendsDep, as_of: AsOf = None
) -> ContactSegments:
    """Every segment, built-in and custom, the contact is in at `as_of`."""
    request = segmentation_pb2.ListContactSegmentsRequest(contact_id=contact_id)
    if as_of is not None:
        request.as_of.FromDatetime(as_of)
    answer: segmentation_pb2.ListContactSegmentsResponse = await _about_contact(
        lambda: caller.call(backends.segments.ListContactSegments, request, service=SEGMENTATION),
        contact_id,
        caller,
        backends,
    )
    return ContactSegments(
        contact_id=contact_id,
        segments=[convert.segment_json(s) for s in answer.segments],
        as_of=answer.as_of.ToDatetime(tzinfo=UTC),
    )
