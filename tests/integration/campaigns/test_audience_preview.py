"""The audience of a campaign on real services: contacts (consent, suppression, names and
zones), segmentation (segments and tags, fed by contacts through Kafka), delivery (the
anti-spam guard) and campaigns' own PostgreSQL (frequency cap), all in process.

One workspace holds a cast of contacts, each made to land under one reason; the preview must
count each exactly, and the stream the fan-out reads must agree with it."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from nudge.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

from services.campaigns import audience
from services.campaigns.adapters.segmentation import SegmentCatalogue
from services.campaigns.config import Settings as CampaignSettings
from services.campaigns.ports import Ports
from services.common.db import create_pool
from services.common.grpc_client import channel as open_channel
from tests.integration.campaigns.test_campaigns_grpc import new_workspace
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.support import eventually, free_port

TARGETED = contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES


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
async def audience_service(
    segmentation_for_campaigns: RunningService, delivery_for_campaigns: RunningService
) -> AsyncIterator[RunningService]:
    from services.campaigns.bootstrap import serve

    port = free_port()
    settings = CampaignSettings(
        grpc_port=port,
        segmentation_addr=segmentation_for_campaigns.address,
        delivery_addr=delivery_for_campaigns.address,
    )
    async with run_in_process(serve, settings, port) as running:
        yield running


@pytest.fixture
async def stub(
    audience_service: RunningService,
) -> AsyncIterator[campaigns_pb2_grpc.CampaignServiceStub]:
    async with grpc.aio.insecure_channel(audience_service.address) as ch:
        yield campaigns_pb2_grpc.CampaignServiceStub(ch)


@pytest.fixture
async def db(audience_service: RunningService) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    yield conn
    await conn.close()


@pytest.fixture
async def ports(
    audience_service: RunningService,
    segmentation_for_campaigns: RunningService,
    delivery_for_campaigns: RunningService,
    contacts_service: RunningService,
) -> AsyncIterator[Ports]:
    """The campaigns service's ports, for reading the stream the fan-out reads."""
    settings = CampaignSettings(
        segmentation_addr=segmentation_for_campaigns.address,
        delivery_addr=delivery_for_campaigns.address,
        contacts_addr=contacts_service.address,
    )
    pool = await create_pool(settings.database_url, "campaigns", max_size=4)
    channels = [
        open_channel(contacts_service.address),
        open_channel(segmentation_for_campaigns.address),
        open_channel(delivery_for_campaigns.address),
    ]
    yield Ports(
        settings=settings,
        pool=pool,
        contacts=channels[0],
        segmentation=channels[1],
        delivery=channels[2],
        segments=SegmentCatalogue(channels[1], settings.internal_token),
    )
    for ch in channels:
        await ch.close()
    await pool.close()


@dataclass
class Cast:
    """The contacts of the test workspace by role, and the campaign over them."""

    ids: dict[str, str]
    segment_a: str
    segment_b: str
    campaign_id: str
    now: datetime


def rule(*tags: str) -> str:
    return json.dumps({"any": [{"tag": t} for t in tags]})


