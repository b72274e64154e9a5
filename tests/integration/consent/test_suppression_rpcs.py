"""The suppression list over gRPC (add, remove, list), a permanent bounce from delivery, and
CheckEligibility reading the list."""

from __future__ import annotations

import uuid

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import events_pb2 as delivery_events_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.events import new_envelope
from services.common.topics import CONTACTS_EVENTS, DELIVERY_EVENTS
from tests.integration.conftest import RunningService, Workspace
from tests.integration.consent.conftest import (
    create_contact,
    envelopes_until,
    new_workspace,
    violations,
)
from tests.support import eventually, unique

MARKETING = contacts_pb2.CONSENT_PURPOSE_MARKETING
TRANSACTIONAL = contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
MANUAL = contacts_pb2.SUPPRESSION_REASON_MANUAL
HARD_BOUNCE = contacts_pb2.SUPPRESSION_REASON_HARD_BOUNCE


def stub(channel: grpc.aio.Channel) -> contacts_pb2_grpc.ConsentServiceStub:
    return contacts_pb2_grpc.ConsentServiceStub(channel)


async def eligibility(
    channel: grpc.aio.Channel, ws: Workspace, contact_id: str, purpose: int = MARKETING
) -> contacts_pb2.CheckEligibilityResponse:
    answer: contacts_pb2.CheckEligibilityResponse = await stub(channel).CheckEligibility(
        contacts_pb2.CheckEligibilityRequest(contact_id=contact_id, purpose=purpose),  # type: ignore[arg-type]
        metadata=ws.metadata,
    )
    return answer


async def test_a_manual_suppression_stops_mail_lists_and_lifts(
    channel: grpc.aio.Channel, workspace: Workspace, infra: dict[str, str]
) -> None:
    email = f"{unique('s')}@example.com"
    contact_id = await create_contact(channel, workspace, MARKETING, email=email)
    assert (await eligibility(channel, workspace, contact_id)).eligible

    added = await stub(channel).AddSuppression(
        contacts_pb2.AddSuppressionRequest(email=email.upper()), metadata=workspace.metadata
    )
    assert added.created and added.suppression.reason == MANUAL
    assert added.suppression.email == email
    again = await stub(channel).AddSuppression(
        contacts_pb2.AddSuppressionRequest(email=email), metadata=workspace.metadata
    )
    assert not again.created  # a duplicate changes nothing

    answer = await eligibility(channel, workspace, contact_id)
    assert (answer.eligible, answer.reason) == (False, "suppressed:manual")
    # Transactional mail too: the address is not to be mailed at all.
    assert not (await eligibility(channel, workspace, contact_id, TRANSACTIONAL)).eligible

    listed = await stub(channel).ListSuppressions(
        contacts_pb2.ListSuppressionsRequest(), metadata=workspace.metadata
    )
    assert [(s.email, s.reason) for s in listed.suppressions] == [(email, MANUAL)]

    # The contact changed: one ContactSuppressed with its next version, between the
    # consent given at creation (version 2) and the next change (version 4).
    marker = await stub(channel).RecordConsent(
        contacts_pb2.RecordConsentRequest(
            contact=contacts_pb2.ContactRef(contact_id=contact_id),
            purpose=contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
            status=contacts_pb2.CONSENT_STATUS_WITHDRAWN,
            source=contacts_pb2.CONSENT_SOURCE_API,
        ),
        metadata=workspace.metadata,
    )
    envelopes = await envelopes_until(infra, CONTACTS_EVENTS, contact_id, marker.consent_event_id)
    kinds = [(e.WhichOneof("payload"), _version(e)) for e in envelopes]
    assert kinds[-3:] == [
        ("consent_changed", 2),
        ("contact_suppressed", 3),
        ("consent_changed", 4),
    ]

    removed = await stub(channel).RemoveSuppression(
        contacts_pb2.RemoveSuppressionRequest(email=email), metadata=workspace.metadata
    )
    assert removed.removed
    assert (await eligibility(channel, workspace, contact_id)).eligible
    removed = await stub(channel).RemoveSuppression(
        contacts_pb2.RemoveSuppressionRequest(email=email), metadata=workspace.metadata
    )
    assert not removed.removed


def _version(e: Envelope) -> int:
    payload = e.WhichOneof("payload")
    return int(getattr(getattr(e, payload or ""), "version", 0)) if payload else 0


