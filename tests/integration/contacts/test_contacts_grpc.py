"""The contacts service over real gRPC, PostgreSQL and Kafka, as a platform uses it."""

from __future__ import annotations

import asyncio
import os
import uuid

import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc

from services.common.topics import CONTACTS_EVENTS, SHOP_EVENTS
from tests.integration.conftest import RunningService, Workspace
from tests.support import fetchval, unique

AUTOMATIONS = contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.BadRequest details"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


@pytest.fixture
async def channel(contacts_service: RunningService) -> grpc.aio.Channel:
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        yield ch


async def create(
    channel: grpc.aio.Channel, ws: Workspace, email: str, **fields: object
) -> contacts_pb2.Contact:
    answer = await contacts_pb2_grpc.ContactServiceStub(channel).CreateContact(
        contacts_pb2.CreateContactRequest(
            contact=contacts_pb2.Contact(email=email, **fields),  # type: ignore[arg-type]
            consents=[AUTOMATIONS],
        ),
        metadata=ws.metadata,
    )
    return answer.contact


async def test_created_contact_reads_back_and_is_announced_on_kafka(
    channel: grpc.aio.Channel, workspace: Workspace, infra: dict[str, str]
) -> None:
    contact = await create(
        channel, workspace, "Ada@Example.com", first_name="Ada", tags=["b", "a"], vip=True
    )
    again = await contacts_pb2_grpc.ContactServiceStub(channel).GetContact(
        contacts_pb2.GetContactRequest(contact=contacts_pb2.ContactRef(email="ada@example.com")),
        metadata=workspace.metadata,
    )
    assert again.contact == contact
    assert (contact.first_name, list(contact.tags), contact.vip) == ("Ada", ["a", "b"], True)

    types = await read_types_for(infra, CONTACTS_EVENTS, contact.id, want=2)
    assert sorted(types) == ["nudge.contacts.v1.ConsentChanged", "nudge.contacts.v1.ContactCreated"]


async def read_types_for(
    infra: dict[str, str], topic: str, contact_id: str, want: int
) -> list[str]:
    """Envelope types on ``topic`` keyed by ``contact_id`` (waits for ``want`` of them)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"],
        group_id=unique("test-reader"),
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: list[str] = []
    try:
        async with asyncio.timeout(30):
            while len(found) < want:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [
                        Envelope.FromString(r.value).type
                        for r in records
                        if r.key == contact_id.encode()
                    ]
    finally:
        await consumer.stop()
    return found


async def read_event_ids_until(
    infra: dict[str, str], topic: str, contact_id: str, last: str
) -> list[str]:
    """Event ids on ``topic`` keyed by ``contact_id``, up to and including ``last``."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"],
        group_id=unique("test-reader"),
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: list[str] = []
    try:
        async with asyncio.timeout(60):
            while last not in found:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [
                        Envelope.FromString(r.value).event_id
                        for r in records
                        if r.key == contact_id.encode()
                    ]
    finally:
        await consumer.stop()
    return found[: found.index(last) + 1]