async def make_cast(
    ws: Workspace,
    contacts_service: RunningService,
    segmentation: RunningService,
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    db: asyncpg.Connection,
) -> Cast:
    """Segments A (tag a) and B (tag b), exclusion X (tag x), tags_any ["t", "t2"]; one contact per
    role. Every contact has consent for targeted messages unless its role says otherwise."""
    roles: dict[str, tuple[list[str], bool, str]] = {
        "a": (["a"], True, ""),
        "ab": (["a", "b"], True, "America/New_York"),
        "b": (["b"], True, "Asia/Tokyo"),
        "ax": (["a", "x"], True, ""),
        "t": (["t"], True, ""),
        "t2": (["t2"], True, ""),
        "bt": (["b", "t"], True, ""),
        "withdrawn": (["a"], True, ""),
        "suppressed": (["b"], True, ""),
        "no_consent": (["a"], False, ""),
        "pending": (["b"], False, ""),
        "capped": (["a"], True, ""),
        "no_email": (["a"], True, ""),
        "x_only": (["x"], True, ""),
        "untagged": ([], True, ""),
    }
    ids: dict[str, str] = {}
    md = ws.metadata
    await set_workspace(contacts_service, ws, consent_required_for_campaigns=True)
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        contacts = contacts_pb2_grpc.ContactServiceStub(ch)
        consent = contacts_pb2_grpc.ConsentServiceStub(ch)
        for role, (tags, consented, zone) in roles.items():
            created = await contacts.CreateContact(
                contacts_pb2.CreateContactRequest(
                    contact=contacts_pb2.Contact(
                        email=f"{role}-{uuid.uuid4().hex[:8]}@example.com",
                        tags=tags,
                        time_zone=zone,
                        first_name=role.title(),
                    ),
                    consents=[TARGETED] if consented else [],
                ),
                metadata=md,
            )
            ids[role] = created.contact.id
        await consent.RecordConsent(
            contacts_pb2.RecordConsentRequest(
                contact=contacts_pb2.ContactRef(contact_id=ids["withdrawn"]),
                purpose=TARGETED,
                status=contacts_pb2.CONSENT_STATUS_WITHDRAWN,
                source=contacts_pb2.CONSENT_SOURCE_FORM,
            ),
            metadata=md,
        )
        # A grant under double opt-in stays pending until the contact confirms it.
        await set_workspace(contacts_service, ws, double_opt_in=True)
        await consent.RecordConsent(
            contacts_pb2.RecordConsentRequest(
                contact=contacts_pb2.ContactRef(contact_id=ids["pending"]),
                purpose=TARGETED,
                status=contacts_pb2.CONSENT_STATUS_GRANTED,
                source=contacts_pb2.CONSENT_SOURCE_FORM,
            ),
            metadata=md,
        )
        await set_workspace(contacts_service, ws, double_opt_in=False)
        suppressed = await contacts.GetContact(
            contacts_pb2.GetContactRequest(
                contact=contacts_pb2.ContactRef(contact_id=ids["suppressed"])
            ),
            metadata=md,
        )
        await consent.AddSuppression(
            contacts_pb2.AddSuppressionRequest(
                email=suppressed.contact.email,
                reason=contacts_pb2.SUPPRESSION_REASON_HARD_BOUNCE,
            ),
            metadata=md,
        )
    # A contact whose address was lost (contacts' API never allows it; the row can hold it).
    await db.execute(
        "UPDATE contacts.contacts SET email = '' WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(ws.id),
        uuid.UUID(ids["no_email"]),
    )

    async with grpc.aio.insecure_channel(segmentation.address) as ch:
        segments = segmentation_pb2_grpc.SegmentServiceStub(ch)
        a = (
            await segments.CreateSegment(
                segmentation_pb2.CreateSegmentRequest(name="A", rule=rule("a")), metadata=md
            )
        ).id
        b = (
            await segments.CreateSegment(
                segmentation_pb2.CreateSegmentRequest(name="B", rule=rule("b")), metadata=md
            )
        ).id
        x = (
            await segments.CreateSegment(
                segmentation_pb2.CreateSegmentRequest(name="X", rule=rule("x")), metadata=md
            )
        ).id

        async def followed() -> bool:
            """Segmentation's read model has every tagged contact (it follows Kafka)."""
            answer = await segments.CountSegment(
                segmentation_pb2.CountSegmentRequest(
                    target=segmentation_pb2.SegmentTarget(rule=rule("a", "b", "t", "t2", "x"))
                ),
                metadata=md,
            )
            return answer.count == 14

        await eventually(followed, timeout=60, interval=0.2)

    campaign = (
        await stub.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(
                name="Spring", segment_ids=[a, b], subject="Spring", body_text="Hello"
            ),
            metadata=md,
        )
    ).campaign
    await db.execute(
        "UPDATE campaigns.campaigns SET exclude_segment_ids = $3, tags_any = $4"
        " WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(ws.id),
        uuid.UUID(campaign.id),
        [x],
        ["t", "t2"],
    )
    now = datetime.now(UTC)
    other = uuid.uuid4()

    async def mailed(
        contact: str, campaign_id: uuid.UUID, at: datetime, excluded: str | None
    ) -> None:
        await db.execute(
            "INSERT INTO campaigns.recipients (workspace_id, campaign_id, contact_id, message_id,"
            " excluded, requested_at) VALUES ($1, $2, $3, $4, $5, $6)",
            uuid.UUID(ws.id),
            campaign_id,
            uuid.UUID(ids[contact]),
            uuid.uuid4(),
            excluded,
            at,
        )

    await mailed("capped", other, now - timedelta(days=1), None)  # within 30 days: capped
    await mailed("a", other, now - timedelta(days=31), None)  # out of the window
    await mailed("ab", uuid.UUID(campaign.id), now - timedelta(hours=1), None)  # this one's
    await mailed("b", other, now - timedelta(hours=1), "holdout")  # never mailed
    return Cast(ids=ids, segment_a=a, segment_b=b, campaign_id=campaign.id, now=now)


