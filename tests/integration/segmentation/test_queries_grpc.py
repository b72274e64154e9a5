"""SegmentService's queries over a read model written row by row (queries_support): count,
preview, stream, the segments of a contact, explain, overlap; each at an evaluation time, each
scoped to the caller's workspace, bad input refused with the field."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from nudge.segmentation.v1 import segmentation_pb2 as pb
from nudge.segmentation.v1 import segmentation_pb2_grpc

from tests.integration.conftest import RunningService, Workspace
from tests.integration.segmentation.queries_support import DAY, NOW, Order, Person, seed
from tests.integration.segmentation.test_segments_grpc import new_workspace, violations

ORDERED_TWICE = json.dumps({"field": "orders", "op": "gte", "value": 2})
NEWSLETTER = json.dumps({"tag": "newsletter"})


@pytest.fixture
async def stub(
    segmentation_service: RunningService,
) -> AsyncIterator[segmentation_pb2_grpc.SegmentServiceStub]:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        yield segmentation_pb2_grpc.SegmentServiceStub(ch)


def at(moment: datetime) -> dict[str, object]:
    request = pb.CountSegmentRequest()
    request.as_of.FromDatetime(moment)
    return {"as_of": request.as_of}


async def refused(call: object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    return err.value


async def custom(
    stub: segmentation_pb2_grpc.SegmentServiceStub, ws: Workspace, name: str, rule: str
) -> str:
    created = await stub.CreateSegment(
        pb.CreateSegmentRequest(name=name, rule=rule), metadata=ws.metadata
    )
    return str(created.id)


async def test_count_of_a_stored_segment_a_rule_and_the_old_field_at_an_evaluation_time(
    stub: segmentation_pb2_grpc.SegmentServiceStub, workspace: Workspace
) -> None:
    await seed(
        workspace.id,
        Person(tags=["newsletter"], orders=[Order(NOW - 10 * DAY), Order(NOW - DAY)]),
        Person(tags=["newsletter"], vip=True),
        Person(orders=[Order(NOW - 20 * DAY), Order(NOW - 5 * DAY), Order(NOW - 2 * DAY)]),
    )
    twice = await custom(stub, workspace, "Twice", ORDERED_TWICE)
    md = workspace.metadata

    async def count(request: pb.CountSegmentRequest) -> int:
        return int((await stub.CountSegment(request, metadata=md)).count)

    assert await count(pb.CountSegmentRequest(target=pb.SegmentTarget(segment_id=twice))) == 2
    assert await count(pb.CountSegmentRequest(target=pb.SegmentTarget(rule=NEWSLETTER))) == 2
    assert await count(pb.CountSegmentRequest(segment_id="vip")) == 1
    # The target wins over the old field.
    both = pb.CountSegmentRequest(segment_id="vip", target=pb.SegmentTarget(rule=ORDERED_TWICE))
    assert await count(both) == 2
    # Three days ago the first had ordered once; the third, twice.
    earlier = pb.CountSegmentRequest(target=pb.SegmentTarget(segment_id=twice), **at(NOW - 3 * DAY))
    assert await count(earlier) == 1
    answer = await stub.CountSegment(earlier, metadata=md)
    assert answer.as_of.ToDatetime(tzinfo=UTC) == NOW - 3 * DAY


async def test_preview_shows_the_first_members_with_their_figures_at_as_of(
    stub: segmentation_pb2_grpc.SegmentServiceStub, workspace: Workspace
) -> None:
    people = await seed(
        workspace.id,
        *[
            Person(
                first_name=f"Ada{i}",
                last_name="Lovelace",
                tags=["newsletter", "b"],
                vip=i == 0,
                orders=[
                    Order(NOW - 30 * DAY, 1500, "EUR"),
                    Order(NOW - 20 * DAY, 700, "USD"),
                    Order(NOW - 10 * DAY, 200, "EUR", status="refunded"),
                    Order(NOW - 2 * DAY, 300, "EUR"),
                ],
            )
            for i in range(5)
        ],
        Person(),  # not tagged: not a member
    )
    members = sorted(people[:5], key=lambda p: p.contact_id)
    answer = await stub.PreviewSegment(
        pb.PreviewSegmentRequest(target=pb.SegmentTarget(rule=NEWSLETTER), limit=3),
        metadata=workspace.metadata,
    )
    assert answer.count == 5
    assert [m.contact_id for m in answer.members] == [p.contact_id for p in members[:3]]
    first = answer.members[0]
    person = members[0]
    assert (first.email, first.first_name, first.last_name) == (
        person.email,
        person.first_name,
        "Lovelace",
    )
    assert list(first.tags) == ["b", "newsletter"] and first.vip == person.vip
    assert first.orders == 3
    assert first.last_order_at.ToDatetime(tzinfo=UTC) == NOW - 2 * DAY
    assert {(t.currency, t.amount_minor) for t in first.total_spent} == {
        ("EUR", 1800),
        ("USD", 700),
    }
    # Before the last order: it is not seen in the figures either.
    earlier = await stub.PreviewSegment(
        pb.PreviewSegmentRequest(target=pb.SegmentTarget(rule=NEWSLETTER), **at(NOW - 3 * DAY)),
        metadata=workspace.metadata,
    )
    assert earlier.count == 5 and len(earlier.members) == 5  # limit 20 when unset
    first = earlier.members[0]
    assert first.orders == 2
    assert first.last_order_at.ToDatetime(tzinfo=UTC) == NOW - 20 * DAY
    assert {(t.currency, t.amount_minor) for t in first.total_spent} == {
        ("EUR", 1500),
        ("USD", 700),
    }
    # No member: an empty page and a count of 0 (before anyone ordered).
    nobody = await stub.PreviewSegment(
        pb.PreviewSegmentRequest(target=pb.SegmentTarget(rule=ORDERED_TWICE), **at(NOW - 99 * DAY)),
        metadata=workspace.metadata,
    )
    assert (nobody.count, list(nobody.members)) == (0, [])
    for limit in (-1, 101):
        err = await refused(
            stub.PreviewSegment(
                pb.PreviewSegmentRequest(target=pb.SegmentTarget(segment_id="vip"), limit=limit),
                metadata=workspace.metadata,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violations(err) == ["limit"]


async def stream(
    stub: segmentation_pb2_grpc.SegmentServiceStub, ws: Workspace, **kw: object
) -> list[pb.StreamMembersResponse]:
    return [
        m async for m in stub.StreamMembers(pb.StreamMembersRequest(**kw), metadata=ws.metadata)
    ]  # type: ignore[arg-type]


async def test_stream_members_in_ascending_batches_and_resume_after_a_contact(
    stub: segmentation_pb2_grpc.SegmentServiceStub, workspace: Workspace
) -> None:
    people = await seed(workspace.id, *[Person(vip=i % 3 != 0) for i in range(30)])
    vips = sorted(p.contact_id for p in people if p.vip)
    assert len(vips) == 20
    vip = pb.SegmentTarget(segment_id="vip")
    messages = await stream(stub, workspace, target=vip, batch_size=7, **at(NOW))
    assert [len(m.members) for m in messages] == [7, 7, 6]
    assert [m.contact_id for msg in messages for m in msg.members] == vips
    assert {m.as_of.ToDatetime(tzinfo=UTC) for m in messages} == {NOW}
    emails = {p.contact_id: p.email for p in people}
    assert all(m.email == emails[m.contact_id] for msg in messages for m in msg.members)

    resumed = await stream(stub, workspace, target=vip, after_contact_id=vips[7])
    assert [m.contact_id for msg in resumed for m in msg.members] == vips[8:]
    # Nobody: one empty message still carries the evaluation time.
    empty = await stream(stub, workspace, target=vip, after_contact_id=vips[-1])
    assert len(empty) == 1 and not empty[0].members and empty[0].HasField("as_of")


async def test_stream_refuses_bad_input_before_any_message(
    stub: segmentation_pb2_grpc.SegmentServiceStub, workspace: Workspace
) -> None:
    vip = pb.SegmentTarget(segment_id="vip")
    for kw, field in [
        ({"batch_size": 5001}, "batch_size"),
        ({"batch_size": -1}, "batch_size"),
        ({"after_contact_id": "not-a-uuid"}, "after_contact_id"),
    ]:
        err = await refused(
            stream(stub, workspace, target=vip, **kw), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert violations(err) == [field]
    err = await refused(stream(stub, workspace), grpc.StatusCode.INVALID_ARGUMENT)
    assert violations(err) == ["target"]
    bad_rule = pb.SegmentTarget(rule='{"field": "nope", "op": "eq", "value": 1}')
    err = await refused(stream(stub, workspace, target=bad_rule), grpc.StatusCode.INVALID_ARGUMENT)
    assert all(f.startswith("rule") for f in violations(err))
    unknown = pb.SegmentTarget(segment_id=str(uuid.uuid4()))
    await refused(stream(stub, workspace, target=unknown), grpc.StatusCode.NOT_FOUND)


async def test_the_segments_of_a_contact_built_in_and_custom(
    stub: segmentation_pb2_grpc.SegmentServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    star, plain = await seed(
        workspace.id,
        Person(vip=True, tags=["newsletter"], orders=[Order(NOW - 5 * DAY)]),
        Person(),
    )
    readers = await custom(stub, workspace, "Readers", NEWSLETTER)
    await custom(stub, workspace, "Twice", ORDERED_TWICE)
    answer = await stub.ListContactSegments(
        pb.ListContactSegmentsRequest(contact_id=star.contact_id, **at(NOW)),
        metadata=workspace.metadata,
    )
    ids = [s.id for s in answer.segments]
    assert {"vip", readers} <= set(ids) and "repeat_buyer" not in ids
    assert ids.index("vip") < ids.index(readers)  # built-ins first
    nothing = await stub.ListContactSegments(
        pb.ListContactSegmentsRequest(contact_id=plain.contact_id), metadata=workspace.metadata
    )
    assert [s.id for s in nothing.segments] == []

    other = await new_workspace(contacts_service, "Other")
    for contact_id, ws in [(star.contact_id, other), (str(uuid.uuid4()), workspace)]:
        await refused(
            stub.ListContactSegments(
                pb.ListContactSegmentsRequest(contact_id=contact_id), metadata=ws.metadata
            ),
            grpc.StatusCode.NOT_FOUND,
        )
    await refused(
        stub.ListContactSegments(
            pb.ListContactSegmentsRequest(contact_id="nobody"), metadata=workspace.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_explain_says_which_clause_held_and_which_failed(
    stub: segmentation_pb2_grpc.SegmentServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    (person,) = await seed(workspace.id, Person(tags=["newsletter"], orders=[Order(NOW - DAY)]))
    rule = json.dumps({"all": [{"tag": "newsletter"}, json.loads(ORDERED_TWICE)]})
    segment = await custom(stub, workspace, "Readers who reorder", rule)
    answer = await stub.ExplainMembership(
        pb.ExplainMembershipRequest(segment_id=segment, contact_id=person.contact_id),
        metadata=workspace.metadata,
    )
    assert not answer.member
    root = answer.root
    assert (root.path, root.kind, root.held) == ("rule", "all", False)
    assert [(c.path, c.kind, c.held) for c in root.children] == [
        ("rule.all[0]", "tag", True),
        ("rule.all[1]", "field", False),
    ]
    assert "1" in root.children[1].observed.values()  # the one order it looked at
    as_rule = await stub.ExplainMembership(
        pb.ExplainMembershipRequest(
            target=pb.SegmentTarget(rule=NEWSLETTER), contact_id=person.contact_id
        ),
        metadata=workspace.metadata,
    )
    assert as_rule.member and as_rule.root.held
    other = await new_workspace(contacts_service, "Other")
    await refused(
        stub.ExplainMembership(
            pb.ExplainMembershipRequest(segment_id="vip", contact_id=person.contact_id),
            metadata=other.metadata,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await refused(
        stub.ExplainMembership(
            pb.ExplainMembershipRequest(segment_id=segment, contact_id=person.contact_id),
            metadata=other.metadata,
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_overlap_counts_every_pair_and_the_union(
    stub: segmentation_pb2_grpc.SegmentServiceStub, workspace: Workspace
) -> None:
    await seed(
        workspace.id,
        Person(vip=True, tags=["newsletter"]),
        Person(vip=True),
        Person(tags=["newsletter"]),
        Person(tags=["newsletter"], orders=[Order(NOW - DAY), Order(NOW - 2 * DAY)]),
        Person(),
    )
    readers = await custom(stub, workspace, "Readers", NEWSLETTER)
    twice = await custom(stub, workspace, "Twice", ORDERED_TWICE)
    answer = await stub.SegmentOverlap(
        pb.SegmentOverlapRequest(segment_ids=["vip", readers, twice], **at(NOW)),
        metadata=workspace.metadata,
    )
    assert list(answer.segment_ids) == ["vip", readers, twice]
    assert list(answer.sizes) == [2, 3, 1]
    assert list(answer.counts) == [2, 1, 0, 1, 3, 1, 0, 1, 1]
    assert answer.union_count == 4
    for ids, field in [
        (["vip"], "segment_ids"),
        (["vip"] * 21, "segment_ids"),
        (["vip", "loyal", "vip"], "segment_ids[2]"),
        (["vip", ""], "segment_ids[1]"),
    ]:
        err = await refused(
            stub.SegmentOverlap(
                pb.SegmentOverlapRequest(segment_ids=ids), metadata=workspace.metadata
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert field in violations(err)
    await refused(
        stub.SegmentOverlap(
            pb.SegmentOverlapRequest(segment_ids=["vip", str(uuid.uuid4())]),
            metadata=workspace.metadata,
        ),
        grpc.StatusCode.NOT_FOUND,
    )


@pytest.mark.parametrize("seconds", [10**12, -(10**12), -2209075200, 221845392000])
async def test_an_evaluation_time_out_of_range_is_refused(
    stub: segmentation_pb2_grpc.SegmentServiceStub, workspace: Workspace, seconds: int
) -> None:
    # Beyond Timestamp's range, 1899-12-31 and 9000-01-01.
    vip = pb.SegmentTarget(segment_id="vip")
    requests = [
        (stub.CountSegment, pb.CountSegmentRequest(target=vip)),
        (stub.PreviewSegment, pb.PreviewSegmentRequest(target=vip)),
        (stub.SegmentOverlap, pb.SegmentOverlapRequest(segment_ids=["vip", "loyal"])),
        (
            stub.ListContactSegments,
            pb.ListContactSegmentsRequest(contact_id=str(uuid.uuid4())),
        ),
    ]
    for method, request in requests:
        request.as_of.seconds = seconds  # type: ignore[attr-defined]
        err = await refused(
            method(request, metadata=workspace.metadata), grpc.StatusCode.INVALID_ARGUMENT
        )  # type: ignore[operator]
        assert violations(err) == ["as_of"]
    request = pb.StreamMembersRequest(target=vip)
    request.as_of.seconds = seconds
    err = await refused(
        stub.StreamMembers(request, metadata=workspace.metadata).read(),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(err) == ["as_of"]


async def test_an_ad_hoc_rule_is_checked_like_a_stored_one(
    stub: segmentation_pb2_grpc.SegmentServiceStub, workspace: Workspace
) -> None:
    for rule in ['{"tag": ', '{"all": []}', '{"tag": "a\\u0000"}', '"vip"']:
        err = await refused(
            stub.CountSegment(
                pb.CountSegmentRequest(target=pb.SegmentTarget(rule=rule)),
                metadata=workspace.metadata,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert all(f.startswith("rule") for f in violations(err)), rule
