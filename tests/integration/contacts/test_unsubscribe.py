"""A recipient's unsubscribe, arriving from tracking over Kafka, withdraws their consents:
each post of the link again (after a re-subscribe), a redelivered event once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.tracking.v1 import events_pb2 as tracking_pb2

from services.common import links
from services.common.events import new_envelope
from services.common.topics import TRACKING_EVENTS
from tests.integration.conftest import RunningService, Workspace
from tests.integration.tracking.conftest import LINK_SECRET, HttpService, spans, tracking_service
from tests.support import eventually, unique

__all__ = ["spans", "tracking_service"]  # fixtures shared with the tracking tests

AUTOMATIONS = contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
TRANSACTIONAL = contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
MARKETING = contacts_pb2.CONSENT_PURPOSE_MARKETING
TARGETED = contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES
GRANTED = contacts_pb2.CONSENT_STATUS_GRANTED
WITHDRAWN = contacts_pb2.CONSENT_STATUS_WITHDRAWN


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


async def consent_state(
    infra: dict[str, str], workspace_id: str, contact_id: str
) -> dict[int, int]:
    """Purpose -> current status, from contacts' consent state itself."""
    conn = await asyncpg.connect(infra["DATABASE_URL"])
    try:
        rows = await conn.fetch(
            "SELECT purpose, status FROM contacts.consents"
            " WHERE workspace_id = $1::uuid AND contact_id = $2::uuid",
            workspace_id,
            contact_id,
        )
    finally:
        await conn.close()
    return {r["purpose"]: r["status"] for r in rows}


UNSUBSCRIBED = {MARKETING: WITHDRAWN, TARGETED: WITHDRAWN, AUTOMATIONS: WITHDRAWN}
RESUBSCRIBED = {MARKETING: GRANTED, TARGETED: WITHDRAWN, AUTOMATIONS: GRANTED}


async def test_the_same_link_unsubscribes_again_after_a_resubscribe_and_a_replay_does_not(
    contacts_service: RunningService,
    tracking_service: HttpService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    infra: dict[str, str],
) -> None:
    message_id = str(uuid.uuid4())
    reader = AIOKafkaConsumer(
        TRACKING_EVENTS,
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"],
        group_id=unique("unsubscribe-test"),
        auto_offset_reset="earliest",
    )
    await reader.start()
    try:
        async with (
            grpc.aio.insecure_channel(contacts_service.address) as channel,
            httpx.AsyncClient(base_url=tracking_service.base_url, timeout=10) as http,
        ):
            created = await contacts_pb2_grpc.ContactServiceStub(channel).CreateContact(
                contacts_pb2.CreateContactRequest(
                    contact=contacts_pb2.Contact(email=f"{unique('r')}@example.com"),
                    consents=[AUTOMATIONS, contacts_pb2.CONSENT_PURPOSE_MARKETING],
                ),
                metadata=workspace.metadata,
            )
            contact_id = created.contact.id
            link = links.sign_unsubscribe(LINK_SECRET, workspace.id, message_id, contact_id)

            async def resubscribe() -> None:
                for purpose in (MARKETING, AUTOMATIONS):
                    await contacts_pb2_grpc.ConsentServiceStub(channel).RecordConsent(
                        contacts_pb2.RecordConsentRequest(
                            contact=contacts_pb2.ContactRef(contact_id=contact_id),
                            purpose=purpose,
                            status=GRANTED,
                            source=contacts_pb2.CONSENT_SOURCE_API,
                        ),
                        metadata=workspace.metadata,
                    )

            async def unsubscribed() -> bool:
                state = await consent_state(infra, workspace.id, contact_id)
                return state == UNSUBSCRIBED

            # 1. The link unsubscribes.
            assert (
                await http.post(link, data={"List-Unsubscribe": "One-Click"})
            ).status_code == 200
            await eventually(unsubscribed, timeout=30)

            # 2. Subscribed again through the API, then the same mail's link again.
            await resubscribe()
            assert await consent_state(infra, workspace.id, contact_id) == RESUBSCRIBED
            answer = await http.post(link, data={"confirm": "unsubscribe"})
            assert answer.status_code == 200
            await eventually(unsubscribed, timeout=30)

            # 3. Subscribed again; a redelivery of that second event must change nothing.
            await resubscribe()
            second = await nth_unsubscribe_record(reader, message_id, 2)
            await producer.send_and_wait(TRACKING_EVENTS, second, key=contact_id.encode())
            await behind_on_the_same_partition(producer, channel, workspace, contact_id)
            assert await consent_state(infra, workspace.id, contact_id) == RESUBSCRIBED
    finally:
        await reader.stop()


async def nth_unsubscribe_record(reader: AIOKafkaConsumer, message_id: str, n: int) -> bytes:
    """The raw value of the ``n``-th UnsubscribeRequested of ``message_id`` tracking published."""
    found: list[bytes] = []

    async def arrived() -> bool:
        for records in (await reader.getmany(timeout_ms=500)).values():
            for record in records:
                envelope = Envelope.FromString(record.value)
                if (
                    envelope.WhichOneof("payload") == "unsubscribe_requested"
                    and envelope.unsubscribe_requested.message_id == message_id
                ):
                    found.append(record.value)
        return len(found) >= n

    await eventually(arrived, timeout=30)
    first, nth = Envelope.FromString(found[0]), Envelope.FromString(found[n - 1])
    assert first.event_id != nth.event_id, "each post of the link is its own event"
    return found[n - 1]


async def behind_on_the_same_partition(
    producer: AIOKafkaProducer, channel: grpc.aio.Channel, workspace: Workspace, key: str
) -> None:
    """Waits until everything sent before with ``key`` is handled: an unsubscribe of another
    contact sent with the same key, once applied, means the earlier records were too."""
    marker = await contacts_pb2_grpc.ContactServiceStub(channel).CreateContact(
        contacts_pb2.CreateContactRequest(
            contact=contacts_pb2.Contact(email=f"{unique('m')}@example.com"),
            consents=[AUTOMATIONS],
        ),
        metadata=workspace.metadata,
    )
    event = tracking_pb2.UnsubscribeRequested(
        message_id=str(uuid.uuid4()), contact_id=marker.contact.id
    )
    await producer.send_and_wait(
        TRACKING_EVENTS, new_envelope(workspace.id, event).SerializeToString(), key=key.encode()
    )

    async def marker_withdrawn() -> bool:
        answer = await eligibility(channel, workspace, marker.contact.id, AUTOMATIONS)
        return not answer.eligible

    await eventually(marker_withdrawn, timeout=30)
