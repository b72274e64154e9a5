"""Ingestion over real gRPC, PostgreSQL and Kafka: reused keys, batches, concurrent events."""

from __future__ import annotations

import asyncio
import collections
import os

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc

from tests.integration.conftest import RunningService, Workspace
from tests.integration.contacts.shop_topic import claimed_keys, event_ids_until_marker
from tests.support import unique

ACCEPTED = shop_pb2.TRACK_EVENT_STATUS_ACCEPTED
DUPLICATE = shop_pb2.TRACK_EVENT_STATUS_DUPLICATE
CONFLICT = shop_pb2.TRACK_EVENT_STATUS_CONFLICT
INVALID = shop_pb2.TRACK_EVENT_STATUS_INVALID
NOT_FOUND = shop_pb2.TRACK_EVENT_STATUS_CONTACT_NOT_FOUND


@pytest.fixture
async def channel(contacts_service: RunningService) -> grpc.aio.Channel:
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        yield ch


async def new_contact(channel: grpc.aio.Channel, ws: Workspace) -> contacts_pb2.Contact:
    answer = await contacts_pb2_grpc.ContactServiceStub(channel).CreateContact(
        contacts_pb2.CreateContactRequest(
            contact=contacts_pb2.Contact(email=f"{unique('shopper')}@example.com")
        ),
        metadata=ws.metadata,
    )
    return answer.contact


def by_id(contact: contacts_pb2.Contact) -> contacts_pb2.ContactRef:
    return contacts_pb2.ContactRef(contact_id=contact.id)


def order(key: str, ref: contacts_pb2.ContactRef, order_id: str) -> shop_pb2.TrackEventRequest:
    return shop_pb2.TrackEventRequest(
        idempotency_key=key,
        contact=ref,
        event=shop_pb2.ShopEvent(order_placed=shop_pb2.OrderPlaced(order_id=order_id)),
    )


