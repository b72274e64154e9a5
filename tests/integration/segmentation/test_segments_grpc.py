"""The segmentation service on real Kafka, PostgreSQL and Redis: contacts and shop events go
in through the contacts service, counts come out of SegmentService."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc, events_pb2
from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc

from services.common.auth import internal_metadata
from services.common.events import new_envelope
from services.common.topics import CONTACTS_EVENTS, SHOP_EVENTS
from services.segmentation.config import Settings
from tests.integration.conftest import RunningService, Workspace
from tests.support import eventually, unique

DAY = timedelta(days=1)
# Fixed to the second, so that every time below is exact in a Timestamp.
NOW = datetime.now(UTC).replace(microsecond=0)
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await p.start()
    yield p
    await p.stop()


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.BadRequest details"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


async def new_workspace(contacts: RunningService, name: str) -> Workspace:
    async with grpc.aio.insecure_channel(contacts.address) as ch:
        answer = await contacts_pb2_grpc.WorkspaceServiceStub(ch).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name=name, slug=unique("seg")),
            metadata=(("authorization", "Admin test-admin-token"),),
        )
    return Workspace(id=answer.workspace_id, api_key=answer.api_key)


class Shop:
    """A platform reporting one workspace's contacts and orders through the contacts API."""

    def __init__(self, contacts: RunningService, ws: Workspace) -> None:
        self.address = contacts.address
        self.ws = ws

    async def contact(
        self, *, vip: bool = False, signed_up_at: datetime | None = None
    ) -> contacts_pb2.Contact:
        contact = contacts_pb2.Contact(email=f"{unique('c')}@example.com", vip=vip)
        if signed_up_at is not None:
            contact.signed_up_at.FromDatetime(signed_up_at)
        async with grpc.aio.insecure_channel(self.address) as ch:
            answer = await contacts_pb2_grpc.ContactServiceStub(ch).CreateContact(
                contacts_pb2.CreateContactRequest(contact=contact), metadata=self.ws.metadata
            )
        return answer.contact

    async def track(
        self, contact: contacts_pb2.Contact, at: datetime, **kind: object
    ) -> shop_pb2.TrackEventResponse:
        event = shop_pb2.ShopEvent(**kind)  # type: ignore[arg-type]
        event.occurred_at.FromDatetime(at)
        async with grpc.aio.insecure_channel(self.address) as ch:
            answer: shop_pb2.TrackEventResponse = await shop_pb2_grpc.ShopEventServiceStub(
                ch
            ).TrackEvent(
                shop_pb2.TrackEventRequest(
                    idempotency_key=unique("ev"),
                    contact=contacts_pb2.ContactRef(contact_id=contact.id),
                    event=event,
                ),
                metadata=self.ws.metadata,
            )
        return answer

    async def order(self, contact: contacts_pb2.Contact, at: datetime) -> str:
        order_id = unique("order")
        await self.track(contact, at, order_placed=shop_pb2.OrderPlaced(order_id=order_id))
        return order_id

    async def orders(self, contact: contacts_pb2.Contact, times: Iterable[datetime]) -> None:
        for at in times:
            await self.order(contact, at)


async def count(
    segmentation: RunningService,
    metadata: Metadata,
    segment_id: str,
    as_of: datetime | None = NOW,
) -> int:
    request = segmentation_pb2.CountSegmentRequest(segment_id=segment_id)
    if as_of is not None:
        request.as_of.FromDatetime(as_of)
    async with grpc.aio.insecure_channel(segmentation.address) as ch:
        answer = await segmentation_pb2_grpc.SegmentServiceStub(ch).CountSegment(
            request, metadata=metadata
        )
    return int(answer.count)


async def counts(
    segmentation: RunningService, metadata: Metadata, segment_ids: Iterable[str], **kw: datetime
) -> dict[str, int]:
    return {s: await count(segmentation, metadata, s, **kw) for s in segment_ids}