@pytest.fixture
async def cast(
    workspace: Workspace,
    contacts_service: RunningService,
    segmentation_for_campaigns: RunningService,
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    db: asyncpg.Connection,
) -> Cast:
    return await make_cast(workspace, contacts_service, segmentation_for_campaigns, stub, db)


async def preview(
    stub: campaigns_pb2_grpc.CampaignServiceStub, ws: Workspace, campaign_id: str
) -> campaigns_pb2.AudiencePreview:
    return await stub.PreviewAudience(
        campaigns_pb2.PreviewAudienceRequest(campaign_id=campaign_id), metadata=ws.metadata
    )


def excluded(p: campaigns_pb2.AudiencePreview) -> dict[str, int]:
    return {e.reason: e.count for e in p.excluded}


async def set_workspace(contacts_service: RunningService, ws: Workspace, **fields: bool) -> None:
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        await contacts_pb2_grpc.WorkspaceServiceStub(ch).UpdateWorkspaceSettings(
            contacts_pb2.UpdateWorkspaceSettingsRequest(
                settings=contacts_pb2.WorkspaceSettings(**fields),  # type: ignore[arg-type]
                update_mask=FieldMask(paths=list(fields)),
            ),
            metadata=ws.metadata,
        )


async def test_the_preview_counts_each_member_once_under_its_first_reason(
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    workspace: Workspace,
    cast: Cast,
    contacts_service: RunningService,
    db: asyncpg.Connection,
) -> None:
    before = datetime.now(UTC)
    p = await preview(stub, workspace, cast.campaign_id)
    # a, ab, b, ax, t, t2, bt, withdrawn, suppressed, no_consent, pending, capped, no_email.
    assert p.members == 13
    assert p.eligible == 6  # a, ab, b, t, t2, bt
    assert [(e.reason, e.count) for e in p.excluded] == [
        ("excluded_segment", 1),
        ("suppressed", 1),
        ("consent_withdrawn", 1),
        ("consent_pending", 1),
        ("no_consent", 1),
        ("no_email", 1),
        ("frequency_cap", 1),
    ]
    assert [(s.source, s.members, s.also_in_other_sources) for s in p.sources] == [
        (cast.segment_a, 7, 1),  # a ab ax withdrawn no_consent capped no_email; ab
        (cast.segment_b, 5, 2),  # ab b bt suppressed pending; ab, bt
        ("tags", 3, 1),  # t t2 bt; bt
    ]
    assert p.only_consented and p.not_consented == 0 and not p.confirmation_required
    assert not p.sending_suspended and p.suspended_reason == ""
    assert before <= p.as_of.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    # Asked again: the same answer, and nothing was written (only the row the cast made).
    again = await preview(stub, workspace, cast.campaign_id)
    again.ClearField("as_of")
    p.ClearField("as_of")
    assert again == p
    written = await db.fetchval(
        "SELECT count(*) FROM campaigns.recipients WHERE campaign_id = $1",
        uuid.UUID(cast.campaign_id),
    )
    assert written == 1

    # Without the "only consented" rule, the contact who never answered would be mailed: the
    # preview says so, and the send must be confirmed with that number.
    await set_workspace(contacts_service, workspace, consent_required_for_campaigns=False)
    p = await preview(stub, workspace, cast.campaign_id)
    assert (p.members, p.eligible) == (13, 7)
    assert "no_consent" not in excluded(p)
    assert excluded(p)["consent_pending"] == 1  # a pending grant is never consent
    assert not p.only_consented and p.not_consented == 1 and p.confirmation_required

    # The guard suspended the workspace: the preview says why before the send is refused.
    await db.execute(
        "INSERT INTO delivery.guard_suspensions (workspace_id, rule, reason, figures,"
        " suspended_at) VALUES ($1, 'complaints', 'Too many complaints', '{}', now())",
        uuid.UUID(workspace.id),
    )
    p = await preview(stub, workspace, cast.campaign_id)
    assert p.sending_suspended and p.suspended_reason == "Too many complaints"
    assert p.eligible == 7  # nothing else changes