async def test_a_key_reused_for_another_event_is_already_exists_naming_the_key(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    ada, bob = await new_contact(channel, workspace), await new_contact(channel, workspace)
    stub = shop_pb2_grpc.ShopEventServiceStub(channel)
    key = unique("order")
    first = await stub.TrackEvent(order(key, by_id(ada), "o-1"), metadata=workspace.metadata)
    assert not first.duplicate

    other_events = [
        order(key, by_id(ada), "o-2"),  # other data
        order(key, by_id(bob), "o-1"),  # other contact
        shop_pb2.TrackEventRequest(  # other type
            idempotency_key=key,
            contact=by_id(ada),
            event=shop_pb2.ShopEvent(signed_up=shop_pb2.SignedUp()),
        ),
    ]
    for request in other_events:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.TrackEvent(request, metadata=workspace.metadata)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert key in (err.value.details() or "")

    # The same event again, even naming the contact another way, is still a no-op.
    same = order(key, contacts_pb2.ContactRef(email=ada.email.upper()), "o-1")
    again = await stub.TrackEvent(same, metadata=workspace.metadata)
    assert (again.event_id, again.contact_id, again.duplicate) == (first.event_id, ada.id, True)


async def test_a_batch_answers_each_event_and_queues_only_the_accepted_once(
    channel: grpc.aio.Channel, workspace: Workspace, infra: dict[str, str]
) -> None:
    ada = await new_contact(channel, workspace)
    stub = shop_pb2_grpc.ShopEventServiceStub(channel)
    earlier = unique("earlier")
    held = await stub.TrackEvent(order(earlier, by_id(ada), "o-0"), metadata=workspace.metadata)
    keys = [unique(f"k{n}") for n in range(4)]
    future = Timestamp(seconds=4_000_000_000)
    events = [
        order(keys[0], by_id(ada), "o-1"),  # 0 accepted
        shop_pb2.TrackEventRequest(idempotency_key=keys[1], contact=by_id(ada)),  # 1 no kind
        order(keys[2], contacts_pb2.ContactRef(external_id="nobody"), "o-2"),  # 2 unknown
        order(keys[0], by_id(ada), "o-1"),  # 3 the same as 0: duplicate of it
        order(keys[0], by_id(ada), "o-9"),  # 4 key of 0, other event: conflict
        order(earlier, by_id(ada), "o-0"),  # 5 sent before: duplicate
        order(earlier, by_id(ada), "o-8"),  # 6 sent before with another event: conflict
        order(keys[3], by_id(ada), "o-3"),  # 7 accepted
        shop_pb2.TrackEventRequest(  # 8 in the future
            idempotency_key=unique("late"),
            contact=by_id(ada),
            event=shop_pb2.ShopEvent(signed_up=shop_pb2.SignedUp(), occurred_at=future),
        ),
    ]
    answer = await stub.TrackEvents(
        shop_pb2.TrackEventsRequest(events=events), metadata=workspace.metadata
    )
    results = answer.results
    assert [r.status for r in results] == [
        ACCEPTED,
        INVALID,
        NOT_FOUND,
        DUPLICATE,
        CONFLICT,
        DUPLICATE,
        CONFLICT,
        ACCEPTED,
        INVALID,
    ]
    assert [v.field for v in results[1].violations] == ["event.kind"]
    assert [v.field for v in results[8].violations] == ["event.occurred_at"]
    assert results[3].event_id == results[0].event_id
    assert results[5].event_id == held.event_id
    assert keys[0] in results[4].detail and earlier in results[6].detail
    assert {results[0].contact_id, results[7].contact_id} == {ada.id}

    # Refused events hold no key: the fixed event is accepted, not a duplicate.
    assert claimed_keys_of_batch(await claimed_keys(infra["DATABASE_URL"], workspace.id), keys) == {
        keys[0],
        keys[3],
    }
    fixed = await stub.TrackEvent(order(keys[1], by_id(ada), "o-1b"), metadata=workspace.metadata)
    assert not fixed.duplicate

    marker = await stub.TrackEvent(
        order(unique("marker"), by_id(ada), "o-m"), metadata=workspace.metadata
    )
    seen = await event_ids_until_marker(infra["KAFKA_BOOTSTRAP_SERVERS"], ada.id, marker.event_id)
    assert seen == collections.Counter(
        {
            held.event_id: 1,
            results[0].event_id: 1,
            results[7].event_id: 1,
            fixed.event_id: 1,
            marker.event_id: 1,
        }
    )


def claimed_keys_of_batch(claimed: set[str], keys: list[str]) -> set[str]:
    return claimed & set(keys)


async def test_a_batch_of_more_than_1000_is_invalid_argument_and_none_is_a_no_op(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    ada = await new_contact(channel, workspace)
    stub = shop_pb2_grpc.ShopEventServiceStub(channel)
    too_many = [order(unique("k"), by_id(ada), "o") for _ in range(1001)]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.TrackEvents(
            shop_pb2.TrackEventsRequest(events=too_many), metadata=workspace.metadata
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events" in (err.value.details() or "")
    empty = await stub.TrackEvents(shop_pb2.TrackEventsRequest(), metadata=workspace.metadata)
    assert list(empty.results) == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.TrackEvents(
            shop_pb2.TrackEventsRequest(), metadata=(("authorization", "Bearer nk_x_y"),)
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not claimed_keys_of_batch(
        await claimed_keys(os.environ["DATABASE_URL"], workspace.id),
        [e.idempotency_key for e in too_many],
    )


async def test_concurrent_single_events_each_get_their_own_answer_and_reach_kafka_once(
    channel: grpc.aio.Channel, workspace: Workspace, infra: dict[str, str]
) -> None:
    """Many calls at once share group commits: each still gets its own answer, a key sent
    twice at once is accepted once, and a conflicting pair is one accepted, one conflict."""
    ada = await new_contact(channel, workspace)
    stub = shop_pb2_grpc.ShopEventServiceStub(channel)
    keys = [unique(f"c{n}") for n in range(120)]
    requests = [order(k, by_id(ada), "o") for k in keys]
    requests += [order(k, by_id(ada), "o") for k in keys[:20]]  # same again, concurrently
    requests += [order(k, by_id(ada), "other") for k in keys[20:30]]  # conflicting
    requests.append(shop_pb2.TrackEventRequest(idempotency_key="", contact=by_id(ada)))

    async def send(request: shop_pb2.TrackEventRequest) -> shop_pb2.TrackEventResponse | str:
        try:
            return await stub.TrackEvent(request, metadata=workspace.metadata)
        except grpc.aio.AioRpcError as err:
            return err.code().name

    answers = await asyncio.gather(*(send(r) for r in requests))
    assert answers[-1] == "INVALID_ARGUMENT"
    by_key: dict[str, list[shop_pb2.TrackEventResponse | str]] = collections.defaultdict(list)
    for request, answer in zip(requests[:-1], answers[:-1], strict=True):
        by_key[request.idempotency_key].append(answer)
    for key in keys[:20]:
        pair = by_key[key]
        assert all(isinstance(a, shop_pb2.TrackEventResponse) for a in pair)
        assert sorted(a.duplicate for a in pair) == [False, True]  # type: ignore[union-attr]
        assert len({a.event_id for a in pair}) == 1  # type: ignore[union-attr]
    for key in keys[20:30]:
        assert sorted(str(a) if isinstance(a, str) else "ok" for a in by_key[key]) == [
            "ALREADY_EXISTS",
            "ok",
        ]
    accepted = {
        a.event_id
        for a in answers
        if isinstance(a, shop_pb2.TrackEventResponse) and not a.duplicate
    }
    assert len(accepted) == len(keys)

    marker = await stub.TrackEvent(
        order(unique("marker"), by_id(ada), "o-m"), metadata=workspace.metadata
    )
    seen = await event_ids_until_marker(infra["KAFKA_BOOTSTRAP_SERVERS"], ada.id, marker.event_id)
    assert seen == collections.Counter({e: 1 for e in accepted | {marker.event_id}})
