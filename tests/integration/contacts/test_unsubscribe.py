"""A recipient's unsubscribe, arriving from tracking over Kafka, withdraws their consents."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.tracking.v1 import events_pb2 as tracking_pb2

from services.common.events import new_envelope
from services.common.topics import TRACKING_EVENTS
from tests.integration.conftest import RunningService, Workspace
from tests.support import eventually, unique

AUTOMATIONS = contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
TRANSACTIONAL = contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await p.start()
    yield p
    await p.stop()


async def eligibility(
    channel: grpc.aio.Channel, ws: Workspace, contact_id: str, purpose: int
) -> contacts_pb2.CheckEligibilityResponse:
    answer: contacts_pb2.CheckEligibilityResponse = await contacts_pb2_grpc.ConsentServiceStub(
        channel
    ).CheckEligibility(
        contacts_pb2.CheckEligibilityRequest(contact_id=contact_id, purpose=purpose),  # type: ignore[arg-type]
        metadata=ws.metadata,
    )
    return answer


async def test_an_unsubscribe_replayed_withdraws_each_consent_once(
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    infra: dict[str, str],
) -> None:
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        created = await contacts_pb2_grpc.ContactServiceStub(channel).CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(email=f"{unique('u')}@example.com"),
                consents=[AUTOMATIONS, contacts_pb2.CONSENT_PURPOSE_MARKETING],
            ),
            metadata=workspace.metadata,
        )
        contact_id = created.contact.id
        assert (await eligibility(channel, workspace, contact_id, AUTOMATIONS)).eligible

        unsubscribed = tracking_pb2.UnsubscribeRequested(
            message_id=str(uuid.uuid4()), contact_id=contact_id, one_click=True
        )
        value = new_envelope(workspace.id, unsubscribed).SerializeToString()
        for _ in range(2):  # a redelivery
            await producer.send_and_wait(TRACKING_EVENTS, value, key=contact_id.encode())

        async def withdrawn() -> contacts_pb2.CheckEligibilityResponse | None:
            answer = await eligibility(channel, workspace, contact_id, AUTOMATIONS)
            return None if answer.eligible else answer

        answer = await eventually(withdrawn, timeout=30)
        assert answer.reason == "consent_withdrawn:automations"
        assert (await eligibility(channel, workspace, contact_id, TRANSACTIONAL)).eligible

        # An unsubscribe of another contact, behind the replay: once it is applied, so is
        # the replay, and the history must hold one withdrawal per purpose.
        marker = await contacts_pb2_grpc.ContactServiceStub(channel).CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(email=f"{unique('m')}@example.com"),
                consents=[AUTOMATIONS],
            ),
            metadata=workspace.metadata,
        )
        marker_event = tracking_pb2.UnsubscribeRequested(
            message_id=str(uuid.uuid4()), contact_id=marker.contact.id
        )
        await producer.send_and_wait(
            TRACKING_EVENTS,
            new_envelope(workspace.id, marker_event).SerializeToString(),
            key=contact_id.encode(),  # same partition as the replay
        )

        async def marker_withdrawn() -> bool:
            return not (
                await eligibility(channel, workspace, marker.contact.id, AUTOMATIONS)
            ).eligible

        await eventually(marker_withdrawn, timeout=30)

    conn = await asyncpg.connect(infra["DATABASE_URL"])
    try:
        rows = await conn.fetch(
            "SELECT purpose, source, actor FROM contacts.consent_events"
            " WHERE contact_id = $1::uuid AND status = 2 ORDER BY purpose",
            contact_id,
        )
    finally:
        await conn.close()
    assert [(r["purpose"], r["source"], r["actor"]) for r in rows] == [
        (1, 4, "contact"),
        (2, 4, "contact"),
        (3, 4, "contact"),
    ]
