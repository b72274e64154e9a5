"""A campaign's lifecycle over real gRPC, PostgreSQL, segmentation, contacts and delivery:
every field stored, drafts updated by mask, send now or later (the scheduler on a moved
clock), pause, resume, cancel, the transitions with their actors, the workspace's settings,
and each refusal (suspended workspace, consent confirmation, replay, another workspace)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from nudge.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc

from services.common import clock
from services.common.auth import parse_key_id
from tests.integration.campaigns.test_campaigns_grpc import draft, new_workspace, violations
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.support import eventually, free_port, unique

S = campaigns_pb2
Stub = campaigns_pb2_grpc.CampaignServiceStub


@pytest.fixture(scope="module")
async def delivery_for_campaigns(
    contacts_service: RunningService,
) -> AsyncIterator[RunningService]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    async with run_in_process(serve, Settings(grpc_port=port), port) as running:
        yield running


@pytest.fixture(scope="module")
async def lifecycle_service(
    segmentation_for_campaigns: RunningService, delivery_for_campaigns: RunningService
) -> AsyncIterator[RunningService]:
    from services.campaigns.bootstrap import serve
    from services.campaigns.config import Settings

    port = free_port()
    settings = Settings(
        grpc_port=port,
        segmentation_addr=segmentation_for_campaigns.address,
        delivery_addr=delivery_for_campaigns.address,
    )
    async with run_in_process(serve, settings, port) as running:
        yield running


@pytest.fixture
async def stub(lifecycle_service: RunningService) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(lifecycle_service.address) as ch:
        yield Stub(ch)


@pytest.fixture
def moved_clock() -> Iterator[None]:
    """Restores the real clock after a test that moved it."""
    yield
    clock.set_clock(clock.SystemClock())


async def create(stub: Stub, ws: Workspace, **campaign: object) -> S.Campaign:
    request = draft()
    request.campaign.CopyFrom(S.Campaign(**campaign))  # type: ignore[arg-type]
    return (await stub.CreateCampaign(request, metadata=ws.metadata)).campaign


def ts(at: datetime) -> object:
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromDatetime(at)
    return t


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value


async def statuses(stub: Stub, ws: Workspace, campaign_id: str) -> list[tuple[int, int, str]]:
    answer = await stub.ListTransitions(
        S.ListTransitionsRequest(campaign_id=campaign_id), metadata=ws.metadata
    )
    return [(t.from_status, t.to_status, t.actor) for t in answer.transitions]


async def test_every_field_is_stored_and_read_back(stub: Stub, workspace: Workspace) -> None:
    ab = S.AbTest(subjects=["Spring A", "Spring B"], sample_percent=20, metric=2)
    ab.decide_after.FromSeconds(3600)
    c = await create(
        stub,
        workspace,
        exclude_segment_ids=["lost"],
        tags_any=["newsletter"],
        body_html="<p>Hello</p>",
        reply_to="anna@example.com",
        purpose=1,
        cap_action=2,
        local_time=True,
        time_zone="Europe/Berlin",
        ab_test=ab,
        holdout_percent=10,
    )
    assert (list(c.exclude_segment_ids), list(c.tags_any)) == (["lost"], ["newsletter"])
    assert (c.body_html, c.reply_to, c.purpose, c.cap_action) == (
        "<p>Hello</p>",
        "anna@example.com",
        1,
        2,
    )
    assert (c.local_time, c.time_zone, c.holdout_percent) == (True, "Europe/Berlin", 10)
    assert list(c.ab_test.subjects) == ["Spring A", "Spring B"]
    assert (c.ab_test.sample_percent, c.ab_test.metric, c.ab_test.winner) == (20, 2, -1)
    assert c.ab_test.decide_after.seconds == 3600 and c.HasField("updated_at")
    got = await stub.GetCampaign(
        S.GetCampaignRequest(campaign_id=c.id), metadata=workspace.metadata
    )
    assert got.campaign == c
    listed = await stub.ListCampaigns(S.ListCampaignsRequest(), metadata=workspace.metadata)
    assert c in listed.campaigns
    plain = await create(stub, workspace)
    assert plain.purpose == 2 and plain.cap_action == 1 and not plain.HasField("ab_test")


async def test_bad_fields_and_unknown_or_foreign_segments_are_named(
    stub: Stub,
    workspace: Workspace,
    segmentation_for_campaigns: RunningService,
    contacts_service: RunningService,
) -> None:
    err = await refused(
        create(
            stub,
            workspace,
            exclude_segment_ids=["nope"],
            tags_any=["Bad Tag"],
            reply_to="x@",
            purpose=5,
            time_zone="Nowhere/City",
            holdout_percent=80,
            ab_test=S.AbTest(subjects=["same", "same"], sample_percent=90),
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err) == [
        "tags_any[0]",
        "reply_to",
        "purpose",
        "time_zone",
        "holdout_percent",
        "ab_test.subjects[1]",
        "ab_test.sample_percent",
        "ab_test.decide_after",
        "exclude_segment_ids[0]",
    ]
    # Another workspace's custom segment is unknown here, included or excluded; the
    # workspace's own is known.
    from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

    other = await new_workspace(contacts_service)
    async with grpc.aio.insecure_channel(segmentation_for_campaigns.address) as ch:
        segments = segmentation_pb2_grpc.SegmentServiceStub(ch)
        rule = '{"tag": "newsletter"}'
        theirs = await segments.CreateSegment(
            segmentation_pb2.CreateSegmentRequest(name=unique("s"), rule=rule),
            metadata=other.metadata,
        )
        ours = await segments.CreateSegment(
            segmentation_pb2.CreateSegmentRequest(name=unique("s"), rule=rule),
            metadata=workspace.metadata,
        )
    err = await refused(create(stub, workspace, exclude_segment_ids=[theirs.id]))
    assert violations(err) == ["exclude_segment_ids[0]"]
    request = draft(segment_ids=[theirs.id])
    err = await refused(stub.CreateCampaign(request, metadata=workspace.metadata))
    assert violations(err) == ["segment_ids[0]"]
    mine = await create(stub, workspace, exclude_segment_ids=[ours.id])
    assert list(mine.exclude_segment_ids) == [ours.id]


async def test_update_changes_masked_fields_of_drafts_only(
    stub: Stub, workspace: Workspace
) -> None:
    c = await create(stub, workspace, tags_any=["newsletter"])
    changed = S.Campaign(id=c.id, subject="New subject", tags_any=[], holdout_percent=5)
    updated = await stub.UpdateCampaign(
        S.UpdateCampaignRequest(
            campaign=changed, update_mask=FieldMask(paths=["subject", "tags_any"])
        ),
        metadata=workspace.metadata,
    )
    assert (updated.subject, list(updated.tags_any), updated.holdout_percent) == (
        "New subject",
        [],
        0,  # not in the mask: kept
    )
    assert updated.name == c.name and updated.updated_at.ToDatetime() >= c.updated_at.ToDatetime()
    for mask, fields in [
        ([], ["update_mask"]),
        (["status"], ["update_mask.paths[0]"]),
        (["subject", "subject"], ["update_mask"]),
    ]:
        err = await refused(
            stub.UpdateCampaign(
                S.UpdateCampaignRequest(campaign=changed, update_mask=FieldMask(paths=mask)),
                metadata=workspace.metadata,
            )
        )
        assert violations(err) == fields
    bad = S.Campaign(id=c.id, subject="", time_zone="Bad/Zone")
    err = await refused(
        stub.UpdateCampaign(
            S.UpdateCampaignRequest(
                campaign=bad, update_mask=FieldMask(paths=["subject", "time_zone"])
            ),
            metadata=workspace.metadata,
        )
    )
    assert violations(err) == ["subject", "time_zone"]
    got = await stub.GetCampaign(
        S.GetCampaignRequest(campaign_id=c.id), metadata=workspace.metadata
    )
    assert got.campaign == updated  # nothing half-written
    await stub.SendCampaign(S.SendCampaignRequest(campaign_id=c.id), metadata=workspace.metadata)
    err = await refused(
        stub.UpdateCampaign(
            S.UpdateCampaignRequest(campaign=changed, update_mask=FieldMask(paths=["subject"])),
            metadata=workspace.metadata,
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only drafts can be changed; this campaign is sending" in str(err.details())


async def test_send_pause_resume_cancel_are_recorded_with_their_actor(
    stub: Stub, workspace: Workspace
) -> None:
    c = await create(stub, workspace)
    md = workspace.metadata
    actor = f"api_key:{parse_key_id(workspace.api_key)}"
    sent = await stub.SendCampaign(S.SendCampaignRequest(campaign_id=c.id), metadata=md)
    assert sent.status == S.CAMPAIGN_STATUS_SENDING and sent.HasField("started_at")
    assert sent.time_zone == "UTC"  # the workspace's setting, frozen at send time
    # A replayed send is refused, not doubled.
    err = await refused(stub.SendCampaign(S.SendCampaignRequest(campaign_id=c.id), metadata=md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only a draft can be sent; this campaign is sending" in str(err.details())
    err = await refused(stub.ResumeCampaign(S.ResumeCampaignRequest(campaign_id=c.id), metadata=md))
    assert "cannot resume a campaign that is sending" in str(err.details())
    paused = await stub.PauseCampaign(
        S.PauseCampaignRequest(campaign_id=c.id, note="typo in the link"), metadata=md
    )
    assert paused.status == S.CAMPAIGN_STATUS_PAUSED and paused.status_reason == "typo in the link"
    err = await refused(stub.PauseCampaign(S.PauseCampaignRequest(campaign_id=c.id), metadata=md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot pause a campaign that is paused" in str(err.details())
    resumed = await stub.ResumeCampaign(S.ResumeCampaignRequest(campaign_id=c.id), metadata=md)
    assert resumed.status == S.CAMPAIGN_STATUS_SENDING
    cancelled = await stub.CancelCampaign(
        S.CancelCampaignRequest(campaign_id=c.id, note="wrong segment"), metadata=md
    )
    assert cancelled.status == S.CAMPAIGN_STATUS_CANCELLED and cancelled.HasField("finished_at")
    err = await refused(stub.ResumeCampaign(S.ResumeCampaignRequest(campaign_id=c.id), metadata=md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "cancelled campaigns cannot be resumed"
    err = await refused(stub.CancelCampaign(S.CancelCampaignRequest(campaign_id=c.id), metadata=md))
    assert "cannot cancel a campaign that is cancelled" in str(err.details())
    answer = await stub.ListTransitions(S.ListTransitionsRequest(campaign_id=c.id), metadata=md)
    assert [(t.from_status, t.to_status, t.actor, t.note) for t in answer.transitions] == [
        (1, 3, actor, ""),
        (3, 6, actor, "typo in the link"),
        (6, 3, actor, ""),
        (3, 5, actor, "wrong segment"),
    ]
    times = [t.at.ToDatetime() for t in answer.transitions]
    assert times == sorted(times)
    err = await refused(
        stub.PauseCampaign(S.PauseCampaignRequest(campaign_id=c.id, note="x" * 501), metadata=md)
    )
    assert violations(err) == ["note"]


async def test_a_scheduled_campaign_starts_when_the_moved_clock_reaches_it(
    stub: Stub, workspace: Workspace, moved_clock: None
) -> None:
    c = await create(stub, workspace)
    later = await create(stub, workspace)
    now = datetime.now(UTC)
    md = workspace.metadata
    scheduled = await stub.SendCampaign(
        S.SendCampaignRequest(campaign_id=c.id, send_at=ts(now + timedelta(hours=1))),  # type: ignore[arg-type]
        metadata=md,
    )
    assert scheduled.status == S.CAMPAIGN_STATUS_SCHEDULED
    stored = scheduled.scheduled_at.ToDatetime(tzinfo=UTC)
    assert abs(stored - (now + timedelta(hours=1))) < timedelta(milliseconds=1)
    await stub.SendCampaign(
        S.SendCampaignRequest(campaign_id=later.id, send_at=ts(now + timedelta(hours=5))),  # type: ignore[arg-type]
        metadata=md,
    )
    # Local time: 15 hours from now as a wall-clock time in UTC comes first in UTC+14, one
    # hour from now; the same time as one instant (later_instant) is far off.
    local = await create(stub, workspace, local_time=True, time_zone="UTC")
    later_instant = await create(stub, workspace, time_zone="UTC")
    for campaign in (local, later_instant):
        await stub.SendCampaign(
            S.SendCampaignRequest(campaign_id=campaign.id, send_at=ts(now + timedelta(hours=15))),  # type: ignore[arg-type]
            metadata=md,
        )
    clock.set_clock(clock.SystemClock(offset=timedelta(hours=2)))

    async def started() -> bool:
        for campaign in (c, local):
            got = await stub.GetCampaign(S.GetCampaignRequest(campaign_id=campaign.id), metadata=md)
            if got.campaign.status != S.CAMPAIGN_STATUS_SENDING:
                return False
        return True

    await eventually(started, timeout=30)
    assert (await statuses(stub, workspace, c.id))[-1] == (2, 3, "system:scheduler")
    assert (await statuses(stub, workspace, local.id))[-1] == (2, 3, "system:scheduler")
    for waiting in (later, later_instant):  # their time has not come
        still = await stub.GetCampaign(S.GetCampaignRequest(campaign_id=waiting.id), metadata=md)
        assert still.campaign.status == S.CAMPAIGN_STATUS_SCHEDULED


async def test_a_send_in_the_past_is_refused_and_nothing_moves(
    stub: Stub, workspace: Workspace
) -> None:
    c = await create(stub, workspace)
    past = datetime.now(UTC) - timedelta(minutes=1)
    err = await refused(
        stub.SendCampaign(
            S.SendCampaignRequest(campaign_id=c.id, send_at=ts(past)),  # type: ignore[arg-type]
            metadata=workspace.metadata,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err) == ["send_at"]
    assert await statuses(stub, workspace, c.id) == []


async def test_a_suspended_workspace_cannot_send_and_hears_why(
    stub: Stub, workspace: Workspace, delivery_for_campaigns: RunningService
) -> None:
    c = await create(stub, workspace)
    reason = "complaint rate 0.40 % over the last 24 hours (limit 0.10 %)"
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        # As the guard records a suspension (services/delivery/adapters/guard_store.suspend).
        await conn.execute(
            "INSERT INTO delivery.guard_suspensions (workspace_id, rule, reason, figures,"
            " suspended_at) VALUES ($1, 'complaint_rate', $2, '{}'::jsonb, now())",
            uuid.UUID(workspace.id),
            reason,
        )
    finally:
        await conn.close()
    err = await refused(
        stub.SendCampaign(S.SendCampaignRequest(campaign_id=c.id), metadata=workspace.metadata)
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == f"sending is suspended by the anti-spam guard: {reason}"
    assert await statuses(stub, workspace, c.id) == []
    async with grpc.aio.insecure_channel(delivery_for_campaigns.address) as ch:
        await delivery_pb2_grpc.DeliveryServiceStub(ch).LiftSuspension(
            delivery_pb2.LiftSuspensionRequest(workspace_id=workspace.id, note="talked to them"),
            metadata=(("authorization", f"Admin {os.environ['NUDGE_ADMIN_TOKEN']}"),),
        )
    sent = await stub.SendCampaign(
        S.SendCampaignRequest(campaign_id=c.id), metadata=workspace.metadata
    )
    assert sent.status == S.CAMPAIGN_STATUS_SENDING


async def test_without_only_consented_the_send_needs_the_right_confirmation(
    stub: Stub, workspace: Workspace, segmentation_for_campaigns: RunningService
) -> None:
    tag = unique("t").replace("-", "_")
    md = workspace.metadata
    address = os.environ["NUDGE_CONTACTS_ADDR"]
    async with grpc.aio.insecure_channel(address) as ch:
        await contacts_pb2_grpc.WorkspaceServiceStub(ch).UpdateWorkspaceSettings(
            contacts_pb2.UpdateWorkspaceSettingsRequest(
                settings=contacts_pb2.WorkspaceSettings(consent_required_for_campaigns=False),
                update_mask=FieldMask(paths=["consent_required_for_campaigns"]),
            ),
            metadata=md,
        )
        contacts = contacts_pb2_grpc.ContactServiceStub(ch)
        for i, consents in enumerate([[], [], [2]]):
            await contacts.CreateContact(
                contacts_pb2.CreateContactRequest(
                    contact=contacts_pb2.Contact(email=f"{tag}{i}@example.com", tags=[tag]),
                    consents=consents,  # type: ignore[arg-type]
                ),
                metadata=md,
            )
    # Segmentation learns of the contacts from contacts.events.v1: wait until it has all 3.
    from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

    async with grpc.aio.insecure_channel(segmentation_for_campaigns.address) as ch:
        segments = segmentation_pb2_grpc.SegmentServiceStub(ch)
        count = segmentation_pb2.CountSegmentRequest(
            target=segmentation_pb2.SegmentTarget(rule=f'{{"tag": "{tag}"}}')
        )

        async def known() -> bool:
            answer = await segments.CountSegment(count, metadata=md)
            return answer.count == 3

        await eventually(known, timeout=60)
    c = await create(stub, workspace, tags_any=[tag])
    request = S.UpdateCampaignRequest(
        campaign=S.Campaign(id=c.id), update_mask=FieldMask(paths=["segment_ids"])
    )
    await stub.UpdateCampaign(request, metadata=md)  # tags alone: the two without consent
    err = await refused(stub.SendCampaign(S.SendCampaignRequest(campaign_id=c.id), metadata=md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "2 contacts of this audience have not consented" in str(err.details())
    assert "confirm_not_consented = 2" in str(err.details())
    err = await refused(
        stub.SendCampaign(
            S.SendCampaignRequest(campaign_id=c.id, confirm_not_consented=3), metadata=md
        )
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "the audience changed" in str(err.details())
    assert await statuses(stub, workspace, c.id) == []
    sent = await stub.SendCampaign(
        S.SendCampaignRequest(campaign_id=c.id, confirm_not_consented=2), metadata=md
    )
    assert sent.status == S.CAMPAIGN_STATUS_SENDING


async def test_settings_default_update_by_mask_and_refuse_bad_values(
    stub: Stub, workspace: Workspace, contacts_service: RunningService
) -> None:
    md = workspace.metadata
    got = await stub.GetCampaignSettings(S.GetCampaignSettingsRequest(), metadata=md)
    assert (got.frequency_cap_messages, got.frequency_cap_days, got.time_zone) == (1, 30, "UTC")
    wanted = S.CampaignSettings(
        frequency_cap_messages=2, frequency_cap_days=7, time_zone="Asia/Tokyo"
    )
    updated = await stub.UpdateCampaignSettings(
        S.UpdateCampaignSettingsRequest(
            settings=wanted, update_mask=FieldMask(paths=["time_zone"])
        ),
        metadata=md,
    )
    assert (updated.frequency_cap_messages, updated.frequency_cap_days, updated.time_zone) == (
        1,
        30,
        "Asia/Tokyo",
    )
    for settings, mask, fields in [
        (
            S.CampaignSettings(frequency_cap_messages=0),
            ["frequency_cap_messages"],
            ["settings.frequency_cap_messages"],
        ),
        (
            S.CampaignSettings(frequency_cap_messages=101),
            ["frequency_cap_messages"],
            ["settings.frequency_cap_messages"],
        ),
        (
            S.CampaignSettings(frequency_cap_days=366),
            ["frequency_cap_days"],
            ["settings.frequency_cap_days"],
        ),
        (S.CampaignSettings(time_zone="Berlin"), ["time_zone"], ["settings.time_zone"]),
        (
            S.CampaignSettings(default_reply_to="not an address"),
            ["default_reply_to"],
            ["settings.default_reply_to"],
        ),
        (S.CampaignSettings(), [], ["update_mask"]),
        (S.CampaignSettings(), ["cap"], ["update_mask.paths[0]"]),
    ]:
        err = await refused(
            stub.UpdateCampaignSettings(
                S.UpdateCampaignSettingsRequest(
                    settings=settings, update_mask=FieldMask(paths=mask)
                ),
                metadata=md,
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(err) == fields
    # The default Reply-To: stored in its normal form, kept by other changes, "" clears it.
    reply = await stub.UpdateCampaignSettings(
        S.UpdateCampaignSettingsRequest(
            settings=S.CampaignSettings(default_reply_to="Replies@Shop.Example"),
            update_mask=FieldMask(paths=["default_reply_to"]),
        ),
        metadata=md,
    )
    assert (reply.default_reply_to, reply.time_zone) == ("Replies@shop.example", "Asia/Tokyo")
    got = await stub.GetCampaignSettings(S.GetCampaignSettingsRequest(), metadata=md)
    assert got.default_reply_to == "Replies@shop.example"
    # A campaign without a zone is sent in the workspace's (frozen at send time).
    c = await create(stub, workspace)
    sent = await stub.SendCampaign(S.SendCampaignRequest(campaign_id=c.id), metadata=md)
    assert sent.time_zone == "Asia/Tokyo"
    other = await new_workspace(contacts_service)
    theirs = await stub.GetCampaignSettings(S.GetCampaignSettingsRequest(), metadata=other.metadata)
    assert theirs.time_zone == "UTC"


async def test_another_workspaces_campaign_is_not_found_by_every_rpc(
    stub: Stub, workspace: Workspace, contacts_service: RunningService
) -> None:
    c = await create(stub, workspace)
    other = (await new_workspace(contacts_service)).metadata
    mask = FieldMask(paths=["subject"])
    for call in [
        stub.UpdateCampaign(
            S.UpdateCampaignRequest(campaign=S.Campaign(id=c.id, subject="x"), update_mask=mask),
            metadata=other,
        ),
        stub.SendCampaign(S.SendCampaignRequest(campaign_id=c.id), metadata=other),
        stub.PauseCampaign(S.PauseCampaignRequest(campaign_id=c.id), metadata=other),
        stub.ResumeCampaign(S.ResumeCampaignRequest(campaign_id=c.id), metadata=other),
        stub.CancelCampaign(S.CancelCampaignRequest(campaign_id=c.id), metadata=other),
        stub.ListTransitions(S.ListTransitionsRequest(campaign_id=c.id), metadata=other),
        stub.GetCampaign(S.GetCampaignRequest(campaign_id=c.id), metadata=other),
        stub.CancelCampaign(S.CancelCampaignRequest(campaign_id="not-a-uuid"), metadata=other),
    ]:
        err = await refused(call)
        assert err.code() == grpc.StatusCode.NOT_FOUND, call
    got = await stub.GetCampaign(
        S.GetCampaignRequest(campaign_id=c.id), metadata=workspace.metadata
    )
    assert got.campaign == c and await statuses(stub, workspace, c.id) == []


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer not-a-key"),), (("authorization", "Internal wrong-token"),)],
)
async def test_lifecycle_calls_without_a_valid_key_are_unauthenticated(
    stub: Stub, metadata: tuple[tuple[str, str], ...]
) -> None:
    some_id = str(uuid.uuid4())
    for call in [
        stub.UpdateCampaign(S.UpdateCampaignRequest(), metadata=metadata),
        stub.SendCampaign(S.SendCampaignRequest(campaign_id=some_id), metadata=metadata),
        stub.PauseCampaign(S.PauseCampaignRequest(campaign_id=some_id), metadata=metadata),
        stub.ResumeCampaign(S.ResumeCampaignRequest(campaign_id=some_id), metadata=metadata),
        stub.CancelCampaign(S.CancelCampaignRequest(campaign_id=some_id), metadata=metadata),
        stub.ListTransitions(S.ListTransitionsRequest(campaign_id=some_id), metadata=metadata),
        stub.GetCampaignSettings(S.GetCampaignSettingsRequest(), metadata=metadata),
        stub.UpdateCampaignSettings(S.UpdateCampaignSettingsRequest(), metadata=metadata),
    ]:
        err = await refused(call)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_segment_deleted_since_the_draft_is_a_precise_refusal(
    stub: Stub, workspace: Workspace, segmentation_for_campaigns: RunningService
) -> None:
    from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

    md = workspace.metadata
    async with grpc.aio.insecure_channel(segmentation_for_campaigns.address) as ch:
        segments = segmentation_pb2_grpc.SegmentServiceStub(ch)
        ours = await segments.CreateSegment(
            segmentation_pb2.CreateSegmentRequest(name=unique("s"), rule='{"tag": "gone"}'),
            metadata=md,
        )
        request = draft(segment_ids=[ours.id])
        c = (await stub.CreateCampaign(request, metadata=md)).campaign
        await segments.DeleteSegment(
            segmentation_pb2.DeleteSegmentRequest(segment_id=ours.id), metadata=md
        )
    err = await refused(stub.SendCampaign(S.SendCampaignRequest(campaign_id=c.id), metadata=md))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert "cannot be read" in str(err.details()) and ours.id in str(err.details())
    assert await statuses(stub, workspace, c.id) == []