async def test_every_bad_field_is_named_in_the_error(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(channel, workspace, "nope", locale="!!", time_zone="Nowhere/Else")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["contact.email", "contact.locale", "contact.time_zone"]


async def test_a_duplicate_email_is_already_exists_and_writes_nothing(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    first = await create(channel, workspace, "twice@example.com", first_name="Ada")
    before = await written_for(workspace)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(channel, workspace, "TWICE@example.com", first_name="Bo")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # No second contact, no consent recorded for the refused one, the first one untouched.
    assert await written_for(workspace) == before == (1, 1)
    found = await contacts_pb2_grpc.ContactServiceStub(channel).GetContact(
        contacts_pb2.GetContactRequest(contact=contacts_pb2.ContactRef(contact_id=first.id)),
        metadata=workspace.metadata,
    )
    assert (found.contact.email, found.contact.first_name) == ("twice@example.com", "Ada")


async def written_for(ws: Workspace) -> tuple[object, object]:
    """(contacts, consent events) stored for the workspace."""
    database_url = os.environ["DATABASE_URL"]
    contacts = await fetchval(
        database_url, "SELECT count(*) FROM contacts.contacts WHERE workspace_id = $1::uuid", ws.id
    )
    consents = await fetchval(
        database_url,
        "SELECT count(*) FROM contacts.consent_events WHERE workspace_id = $1::uuid",
        ws.id,
    )
    return contacts, consents


async def test_another_workspace_sees_not_found(
    channel: grpc.aio.Channel, workspace: Workspace, contacts_service: RunningService
) -> None:
    other = await _new_workspace(contacts_service)
    contact = await create(channel, workspace, "mine@example.com")
    stub = contacts_pb2_grpc.ContactServiceStub(channel)
    for ref in (
        contacts_pb2.ContactRef(contact_id=contact.id),
        contacts_pb2.ContactRef(email="mine@example.com"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetContact(
                contacts_pb2.GetContactRequest(contact=ref), metadata=other.metadata
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await contacts_pb2_grpc.ConsentServiceStub(channel).CheckEligibility(
            contacts_pb2.CheckEligibilityRequest(contact_id=contact.id, purpose=AUTOMATIONS),
            metadata=other.metadata,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def _new_workspace(contacts_service: RunningService) -> Workspace:
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        answer = await contacts_pb2_grpc.WorkspaceServiceStub(ch).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Other shop", slug=unique("other")),
            metadata=(("authorization", "Admin test-admin-token"),),
        )
    return Workspace(id=answer.workspace_id, api_key=answer.api_key)


@pytest.mark.parametrize(
    ("metadata", "detail"),
    [
        ((), "missing"),
        ((("authorization", "Bearer nk_0123456789abcdef_" + "A" * 43),), "unknown API key"),
        ((("authorization", "Bearer not-a-key"),), "malformed"),
        ((("authorization", "Internal wrong-token"),), "bad internal token"),
    ],
)
async def test_calls_without_a_valid_key_are_unauthenticated(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], detail: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await contacts_pb2_grpc.ContactServiceStub(channel).GetContact(
            contacts_pb2.GetContactRequest(contact=contacts_pb2.ContactRef(email="a@example.com")),
            metadata=metadata,
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert detail in (err.value.details() or "")


async def test_creating_a_workspace_needs_the_admin_token(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="x", slug=unique("x")),
            metadata=(("authorization", "Admin guess"),),
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_body_that_is_not_the_message_is_invalid_argument(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    raw = channel.unary_unary("/nudge.contacts.v1.ContactService/CreateContact")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(b"\xff\xff\xff\xff garbage", metadata=workspace.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["body"]


async def test_an_oversized_request_is_refused(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(channel, workspace, "big@example.com", attributes={"blob": "x" * 2_000_000})
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_replayed_shop_event_is_accepted_once(
    channel: grpc.aio.Channel, workspace: Workspace, infra: dict[str, str]
) -> None:
    contact = await create(channel, workspace, "shopper@example.com")
    stub = shop_pb2_grpc.ShopEventServiceStub(channel)
    request = shop_pb2.TrackEventRequest(
        idempotency_key=unique("signup"),
        contact=contacts_pb2.ContactRef(contact_id=contact.id),
        event=shop_pb2.ShopEvent(signed_up=shop_pb2.SignedUp()),
    )
    first, second = await asyncio.gather(
        stub.TrackEvent(request, metadata=workspace.metadata),
        stub.TrackEvent(request, metadata=workspace.metadata),
    )
    assert first.event_id == second.event_id
    assert sorted([first.duplicate, second.duplicate]) == [False, True]
    assert first.contact_id == contact.id
    # A later event on the same key (same partition, relayed in commit order) marks the end.
    marker = await stub.TrackEvent(
        shop_pb2.TrackEventRequest(
            idempotency_key=unique("marker"),
            contact=contacts_pb2.ContactRef(contact_id=contact.id),
            event=shop_pb2.ShopEvent(page_viewed=shop_pb2.PageViewed(url="/")),
        ),
        metadata=workspace.metadata,
    )
    published = await read_event_ids_until(infra, SHOP_EVENTS, contact.id, marker.event_id)
    assert published == [first.event_id, marker.event_id]


async def test_an_event_for_an_unknown_contact_is_not_found(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await shop_pb2_grpc.ShopEventServiceStub(channel).TrackEvent(
            shop_pb2.TrackEventRequest(
                idempotency_key="k1",
                contact=contacts_pb2.ContactRef(contact_id=str(uuid.uuid4())),
                event=shop_pb2.ShopEvent(signed_up=shop_pb2.SignedUp()),
            ),
            metadata=workspace.metadata,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_an_event_without_key_or_kind_names_both_fields(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await shop_pb2_grpc.ShopEventServiceStub(channel).TrackEvent(
            shop_pb2.TrackEventRequest(contact=contacts_pb2.ContactRef(email="a@example.com")),
            metadata=workspace.metadata,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["idempotency_key", "event.kind"]


async def test_health_and_reflection_list_every_service(channel: grpc.aio.Channel) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(
        health_pb2.HealthCheckRequest(service="nudge.contacts.v1.ContactService")
    )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {
        "nudge.contacts.v1.ContactService",
        "nudge.contacts.v1.ConsentService",
        "nudge.contacts.v1.WorkspaceService",
        "nudge.shop.v1.ShopEventService",
        "grpc.health.v1.Health",
    } <= names


async def test_out_of_range_timestamps_are_invalid_arguments(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(channel, workspace, "late@example.com", signed_up_at=Timestamp(seconds=10**12))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["contact.signed_up_at"]
    contact = await create(channel, workspace, "late@example.com")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await shop_pb2_grpc.ShopEventServiceStub(channel).TrackEvent(
            shop_pb2.TrackEventRequest(
                idempotency_key="k",
                contact=contacts_pb2.ContactRef(contact_id=contact.id),
                event=shop_pb2.ShopEvent(
                    signed_up=shop_pb2.SignedUp(), occurred_at=Timestamp(seconds=-(10**12))
                ),
            ),
            metadata=workspace.metadata,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["event.occurred_at"]


async def test_a_string_with_a_nul_character_is_refused_at_the_door(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    contact = await create(channel, workspace, "nul@example.com")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await shop_pb2_grpc.ShopEventServiceStub(channel).TrackEvent(
            shop_pb2.TrackEventRequest(
                idempotency_key="k",
                contact=contacts_pb2.ContactRef(contact_id=contact.id),
                event=shop_pb2.ShopEvent(
                    order_placed=shop_pb2.OrderPlaced(order_id="o\x001", cart_id="c" * 3000)
                ),
            ),
            metadata=workspace.metadata,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["event.order_placed.order_id", "event.order_placed.cart_id"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(channel, workspace, "other@example.com", first_name="A\x00da")
    assert violations(err.value) == ["contact.first_name"]