async def reaches(
    segmentation: RunningService,
    metadata: Metadata,
    expected: dict[str, int],
    as_of: datetime = NOW,
) -> None:
    """Wait until every count is as expected (the read model follows Kafka)."""

    async def probe() -> bool:
        got = await counts(segmentation, metadata, expected, as_of=as_of)
        assert got == expected
        return True

    await eventually(probe, timeout=60, interval=0.2)


async def test_lists_the_built_in_segments_with_their_descriptions(
    segmentation_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        answer = await segmentation_pb2_grpc.SegmentServiceStub(ch).ListSegments(
            segmentation_pb2.ListSegmentsRequest(), metadata=workspace.metadata
        )
    assert [s.id for s in answer.segments] == [
        "activation",
        "reactivation",
        "vip",
        "new_customer",
        "promising",
        "loyal",
        "passive",
        "lost",
        "passive_loyal",
        "lost_loyal",
        "first_time_buyer",
        "repeat_buyer",
    ]
    assert all(s.description and s.name for s in answer.segments)
    assert {s.kind for s in answer.segments} == {segmentation_pb2.SEGMENT_KIND_BUILT_IN}


async def test_counts_follow_orders_placed_at_controlled_times(
    segmentation_service: RunningService, contacts_service: RunningService, workspace: Workspace
) -> None:
    shop = Shop(contacts_service, workspace)
    await shop.contact(signed_up_at=NOW - 10 * DAY)  # activation
    await shop.contact(vip=True, signed_up_at=NOW - 200 * DAY)  # vip only
    newcomer = await shop.contact()
    await shop.order(newcomer, NOW - 10 * DAY)  # new_customer
    promising = await shop.contact()
    await shop.orders(promising, [NOW - 50 * DAY, NOW - 20 * DAY])
    fading = await shop.contact()  # four orders, the last 100 days ago; a refund since
    await shop.orders(fading, [NOW - (100 + i) * DAY for i in range(4)])
    refunded = await shop.order(fading, NOW - 3 * DAY)
    await shop.track(
        fading, NOW - 2 * DAY, order_refunded=shop_pb2.OrderRefunded(order_id=refunded)
    )
    passive = await shop.contact()  # one order 40 days ago; a later one was cancelled
    await shop.order(passive, NOW - 40 * DAY)
    cancelled = await shop.order(passive, NOW - 5 * DAY)
    await shop.track(
        passive, NOW - 4 * DAY, order_cancelled=shop_pb2.OrderCancelled(order_id=cancelled)
    )
    lost = await shop.contact()
    await shop.order(lost, NOW - 400 * DAY)

    await reaches(
        segmentation_service,
        workspace.metadata,
        {
            "activation": 1,
            "reactivation": 2,  # fading, lost
            "vip": 1,
            "new_customer": 1,
            "promising": 1,
            "loyal": 0,
            "passive": 1,
            "lost": 1,
            "passive_loyal": 1,
            "lost_loyal": 0,
            "first_time_buyer": 3,  # newcomer, passive, lost
            "repeat_buyer": 2,  # promising, fading
        },
    )
    # Eleven days earlier the newcomer had not ordered and nobody had signed up recently,
    # and the passive contact's order was 29 days old: a new customer then.
    earlier = await counts(
        segmentation_service,
        workspace.metadata,
        ["activation", "first_time_buyer", "new_customer", "passive"],
        as_of=NOW - 11 * DAY,
    )
    assert earlier == {"activation": 0, "first_time_buyer": 2, "new_customer": 1, "passive": 0}


async def orders_of(workspace_id: str, contact_id: str) -> list[str]:
    """The order ids the read model holds for a contact, read from its tables directly."""
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        rows = await conn.fetch(
            "SELECT order_id FROM segmentation.orders"
            " WHERE workspace_id = $1 AND contact_id = $2 ORDER BY order_id",
            uuid.UUID(workspace_id),
            uuid.UUID(contact_id),
        )
    finally:
        await conn.close()
    return [r["order_id"] for r in rows]


def order_envelope(
    workspace: Workspace,
    contact_id: str,
    order_id: str,
    *,
    event_id: str | None = None,
    currency: str = "EUR",
) -> bytes:
    event = shop_pb2.ShopEvent(
        contact_id=contact_id,
        order_placed=shop_pb2.OrderPlaced(
            order_id=order_id, total=shop_pb2.Money(amount_minor=100, currency=currency)
        ),
    )
    event.occurred_at.FromDatetime(NOW - 10 * DAY)
    return new_envelope(workspace.id, event, event_id=event_id).SerializeToString()


async def test_an_event_id_is_applied_once_whatever_its_redeliveries_carry(
    segmentation_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    contact = await Shop(contacts_service, workspace).contact()
    key = contact.id.encode()
    event_id = str(uuid.uuid4())
    # The same event twice, then once more carrying another order: were the event id not
    # claimed, "dup-2" would be stored too (the same order twice would only be upserted).
    first = order_envelope(workspace, contact.id, "dup-1", event_id=event_id)
    await producer.send_and_wait(SHOP_EVENTS, first, key=key)
    await producer.send_and_wait(SHOP_EVENTS, first, key=key)
    replay = order_envelope(workspace, contact.id, "dup-2", event_id=event_id)
    await producer.send_and_wait(SHOP_EVENTS, replay, key=key)
    # A new event behind them on the same partition: once it counts, they were all handled.
    await producer.send_and_wait(
        SHOP_EVENTS, order_envelope(workspace, contact.id, "later"), key=key
    )
    await reaches(
        segmentation_service, workspace.metadata, {"first_time_buyer": 0, "repeat_buyer": 1}
    )
    assert await orders_of(workspace.id, contact.id) == ["dup-1", "later"]


async def test_records_the_read_model_cannot_store_are_skipped_without_blocking(
    segmentation_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    contact = await Shop(contacts_service, workspace).contact()
    key = contact.id.encode()
    for poison in [
        order_envelope(workspace, contact.id, secrets.token_urlsafe(6000)),  # > btree row limit
        order_envelope(workspace, contact.id, "o" * 201),
        order_envelope(workspace, contact.id, "nul-\x00"),
        order_envelope(workspace, contact.id, "ok-id", currency="EU\x00"),
    ]:
        await producer.send_and_wait(SHOP_EVENTS, poison, key=key)
    # Were any of them retried, this order behind them on the partition would never count.
    await producer.send_and_wait(
        SHOP_EVENTS, order_envelope(workspace, contact.id, "fine"), key=key
    )
    await reaches(
        segmentation_service, workspace.metadata, {"first_time_buyer": 1, "new_customer": 1}
    )
    assert await orders_of(workspace.id, contact.id) == ["fine"]


async def test_events_for_a_contact_not_seen_yet_are_kept(
    segmentation_service: RunningService, workspace: Workspace, producer: AIOKafkaProducer
) -> None:
    contact_id = str(uuid.uuid4())
    event = shop_pb2.ShopEvent(
        contact_id=contact_id, order_placed=shop_pb2.OrderPlaced(order_id="early")
    )
    event.occurred_at.FromDatetime(NOW - 3 * DAY)
    await producer.send_and_wait(
        SHOP_EVENTS,
        new_envelope(workspace.id, event).SerializeToString(),
        key=contact_id.encode(),
    )
    await reaches(
        segmentation_service, workspace.metadata, {"first_time_buyer": 1, "new_customer": 1}
    )

    # The contact's own record arrives later (another topic) and fills the profile in.
    contact = contacts_pb2.Contact(
        id=contact_id, workspace_id=workspace.id, email="late@example.com", vip=True
    )
    contact.updated_at.FromDatetime(NOW)
    created = new_envelope(workspace.id, events_pb2.ContactCreated(contact=contact))
    await producer.send_and_wait(
        CONTACTS_EVENTS, created.SerializeToString(), key=contact_id.encode()
    )
    await reaches(
        segmentation_service,
        workspace.metadata,
        {"vip": 1, "first_time_buyer": 1, "new_customer": 1},
    )
    # The order that came before the contact is still the profile's, not replaced.
    assert await orders_of(workspace.id, contact_id) == ["early"]


async def test_another_workspaces_contacts_are_never_counted(
    segmentation_service: RunningService, contacts_service: RunningService, workspace: Workspace
) -> None:
    other = await new_workspace(contacts_service, "Other shop")
    mine, theirs = Shop(contacts_service, workspace), Shop(contacts_service, other)
    await mine.contact(vip=True)
    await mine.order(await mine.contact(vip=True), NOW - DAY)
    await theirs.orders(await theirs.contact(vip=True), [NOW - 2 * DAY, NOW - DAY])

    await reaches(
        segmentation_service,
        workspace.metadata,
        {"vip": 2, "first_time_buyer": 1, "repeat_buyer": 0},
    )
    await reaches(
        segmentation_service, other.metadata, {"vip": 1, "first_time_buyer": 0, "repeat_buyer": 1}
    )
    # Nudge's own services ask on a workspace's behalf with the internal token.
    internal = internal_metadata(Settings().internal_token, other.id)
    assert await count(segmentation_service, internal, "repeat_buyer") == 1


async def test_count_defaults_to_now(
    segmentation_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        answer = await segmentation_pb2_grpc.SegmentServiceStub(ch).CountSegment(
            segmentation_pb2.CountSegmentRequest(segment_id="vip"), metadata=workspace.metadata
        )
    assert answer.count == 0
    assert abs(answer.as_of.ToDatetime(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=1)


async def test_invalid_requests_name_their_fields(
    segmentation_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        stub = segmentation_pb2_grpc.SegmentServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CountSegment(
                segmentation_pb2.CountSegmentRequest(segment_id=""), metadata=workspace.metadata
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err.value) == ["segment_id"]

        bad_time = segmentation_pb2.CountSegmentRequest(segment_id="vip")
        bad_time.as_of.seconds = 10**12  # year 33658
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CountSegment(bad_time, metadata=workspace.metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err.value) == ["as_of"]

        raw = ch.unary_unary("/nudge.segmentation.v1.SegmentService/CountSegment")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(b"\xff\xff\xff garbage", metadata=workspace.metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err.value) == ["body"]


async def test_an_unknown_segment_is_not_found(
    segmentation_service: RunningService, workspace: Workspace
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await count(segmentation_service, workspace.metadata, "big_spenders")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer nk_0123456789abcdef_" + "A" * 43),),
        (("authorization", "Bearer not-a-key"),),
        (("authorization", "Internal wrong-token"),),
    ],
)
async def test_calls_without_a_valid_key_are_unauthenticated(
    segmentation_service: RunningService, metadata: Metadata
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        stub = segmentation_pb2_grpc.SegmentServiceStub(ch)
        for call in (
            stub.ListSegments(segmentation_pb2.ListSegmentsRequest(), metadata=metadata),
            stub.CountSegment(
                segmentation_pb2.CountSegmentRequest(segment_id="vip"), metadata=metadata
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- custom segments ------------------------------------------------------------------------

pb = segmentation_pb2
NEWSLETTER = '{"tag": "newsletter"}'


def stub(ch: grpc.aio.Channel) -> segmentation_pb2_grpc.SegmentServiceStub:
    return segmentation_pb2_grpc.SegmentServiceStub(ch)


async def create(
    ch: grpc.aio.Channel, ws: Workspace, name: str, rule: str = NEWSLETTER, description: str = ""
) -> segmentation_pb2.Segment:
    answer: segmentation_pb2.Segment = await stub(ch).CreateSegment(
        pb.CreateSegmentRequest(name=name, rule=rule, description=description),
        metadata=ws.metadata,
    )
    return answer


async def refused(call: object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    return err.value


async def custom_names(ch: grpc.aio.Channel, ws: Workspace) -> list[str]:
    listed = await stub(ch).ListSegments(pb.ListSegmentsRequest(), metadata=ws.metadata)
    return [s.name for s in listed.segments if s.kind == pb.SEGMENT_KIND_CUSTOM]


async def test_a_custom_segment_is_created_read_and_listed_after_the_built_ins(
    segmentation_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        newsletter = await create(ch, workspace, "Newsletter readers", description="tag")
        assert (newsletter.kind, newsletter.version) == (pb.SEGMENT_KIND_CUSTOM, 1)
        assert uuid.UUID(newsletter.id)
        assert json.loads(newsletter.rule) == {"tag": "newsletter"}
        assert newsletter.HasField("created_at") and newsletter.HasField("updated_at")
        fans = await create(
            ch,
            workspace,
            "a VIP fan",
            rule=json.dumps({"all": [{"segment": newsletter.id}, {"segment": "vip"}]}),
        )
        assert sorted(fans.depends_on) == sorted([newsletter.id, "vip"])

        got = await stub(ch).GetSegment(
            pb.GetSegmentRequest(segment_id=fans.id), metadata=workspace.metadata
        )
        assert got == fans
        listed = await stub(ch).ListSegments(pb.ListSegmentsRequest(), metadata=workspace.metadata)
        kinds = [s.kind for s in listed.segments]
        assert kinds == [pb.SEGMENT_KIND_BUILT_IN] * 12 + [pb.SEGMENT_KIND_CUSTOM] * 2
        assert [s.name for s in listed.segments[12:]] == ["a VIP fan", "Newsletter readers"]
        vip = await stub(ch).GetSegment(
            pb.GetSegmentRequest(segment_id="vip"), metadata=workspace.metadata
        )
        assert vip.kind == pb.SEGMENT_KIND_BUILT_IN and json.loads(vip.rule)


async def test_names_are_unique_case_insensitively_and_a_replayed_create_makes_one(
    segmentation_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        await create(ch, workspace, "Big spenders")
        await refused(create(ch, workspace, "Big spenders"), grpc.StatusCode.ALREADY_EXISTS)
        await refused(create(ch, workspace, "BIG SPENDERS"), grpc.StatusCode.ALREADY_EXISTS)
        await refused(create(ch, workspace, "Vip"), grpc.StatusCode.ALREADY_EXISTS)  # built-in
        assert await custom_names(ch, workspace) == ["Big spenders"]


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        ('{"tag": "newsletter"', "rule"),  # not JSON
        ("[1, 2]", "rule"),  # not an object
        (
            '{"all": [{"tag": "a"}, {"field": "total_spend", "op": "gte", "value": 1}]}',
            "rule.all[1]",
        ),
        ('{"field": "vip", "op": "eq", "value": "yes"}', "rule"),  # wrong type
        ('{"tag": "a", "colour": "red"}', "rule"),  # unknown key
        ('{"segment": "no-such-segment"}', "rule"),
        ('{"segment": "00000000-0000-4000-8000-000000000000"}', "rule"),
        ("{" * 0 + '{"not": ' * 30 + '{"tag": "a"}' + "}" * 30, "rule"),  # too deep
        ('{"any": [' + ", ".join(['{"tag": "a"}'] * 4000) + "]}", "rule"),  # too large
    ],
)
async def test_an_invalid_rule_is_refused_with_its_path_and_nothing_is_stored(
    segmentation_service: RunningService, workspace: Workspace, rule: str, path: str
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        err = await refused(
            create(ch, workspace, "Bad", rule=rule), grpc.StatusCode.INVALID_ARGUMENT
        )
        fields = violations(err)
        assert fields and all(f.startswith(path) for f in fields), fields
        assert await custom_names(ch, workspace) == []
        check = await stub(ch).ValidateRule(
            pb.ValidateRuleRequest(rule=rule), metadata=workspace.metadata
        )
        assert not check.valid and check.normalized_rule == ""
        assert [v.path for v in check.violations] == fields


async def test_name_and_description_are_checked(
    segmentation_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        for name, description, field in [
            ("", "", "name"),
            ("   ", "", "name"),
            ("x" * 201, "", "name"),
            ("nul\x00", "", "name"),
            ("ok", "d" * 2001, "description"),
        ]:
            err = await refused(
                create(ch, workspace, name, description=description),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert violations(err) == [field]
        err = await refused(create(ch, workspace, "", rule=""), grpc.StatusCode.INVALID_ARGUMENT)
        assert sorted(violations(err)) == ["name", "rule"]


async def test_validate_rule_answers_violations_as_data(
    segmentation_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        good = await stub(ch).ValidateRule(
            pb.ValidateRuleRequest(rule='{"all": [{"tag": "newsletter"}, {"segment": "vip"}]}'),
            metadata=workspace.metadata,
        )
        assert good.valid and not good.violations
        assert json.loads(good.normalized_rule) == {
            "all": [{"tag": "newsletter"}, {"segment": "vip"}]
        }
        bad = await stub(ch).ValidateRule(
            pb.ValidateRuleRequest(rule='{"all": [{"tag": "x"}, {"segment": 7}]}'),
            metadata=workspace.metadata,
        )
        assert not bad.valid
        assert [v.path.startswith("rule.all[1]") for v in bad.violations] == [True]


def _update(
    segment_id: str, version: int = 0, **fields: str
) -> segmentation_pb2.UpdateSegmentRequest:
    request = pb.UpdateSegmentRequest(segment_id=segment_id, expected_version=version, **fields)
    request.update_mask.paths.extend(fields)
    return request


async def test_an_update_is_versioned_and_refuses_a_stale_version(
    segmentation_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        s = await create(ch, workspace, "Readers", description="first")
        renamed = await stub(ch).UpdateSegment(
            _update(s.id, 1, name="Newsletter readers"), metadata=workspace.metadata
        )
        assert (renamed.name, renamed.description, renamed.version) == (
            "Newsletter readers",
            "first",
            2,
        )
        assert renamed.rule == s.rule and renamed.created_at == s.created_at
        await refused(
            stub(ch).UpdateSegment(
                _update(s.id, 1, description="late"), metadata=workspace.metadata
            ),
            grpc.StatusCode.ABORTED,
        )
        ruled = await stub(ch).UpdateSegment(
            _update(s.id, rule='{"not": {"tag": "newsletter"}}'), metadata=workspace.metadata
        )
        assert ruled.version == 3 and json.loads(ruled.rule) == {"not": {"tag": "newsletter"}}

        no_mask = pb.UpdateSegmentRequest(segment_id=s.id, name="x")
        err = await refused(
            stub(ch).UpdateSegment(no_mask, metadata=workspace.metadata),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violations(err) == ["update_mask"]
        bad_path = _update(s.id, name="x")
        bad_path.update_mask.paths.append("version")
        err = await refused(
            stub(ch).UpdateSegment(bad_path, metadata=workspace.metadata),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violations(err) == ["update_mask.paths[1]"]
        await refused(
            stub(ch).UpdateSegment(_update("vip", name="Stars"), metadata=workspace.metadata),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        other = await create(ch, workspace, "Other")
        await refused(
            stub(ch).UpdateSegment(
                _update(other.id, name="NEWSLETTER readers"), metadata=workspace.metadata
            ),
            grpc.StatusCode.ALREADY_EXISTS,
        )
        current = await stub(ch).GetSegment(
            pb.GetSegmentRequest(segment_id=s.id), metadata=workspace.metadata
        )
        assert current.version == 3


async def test_a_rule_change_that_makes_a_cycle_is_refused(
    segmentation_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        a = await create(ch, workspace, "A")
        b = await create(ch, workspace, "B", rule=json.dumps({"segment": a.id}))
        c = await create(ch, workspace, "C", rule=json.dumps({"segment": b.id}))
        for rule in ({"segment": c.id}, {"all": [{"tag": "x"}, {"segment": a.id}]}):
            err = await refused(
                stub(ch).UpdateSegment(
                    _update(a.id, rule=json.dumps(rule)), metadata=workspace.metadata
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert all(f.startswith("rule") for f in violations(err))
        still = await stub(ch).GetSegment(
            pb.GetSegmentRequest(segment_id=a.id), metadata=workspace.metadata
        )
        assert (still.version, json.loads(still.rule)) == (1, {"tag": "newsletter"})


async def test_a_referenced_or_built_in_segment_cannot_be_deleted(
    segmentation_service: RunningService, workspace: Workspace
) -> None:
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        base = await create(ch, workspace, "Base")
        user = await create(ch, workspace, "User", rule=json.dumps({"segment": base.id}))
        err = await refused(
            stub(ch).DeleteSegment(
                pb.DeleteSegmentRequest(segment_id=base.id), metadata=workspace.metadata
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert "User" in err.details()
        await refused(
            stub(ch).DeleteSegment(
                pb.DeleteSegmentRequest(segment_id="vip"), metadata=workspace.metadata
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        await refused(
            stub(ch).DeleteSegment(
                pb.DeleteSegmentRequest(segment_id=user.id, expected_version=2),
                metadata=workspace.metadata,
            ),
            grpc.StatusCode.ABORTED,
        )
        await stub(ch).DeleteSegment(
            pb.DeleteSegmentRequest(segment_id=user.id, expected_version=1),
            metadata=workspace.metadata,
        )
        await stub(ch).DeleteSegment(
            pb.DeleteSegmentRequest(segment_id=base.id), metadata=workspace.metadata
        )
        assert await custom_names(ch, workspace) == []
        for call in (
            stub(ch).GetSegment(
                pb.GetSegmentRequest(segment_id=base.id), metadata=workspace.metadata
            ),
            stub(ch).DeleteSegment(
                pb.DeleteSegmentRequest(segment_id=base.id), metadata=workspace.metadata
            ),
        ):
            await refused(call, grpc.StatusCode.NOT_FOUND)


async def test_another_workspaces_segments_are_not_found(
    segmentation_service: RunningService, contacts_service: RunningService, workspace: Workspace
) -> None:
    other = await new_workspace(contacts_service, "Other shop")
    async with grpc.aio.insecure_channel(segmentation_service.address) as ch:
        theirs = await create(ch, other, "Theirs")
        mine = stub(ch)
        for call in (
            mine.GetSegment(
                pb.GetSegmentRequest(segment_id=theirs.id), metadata=workspace.metadata
            ),
            mine.UpdateSegment(_update(theirs.id, name="Mine"), metadata=workspace.metadata),
            mine.DeleteSegment(
                pb.DeleteSegmentRequest(segment_id=theirs.id), metadata=workspace.metadata
            ),
            mine.CountSegment(
                pb.CountSegmentRequest(segment_id=theirs.id), metadata=workspace.metadata
            ),
        ):
            await refused(call, grpc.StatusCode.NOT_FOUND)
        err = await refused(
            create(ch, workspace, "Borrowing", rule=json.dumps({"segment": theirs.id})),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert all(f.startswith("rule") for f in violations(err))
        assert await custom_names(ch, workspace) == []
        await create(ch, workspace, "Theirs")  # names are per workspace
        assert await custom_names(ch, other) == ["Theirs"]