async def test_another_workspaces_or_unknown_campaign_is_not_found(
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
    segmentation_for_campaigns: RunningService,
) -> None:
    campaign = (
        await stub.CreateCampaign(
            campaigns_pb2.CreateCampaignRequest(
                name="Mine", segment_ids=["vip"], subject="Hi", body_text="Hello"
            ),
            metadata=workspace.metadata,
        )
    ).campaign
    mine = await preview(stub, workspace, campaign.id)
    assert mine.members == 0 and [s.source for s in mine.sources] == ["vip"]
    other = await new_workspace(contacts_service)
    for campaign_id, ws in [
        (campaign.id, other),
        (str(uuid.uuid4()), workspace),
        ("not-a-uuid", workspace),
        ("", workspace),
        ("x" * 10_000, workspace),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await preview(stub, ws, campaign_id)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, campaign_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PreviewAudience(
            campaigns_pb2.PreviewAudienceRequest(campaign_id=campaign.id),
            metadata=(("authorization", "Bearer nk_0000000000000000_" + "a" * 43),),
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_deleted_segment_is_a_failed_precondition(
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    workspace: Workspace,
    segmentation_for_campaigns: RunningService,
) -> None:
    md = workspace.metadata
    async with grpc.aio.insecure_channel(segmentation_for_campaigns.address) as ch:
        segments = segmentation_pb2_grpc.SegmentServiceStub(ch)
        gone = (
            await segments.CreateSegment(
                segmentation_pb2.CreateSegmentRequest(name="Gone", rule=rule("g")), metadata=md
            )
        ).id
        campaign = (
            await stub.CreateCampaign(
                campaigns_pb2.CreateCampaignRequest(
                    name="Old", segment_ids=[gone], subject="Hi", body_text="Hello"
                ),
                metadata=md,
            )
        ).campaign
        await segments.DeleteSegment(
            segmentation_pb2.DeleteSegmentRequest(segment_id=gone), metadata=md
        )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await preview(stub, workspace, campaign.id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert gone in (err.value.details() or "")


def roles_of(cast: Cast, recipients: list[audience.Recipient]) -> dict[str, audience.Recipient]:
    role = {v: k for k, v in cast.ids.items()}
    return {role[str(r.contact_id)]: r for r in recipients}


async def read_all(
    ports: Ports, spec: audience.AudienceSpec, phase: audience.Phase, **kw: object
) -> list[audience.Recipient]:
    out: list[audience.Recipient] = []
    async for batch in audience.stream_recipients(
        ports,
        spec,
        phase=phase,
        as_of=datetime.now(UTC),
        **kw,  # type: ignore[arg-type]
    ):
        assert batch, "no empty batches"
        out += batch
    return out


async def test_the_stream_defers_capped_contacts_and_resumes_after_a_contact(
    ports: Ports, workspace: Workspace, cast: Cast, db: asyncpg.Connection
) -> None:
    await db.execute(
        "UPDATE campaigns.campaigns SET cap_action = $3 WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace.id),
        uuid.UUID(cast.campaign_id),
        campaigns_pb2.CAP_ACTION_DEFER,
    )
    spec = await audience.load_spec(ports, workspace.id, uuid.UUID(cast.campaign_id))
    assert spec is not None
    everyone = await read_all(ports, spec, "all", batch_size=3)
    ids = [str(r.contact_id) for r in everyone]
    assert ids == sorted(ids) and len(ids) == 13
    by_role = roles_of(cast, everyone)
    capped = by_role["capped"]
    assert capped.excluded is None
    assert capped.due_at is not None
    # The cap lets it through 30 days after its last mail (1 day ago).
    expected = cast.now - timedelta(days=1) + timedelta(days=30)
    assert abs((capped.due_at - expected).total_seconds()) < 1
    assert by_role["a"].due_at is None and by_role["a"].excluded is None
    assert by_role["ab"].sources == 0b011 and by_role["bt"].sources == 0b110
    # Not a local-time campaign: contacts answered only the exceptions, so the mailed
    # contacts' fields (which nothing reads without local time) stay empty.
    assert (by_role["a"].email, by_role["a"].first_name, by_role["ab"].time_zone) == ("", "", "")

    # Resumed after the fifth contact: the rest, the same answers.
    resumed = await read_all(ports, spec, "all", after=everyone[4].contact_id, batch_size=1000)
    assert resumed == everyone[5:]


async def test_holdout_and_ab_phases_split_the_audience_by_bucket(
    ports: Ports, workspace: Workspace, cast: Cast, db: asyncpg.Connection
) -> None:
    await db.execute(
        "UPDATE campaigns.campaigns SET holdout_percent = 40, ab_test = $3"
        " WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace.id),
        uuid.UUID(cast.campaign_id),
        json.dumps({"subjects": ["One", "Two"], "sample_percent": 30, "winner": -1}),
    )
    spec = await audience.load_spec(ports, workspace.id, uuid.UUID(cast.campaign_id))
    assert spec is not None and spec.ab == audience.AbSpec(variants=2, sample_percent=30)
    everyone = await read_all(ports, spec, "all")
    sample = await read_all(ports, spec, "sample")
    rest = await read_all(ports, spec, "rest")
    assert sorted(r.contact_id for r in sample + rest) == [r.contact_id for r in everyone]
    for r in everyone:
        b = audience.bucket(cast.campaign_id, r.contact_id)
        in_sample = b < 7000
        assert (r in sample) == in_sample and (r in rest) == (not in_sample)
        if b < 4000:
            # The hold-out: only those who would be mailed otherwise.
            assert r.variant == 0
            if r.excluded not in (None, "holdout"):
                continue
            assert r.excluded == "holdout"
        elif b < 7000:
            assert r.variant == b % 2 and r.excluded != "holdout"
        else:
            assert r.variant == -1 and r.excluded != "holdout"


async def test_local_time_sends_at_the_campaigns_wall_clock_in_each_contacts_zone(
    ports: Ports, workspace: Workspace, cast: Cast, db: asyncpg.Connection
) -> None:
    # 09:00 in Berlin (summer time) next year: 07:00 UTC.
    at = datetime(datetime.now(UTC).year + 1, 7, 1, 7, 0, tzinfo=UTC)
    await db.execute(
        "UPDATE campaigns.campaigns SET local_time = true, time_zone = 'Europe/Berlin',"
        " scheduled_at = $3 WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(workspace.id),
        uuid.UUID(cast.campaign_id),
        at,
    )
    spec = await audience.load_spec(ports, workspace.id, uuid.UUID(cast.campaign_id))
    assert spec is not None
    by_role = roles_of(cast, await read_all(ports, spec, "all"))
    assert by_role["ab"].due_at == at.replace(hour=13)  # 09:00 in New York
    assert by_role["b"].due_at == at.replace(hour=0)  # 09:00 in Tokyo
    assert by_role["a"].due_at == at  # no zone: the campaign's
    assert by_role["capped"].due_at is None  # excluded: not due at all


async def test_the_cap_counts_other_campaigns_mail_in_the_window_and_names_the_nth_newest(
    audience_service: RunningService, workspace: Workspace
) -> None:
    """elig.capped on campaigns' own table, with a cap of more than one message: only rows of
    OTHER campaigns, mailed (not excluded), within the window count, and a capped contact is
    let through when the cap's n-th newest of them leaves the window."""
    from services.campaigns.adapters import eligibility as elig

    conn = await asyncpg.connect(
        os.environ["DATABASE_URL"], server_settings={"search_path": "campaigns"}
    )
    try:
        ws, this, other = uuid.UUID(workspace.id), uuid.uuid4(), uuid.uuid4()
        x, y, z = (str(uuid.uuid4()) for _ in range(3))
        now = datetime.now(UTC)
        rows = [
            (x, other, now - timedelta(days=1), None),
            (x, uuid.uuid4(), now - timedelta(days=3), None),
            (x, uuid.uuid4(), now - timedelta(days=40), None),  # out of the window
            (x, this, now - timedelta(hours=1), None),  # this send itself
            (x, uuid.uuid4(), now - timedelta(hours=2), "holdout"),  # never mailed
            (y, other, now - timedelta(days=5), None),
        ]
        for contact, campaign, at, excluded in rows:
            await conn.execute(
                "INSERT INTO recipients (workspace_id, campaign_id, contact_id, message_id,"
                " excluded, requested_at) VALUES ($1, $2, $3, $4, $5, $6)",
                ws,
                campaign,
                uuid.UUID(contact),
                uuid.uuid4(),
                excluded,
                at,
            )

        async def held(messages: int) -> dict[str, datetime]:
            cap = elig.CapSettings(messages=messages, days=30, time_zone="UTC")
            return await elig.capped(conn, workspace.id, this, [x, y, z, x], cap, now)

        assert await held(1) == {
            x: now - timedelta(days=1) + timedelta(days=30),
            y: now - timedelta(days=5) + timedelta(days=30),
        }
        assert await held(2) == {x: now - timedelta(days=3) + timedelta(days=30)}
        assert await held(3) == {}
        # Another workspace's rows are not this one's.
        other_ws = str(uuid.uuid4())
        cap = elig.CapSettings(messages=1, days=30, time_zone="UTC")
        assert await elig.capped(conn, other_ws, this, [x, y], cap, now) == {}
    finally:
        await conn.close()