async def test_a_permanent_bounce_suppresses_the_address_once_and_a_manager_cannot_lift_it(
    channel: grpc.aio.Channel, workspace: Workspace, infra: dict[str, str]
) -> None:
    email = f"{unique('b')}@example.com"
    contact_id = await create_contact(channel, workspace, MARKETING, email=email)
    producer = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await producer.start()
    try:
        soft = delivery_events_pb2.MessageBounced(
            message_id=str(uuid.uuid4()), contact_id=contact_id, permanent=False
        )
        hard = delivery_events_pb2.MessageBounced(
            message_id=str(uuid.uuid4()),
            contact_id=contact_id,
            permanent=True,
            smtp_response="550 no such user",
        )
        soft_value = new_envelope(workspace.id, soft).SerializeToString()
        hard_value = new_envelope(workspace.id, hard).SerializeToString()
        await producer.send_and_wait(DELIVERY_EVENTS, soft_value, key=contact_id.encode())
        for _ in range(2):  # a redelivery
            await producer.send_and_wait(DELIVERY_EVENTS, hard_value, key=contact_id.encode())
    finally:
        await producer.stop()

    async def suppressed() -> contacts_pb2.CheckEligibilityResponse | None:
        answer = await eligibility(channel, workspace, contact_id)
        return None if answer.eligible else answer

    answer = await eventually(suppressed, timeout=60)
    assert answer.reason == "suppressed:hard_bounce"
    listed = await stub(channel).ListSuppressions(
        contacts_pb2.ListSuppressionsRequest(reason=HARD_BOUNCE), metadata=workspace.metadata
    )
    assert [s.email for s in listed.suppressions] == [email]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).RemoveSuppression(
            contacts_pb2.RemoveSuppressionRequest(email=email), metadata=workspace.metadata
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not (await eligibility(channel, workspace, contact_id)).eligible


async def test_the_list_is_per_workspace_and_pages(
    channel: grpc.aio.Channel, workspace: Workspace, contacts_service: RunningService
) -> None:
    other = await new_workspace(contacts_service)
    emails = [f"{unique('p')}@example.com" for _ in range(3)]
    for email in emails:
        await stub(channel).AddSuppression(
            contacts_pb2.AddSuppressionRequest(email=email), metadata=workspace.metadata
        )
    seen: list[str] = []
    token = ""
    while True:
        page = await stub(channel).ListSuppressions(
            contacts_pb2.ListSuppressionsRequest(page_size=2, page_token=token),
            metadata=workspace.metadata,
        )
        seen += [s.email for s in page.suppressions]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(emails) and len(seen) == 3
    theirs = await stub(channel).ListSuppressions(
        contacts_pb2.ListSuppressionsRequest(), metadata=other.metadata
    )
    assert list(theirs.suppressions) == []
    removed = await stub(channel).RemoveSuppression(
        contacts_pb2.RemoveSuppressionRequest(email=emails[0]), metadata=other.metadata
    )
    assert not removed.removed


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (contacts_pb2.AddSuppressionRequest(email=""), "email"),
        (contacts_pb2.AddSuppressionRequest(email="no-at-sign"), "email"),
        (contacts_pb2.AddSuppressionRequest(email="a" * 250 + "@x.io"), "email"),
        (contacts_pb2.AddSuppressionRequest(email="a\x00b@x.io"), "email"),
        (
            contacts_pb2.AddSuppressionRequest(
                email="e@x.io", reason=contacts_pb2.SUPPRESSION_REASON_ERASED
            ),
            "reason",
        ),
        (contacts_pb2.AddSuppressionRequest(email="e@x.io", reason=99), "reason"),  # type: ignore[arg-type]
    ],
)
async def test_a_bad_suppression_is_invalid_argument(
    channel: grpc.aio.Channel,
    workspace: Workspace,
    request_: contacts_pb2.AddSuppressionRequest,
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).AddSuppression(request_, metadata=workspace.metadata)
    assert violations(caught.value) == [field] or field in violations(caught.value)
    listed = await stub(channel).ListSuppressions(
        contacts_pb2.ListSuppressionsRequest(), metadata=workspace.metadata
    )
    assert list(listed.suppressions) == []


async def test_a_forged_page_token_is_invalid_argument(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub(channel).ListSuppressions(
            contacts_pb2.ListSuppressionsRequest(page_token="!!nope"), metadata=workspace.metadata
        )
    assert violations(caught.value) == ["page_token"]
