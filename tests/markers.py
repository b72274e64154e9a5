"""Proving that a replay was consumed, with markers on the replayed contact's own key.

Shop events and delivery requests are keyed by contact id, and a topic has several
partitions: another contact's later mail says nothing about this contact's partition. A
marker on the same key does. :func:`settle` sends, for each contact, a later shop event and
waits until the trigger engine has handled it (so everything before it on that partition
was handled too), waits until the trigger engine's outbox has published what that produced,
and then asks delivery for a transactional mail to the contact and waits for it (delivery
consumed every earlier request on that partition of delivery.requests.v1).

:func:`one_per_partition` picks, from many contacts, one per partition, with Kafka's own
partitioner (murmur2 of the key), so a test of many contacts needs a few markers only.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence

import grpc
from aiokafka.partitioner import murmur2
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc

from services.common.topics import DELIVERY_REQUESTS, SHOP_EVENTS, TOPICS
from tests.support import eventually, outbox_drained, triggers_consumed, unique

Metadata = tuple[tuple[str, str], ...]


def partition_of(key: str, partitions: int) -> int:
    """The partition the default partitioner (Java's and aiokafka's) gives ``key``."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def one_per_partition(contact_ids: Sequence[str]) -> list[str]:
    assert TOPICS[SHOP_EVENTS] == TOPICS[DELIVERY_REQUESTS]
    chosen: dict[int, str] = {}
    for contact_id in contact_ids:
        chosen.setdefault(partition_of(contact_id, TOPICS[SHOP_EVENTS]), contact_id)
    return list(chosen.values())


async def settle(
    *,
    contacts_addr: str,
    delivery_addr: str,
    metadata: Metadata,
    database_url: str,
    contact_ids: Sequence[str],
    delivered: Callable[[str], object | Awaitable[object]],
    timeout: float = 60.0,
) -> None:
    """Wait until everything reported so far for ``contact_ids`` went through the trigger
    engine and delivery; ``delivered(message_id)`` says whether a mail reached the sink."""
    async with grpc.aio.insecure_channel(contacts_addr) as channel:
        shop = shop_pb2_grpc.ShopEventServiceStub(channel)
        answers = await asyncio.gather(
            *(
                shop.TrackEvent(
                    shop_pb2.TrackEventRequest(
                        idempotency_key=unique("marker"),
                        contact=contacts_pb2.ContactRef(contact_id=contact_id),
                        event=shop_pb2.ShopEvent(page_viewed=shop_pb2.PageViewed(url="/marker")),
                    ),
                    metadata=metadata,
                )
                for contact_id in contact_ids
            )
        )
    for answer, contact_id in zip(answers, contact_ids, strict=True):
        await eventually(
            functools.partial(triggers_consumed, database_url, answer.event_id), timeout=timeout
        )
        await eventually(
            functools.partial(outbox_drained, database_url, "triggers", contact_id), timeout=30
        )
    async with grpc.aio.insecure_channel(delivery_addr) as channel:
        delivery = delivery_pb2_grpc.DeliveryServiceStub(channel)
        sent = await asyncio.gather(
            *(
                delivery.SendTransactional(
                    delivery_pb2.SendTransactionalRequest(
                        idempotency_key=unique("marker"),
                        contact_id=contact_id,
                        content=delivery_pb2.MessageContent(subject="Marker", body_text="m"),
                    ),
                    metadata=metadata,
                )
                for contact_id in contact_ids
            )
        )
    for answer in sent:
        await eventually(functools.partial(delivered, answer.message_id), timeout=timeout)
