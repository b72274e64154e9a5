"""Consent per purpose with its full history over gRPC: the proof (IP, browser, wording, when,
who), the state derived from the history, one versioned ConsentChanged per record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.common.topics import CONTACTS_EVENTS
from tests.integration.conftest import RunningService, Workspace
from tests.integration.consent.conftest import (
    create_contact,
    envelopes_until,
    new_workspace,
    violations,
)

MARKETING = contacts_pb2.CONSENT_PURPOSE_MARKETING
TARGETED = contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES
AUTOMATIONS = contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
GRANTED = contacts_pb2.CONSENT_STATUS_GRANTED
WITHDRAWN = contacts_pb2.CONSENT_STATUS_WITHDRAWN
FORM = contacts_pb2.CONSENT_SOURCE_FORM
IMPORT = contacts_pb2.CONSENT_SOURCE_IMPORT


def stamp(when: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(when)
    return t


def consent_stub(channel: grpc.aio.Channel) -> contacts_pb2_grpc.ConsentServiceStub:
    return contacts_pb2_grpc.ConsentServiceStub(channel)


async def record(
    channel: grpc.aio.Channel, ws: Workspace, contact_id: str, **fields: object
) -> contacts_pb2.RecordConsentResponse:
    request = contacts_pb2.RecordConsentRequest(
        contact=contacts_pb2.ContactRef(contact_id=contact_id),
        **fields,  # type: ignore[arg-type]
    )
    answer: contacts_pb2.RecordConsentResponse = await consent_stub(channel).RecordConsent(
        request, metadata=ws.metadata
    )
    return answer


async def test_the_history_keeps_the_proof_newest_first_and_derives_the_state(
    channel: grpc.aio.Channel, workspace: Workspace, infra: dict[str, str]
) -> None:
    contact_id = await create_contact(channel, workspace)
    given = datetime.now(UTC) - timedelta(days=2)
    first = await record(
        channel,
        workspace,
        contact_id,
        purpose=MARKETING,
        status=GRANTED,
        source=FORM,
        wording="Send me offers",
        actor="signup form",
        ip="203.0.113.7",
        user_agent="Mozilla/5.0 test",
        recorded_at=stamp(given),
    )
    second = await record(
        channel,
        workspace,
        contact_id,
        purpose=MARKETING,
        status=WITHDRAWN,
        source=FORM,
        wording="Stop offers",
        ip="2001:db8::1",
    )
    # Imported later but given before the withdrawal: part of the proof, not the state.
    third = await record(
        channel,
        workspace,
        contact_id,
        purpose=MARKETING,
        status=GRANTED,
        source=IMPORT,
        wording="old shop opt-in",
        recorded_at=stamp(given + timedelta(hours=1)),
    )
    history = await consent_stub(channel).GetConsentHistory(
        contacts_pb2.GetConsentHistoryRequest(
            contact=contacts_pb2.ContactRef(contact_id=contact_id)
        ),
        metadata=workspace.metadata,
    )
    assert [r.id for r in history.records] == [
        second.consent_event_id,
        third.consent_event_id,
        first.consent_event_id,
    ]
    oldest = history.records[-1]
    assert (oldest.ip, oldest.user_agent, oldest.wording, oldest.actor) == (
        "203.0.113.7",
        "Mozilla/5.0 test",
        "Send me offers",
        "signup form",
    )
    assert abs(oldest.recorded_at.ToDatetime(UTC) - given) < timedelta(milliseconds=1)
    current = {c.purpose: c.state for c in history.current}
    assert current == {
        MARKETING: contacts_pb2.CONSENT_STATE_WITHDRAWN,
        TARGETED: contacts_pb2.CONSENT_STATE_NEVER_ASKED,
        AUTOMATIONS: contacts_pb2.CONSENT_STATE_NEVER_ASKED,
    }
    eligibility = await consent_stub(channel).CheckEligibility(
        contacts_pb2.CheckEligibilityRequest(contact_id=contact_id, purpose=MARKETING),
        metadata=workspace.metadata,
    )
    assert (eligibility.eligible, eligibility.reason) == (False, "consent_withdrawn:marketing")

    # One ConsentChanged per record, each with the next version of the contact.
    envelopes = await envelopes_until(infra, CONTACTS_EVENTS, contact_id, third.consent_event_id)
    changed = [
        (e.event_id, e.consent_changed.version, e.consent_changed.status)
        for e in envelopes
        if e.WhichOneof("payload") == "consent_changed"
    ]
    assert changed == [
        (first.consent_event_id, 2, GRANTED),
        (second.consent_event_id, 3, WITHDRAWN),
        (third.consent_event_id, 4, WITHDRAWN),  # the state now, not the back-dated record's
    ]


async def test_the_history_pages_with_a_token(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    contact_id = await create_contact(channel, workspace)
    ids = []
    for status in (GRANTED, WITHDRAWN, GRANTED):
        ids.append(
            (
                await record(
                    channel, workspace, contact_id, purpose=AUTOMATIONS, status=status, source=FORM
                )
            ).consent_event_id
        )
    seen: list[str] = []
    token = ""
    while True:
        page = await consent_stub(channel).GetConsentHistory(
            contacts_pb2.GetConsentHistoryRequest(
                contact=contacts_pb2.ContactRef(contact_id=contact_id),
                page_size=2,
                page_token=token,
            ),
            metadata=workspace.metadata,
        )
        seen += [r.id for r in page.records]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"contact": contacts_pb2.ContactRef(email="")}, "contact.email"),
        ({"contact": contacts_pb2.ContactRef(contact_id="")}, "contact.contact_id"),
        ({}, "contact"),
        ({"ip": "not-an-ip"}, "ip"),
        ({"wording": "x" * 2001}, "wording"),
        ({"user_agent": "u" * 513}, "user_agent"),
        ({"status": contacts_pb2.CONSENT_STATUS_PENDING}, "status"),
        ({"source": contacts_pb2.CONSENT_SOURCE_CONFIRMATION_LINK}, "source"),
        ({"purpose": contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL}, "purpose"),
        ({"recorded_at": stamp(datetime.now(UTC) + timedelta(days=1))}, "recorded_at"),
    ],
)
async def test_a_bad_consent_is_invalid_argument_naming_its_field_and_writes_nothing(
    channel: grpc.aio.Channel,
    workspace: Workspace,
    fields: dict[str, object],
    field: str,
) -> None:
    contact_id = await create_contact(channel, workspace)
    request = contacts_pb2.RecordConsentRequest(
        contact=contacts_pb2.ContactRef(contact_id=contact_id),
        purpose=MARKETING,
        status=GRANTED,
        source=FORM,
    )
    for name, value in fields.items():
        if isinstance(value, (contacts_pb2.ContactRef, Timestamp)):
            getattr(request, name).CopyFrom(value)
        else:
            setattr(request, name, value)
    if not fields:
        request.ClearField("contact")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await consent_stub(channel).RecordConsent(request, metadata=workspace.metadata)
    assert field in violations(caught.value)
    history = await consent_stub(channel).GetConsentHistory(
        contacts_pb2.GetConsentHistoryRequest(
            contact=contacts_pb2.ContactRef(contact_id=contact_id)
        ),
        metadata=workspace.metadata,
    )
    assert list(history.records) == []


async def test_another_workspaces_contact_is_not_found(
    channel: grpc.aio.Channel, workspace: Workspace, contacts_service: RunningService
) -> None:
    contact_id = await create_contact(channel, workspace)
    other = await new_workspace(contacts_service)
    for call in (
        consent_stub(channel).RecordConsent(
            contacts_pb2.RecordConsentRequest(
                contact=contacts_pb2.ContactRef(contact_id=contact_id),
                purpose=MARKETING,
                status=GRANTED,
                source=FORM,
            ),
            metadata=other.metadata,
        ),
        consent_stub(channel).GetConsentHistory(
            contacts_pb2.GetConsentHistoryRequest(
                contact=contacts_pb2.ContactRef(contact_id=contact_id)
            ),
            metadata=other.metadata,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
