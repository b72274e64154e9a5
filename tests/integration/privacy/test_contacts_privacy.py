"""Contacts' PrivacyService on real PostgreSQL and Kafka: what an export holds, what an
erasure removes, suppresses and publishes, and how bad or repeated calls are answered.
The other services are silent here (tests/integration/privacy/conftest.py); the export
through every real service is tests/e2e/test_erasure.py."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc

from services.common.topics import CONTACTS_EVENTS, TOPICS
from services.contacts import suppression
from tests.integration.conftest import RunningService, Workspace
from tests.integration.privacy.conftest import new_workspace
from tests.markers import partition_of
from tests.support import unique

PEERS = ["campaigns", "delivery", "segmentation", "triggers"]


def address() -> str:
    return f"Ada.Privacy-{secrets.token_hex(5)}@Example.org"


async def db() -> asyncpg.Connection:
    return await asyncpg.connect(os.environ["DATABASE_URL"])


async def new_contact(contacts: RunningService, ws: Workspace, email: str) -> contacts_pb2.Contact:
    """A contact with a consent given on a form (IP and browser known) and a shop event."""
    async with grpc.aio.insecure_channel(contacts.address) as channel:
        created = await contacts_pb2_grpc.ContactServiceStub(channel).CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(email=email, first_name="Ada", external_id=unique("x"))
            ),
            metadata=ws.metadata,
        )
        ref = contacts_pb2.ContactRef(contact_id=created.contact.id)
        await contacts_pb2_grpc.ConsentServiceStub(channel).RecordConsent(
            contacts_pb2.RecordConsentRequest(
                contact=ref,
                purpose=contacts_pb2.CONSENT_PURPOSE_MARKETING,
                status=contacts_pb2.CONSENT_STATUS_GRANTED,
                source=contacts_pb2.CONSENT_SOURCE_FORM,
                wording="Yes, send me news",
                ip="203.0.113.7",
                user_agent="Firefox/140",
            ),
            metadata=ws.metadata,
        )
        await shop_pb2_grpc.ShopEventServiceStub(channel).TrackEvent(
            shop_pb2.TrackEventRequest(
                idempotency_key=unique("signup"),
                contact=ref,
                event=shop_pb2.ShopEvent(signed_up=shop_pb2.SignedUp()),
            ),
            metadata=ws.metadata,
        )
        got = await contacts_pb2_grpc.ContactServiceStub(channel).GetContact(
            contacts_pb2.GetContactRequest(contact=ref), metadata=ws.metadata
        )
    return got.contact


async def export(
    contacts: RunningService, ws: Workspace, ref: contacts_pb2.ContactRef
) -> contacts_pb2.ExportContactResponse:
    async with grpc.aio.insecure_channel(contacts.address) as channel:
        answer: contacts_pb2.ExportContactResponse = await contacts_pb2_grpc.PrivacyServiceStub(
            channel
        ).ExportContact(contacts_pb2.ExportContactRequest(contact=ref), metadata=ws.metadata)
    return answer


async def erase(
    contacts: RunningService, ws: Workspace, ref: contacts_pb2.ContactRef
) -> contacts_pb2.EraseContactResponse:
    async with grpc.aio.insecure_channel(contacts.address) as channel:
        answer: contacts_pb2.EraseContactResponse = await contacts_pb2_grpc.PrivacyServiceStub(
            channel
        ).EraseContact(contacts_pb2.EraseContactRequest(contact=ref), metadata=ws.metadata)
    return answer


async def version_of(contact_id: str) -> int:
    conn = await db()
    try:
        return int(
            await conn.fetchval(
                "SELECT version FROM contacts.contacts WHERE id = $1", uuid.UUID(contact_id)
            )
        )
    finally:
        await conn.close()


def by_id(contact_id: str) -> contacts_pb2.ContactRef:
    return contacts_pb2.ContactRef(contact_id=contact_id)


async def erasures_on_topic(bootstrap: str, contact_id: str, email: str) -> list[Envelope]:
    """The ContactErased events of the contact on contacts.events.v1, read from the start of
    its partition until the first one (the test's deadline bounds the wait); each is checked
    to carry no trace of ``email``."""
    partition = TopicPartition(CONTACTS_EVENTS, partition_of(contact_id, TOPICS[CONTACTS_EVENTS]))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    consumer.assign([partition])
    await consumer.seek_to_beginning(partition)
    found: list[Envelope] = []
    try:
        async with asyncio.timeout(60):
            while not found:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        if record.key != contact_id.encode():
                            continue
                        envelope = Envelope.FromString(record.value)
                        if envelope.WhichOneof("payload") == "contact_erased":
                            assert email.lower().encode() not in record.value.lower()
                            found.append(envelope)
    finally:
        await consumer.stop()
    return found


async def test_an_export_holds_the_contact_its_consents_and_events_and_names_silent_services(
    privacy_contacts: RunningService, ws: Workspace
) -> None:
    email = address()
    contact = await new_contact(privacy_contacts, ws, email)

    answer = await export(privacy_contacts, ws, contacts_pb2.ContactRef(email=email.upper()))

    assert answer.contact_id == contact.id
    # Every other service here accepts the call and never answers: each is named, and the
    # export is still given with what contacts holds.
    assert sorted(answer.incomplete) == PEERS
    document: dict[str, Any] = json.loads(answer.json)
    assert set(document) == {"contacts"}
    own = document["contacts"]
    assert own["contact"]["id"] == contact.id
    assert own["contact"]["email"].lower() == email.lower()
    assert own["contact"]["external_id"] == contact.external_id
    assert [(e["purpose"], e["wording"]) for e in own["consent_events"]] == [
        (contacts_pb2.CONSENT_PURPOSE_MARKETING, "Yes, send me news")
    ]
    assert [c["status"] for c in own["consents"]] == [contacts_pb2.CONSENT_STATUS_GRANTED]
    assert len(own["ingested_events"]) == 1
    assert "suppression" not in own


async def test_erasure_deletes_the_contact_suppresses_its_hash_and_publishes_contact_erased(
    privacy_contacts: RunningService, ws: Workspace, infra: dict[str, str]
) -> None:
    email = address()
    contact = await new_contact(privacy_contacts, ws, email)
    other = await new_contact(privacy_contacts, ws, address())
    contact_uuid = uuid.UUID(contact.id)
    version = await version_of(contact.id)
    conn = await db()
    try:
        # An event the broker refused for good, still holding the address.
        await conn.execute(
            "INSERT INTO contacts.outbox_dead_letters (id, topic, key, value, headers,"
            " created_at, error) VALUES ((SELECT coalesce(max(id), 0) + 1000000 FROM"
            " contacts.outbox_dead_letters), $1, $2, $3, '{}', now(), 'too large')",
            CONTACTS_EVENTS,
            contact.id.encode(),
            email.encode(),
        )

        answer = await erase(privacy_contacts, ws, by_id(contact.id))

        assert answer.contact_id == contact.id
        assert answer.HasField("erased_at")
        for table, column in (
            ("contacts", "id"),
            ("consent_events", "contact_id"),
            ("consents", "contact_id"),
            ("ingested_events", "contact_id"),
        ):
            assert not await conn.fetchval(
                f"SELECT count(*) FROM contacts.{table} WHERE {column} = $1", contact_uuid
            ), table
        assert not await conn.fetchval(
            "SELECT count(*) FROM contacts.outbox_dead_letters WHERE key = $1", contact.id.encode()
        )
        # The address stays suppressed, by its keyed hash alone.
        await conn.execute("SET search_path TO contacts")
        entry = await suppression.lookup(conn, ws.id, email)
        assert entry is not None
        assert entry.reason == contacts_pb2.SUPPRESSION_REASON_ERASED
        assert entry.address == ""
        assert not await conn.fetchval(
            "SELECT count(*) FROM contacts.suppressions WHERE strpos(lower(address), $1) > 0",
            email.lower(),
        )
        # The other contact of the workspace is untouched.
        assert await conn.fetchval(
            "SELECT count(*) FROM contacts.consent_events WHERE contact_id = $1",
            uuid.UUID(other.id),
        )
    finally:
        await conn.close()

    [erased] = await erasures_on_topic(infra["KAFKA_BOOTSTRAP_SERVERS"], contact.id, email)
    assert erased.workspace_id == ws.id
    assert erased.contact_erased.contact_id == contact.id
    assert erased.contact_erased.version == version + 1


async def test_erasing_again_answers_the_same_erasure_and_changes_nothing(
    privacy_contacts: RunningService, ws: Workspace
) -> None:
    email = address()
    contact = await new_contact(privacy_contacts, ws, email)
    first = await erase(privacy_contacts, ws, by_id(contact.id))
    conn = await db()
    try:
        queued_before = await conn.fetchval("SELECT last_value FROM contacts.outbox_id_seq")
        again = await erase(privacy_contacts, ws, by_id(contact.id))
        assert again == first
        # No second ContactErased: nothing was queued.
        assert await conn.fetchval("SELECT last_value FROM contacts.outbox_id_seq") == queued_before
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM contacts.erasures WHERE erased_id = $1", uuid.UUID(contact.id)
            )
            == 1
        )
    finally:
        await conn.close()
    # The address and the external id name nobody any more.
    for ref in (
        contacts_pb2.ContactRef(email=email),
        contacts_pb2.ContactRef(external_id=contact.external_id),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await erase(privacy_contacts, ws, ref)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_export_of_an_erased_contact_is_its_erasure_record_alone(
    privacy_contacts: RunningService, ws: Workspace
) -> None:
    email = address()
    contact = await new_contact(privacy_contacts, ws, email)
    version = await version_of(contact.id)
    erased = await erase(privacy_contacts, ws, by_id(contact.id))

    answer = await export(privacy_contacts, ws, by_id(contact.id))

    document = json.loads(answer.json)
    assert set(document["contacts"]) == {"erasure"}
    record = document["contacts"]["erasure"]
    assert record["contact_id"] == contact.id
    assert record["version"] == version + 1
    assert datetime.fromisoformat(record["erased_at"]) == erased.erased_at.ToDatetime(tzinfo=UTC)
    assert email.lower() not in answer.json.lower()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await export(privacy_contacts, ws, contacts_pb2.ContactRef(email=email))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_another_workspace_cannot_export_or_erase_a_contact(
    privacy_contacts: RunningService, ws: Workspace
) -> None:
    contact = await new_contact(privacy_contacts, ws, address())
    version = await version_of(contact.id)
    stranger = await new_workspace(privacy_contacts)
    for call in (export, erase):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(privacy_contacts, stranger, by_id(contact.id))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Still there, whole.
    answer = await export(privacy_contacts, ws, by_id(contact.id))
    assert json.loads(answer.json)["contacts"]["contact"]["version"] == version


async def test_an_unknown_or_malformed_id_is_not_found(
    privacy_contacts: RunningService, ws: Workspace
) -> None:
    for contact_id in (str(uuid.uuid4()), "not-a-uuid"):
        for call in (export, erase):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(privacy_contacts, ws, by_id(contact_id))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("ref", "field"),
    [
        (contacts_pb2.ContactRef(), "contact"),
        (contacts_pb2.ContactRef(contact_id=""), "contact.contact_id"),
        (contacts_pb2.ContactRef(email="   "), "contact.email"),
        (contacts_pb2.ContactRef(email="a" * 400 + "@example.org"), "contact.email"),
        (contacts_pb2.ContactRef(external_id="x\x00y"), "contact.external_id"),
    ],
    ids=["no-ref", "empty-id", "blank-email", "oversized-email", "nul-external-id"],
)
async def test_a_reference_that_names_nobody_is_invalid(
    privacy_contacts: RunningService, ws: Workspace, ref: contacts_pb2.ContactRef, field: str
) -> None:
    for call in (export, erase):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(privacy_contacts, ws, ref)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or "")


async def test_export_and_erasure_need_a_workspace_key(privacy_contacts: RunningService) -> None:
    async with grpc.aio.insecure_channel(privacy_contacts.address) as channel:
        stub = contacts_pb2_grpc.PrivacyServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.EraseContact(
                contacts_pb2.EraseContactRequest(contact=by_id(str(uuid.uuid4())))
            )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_privacy_service_is_in_contacts_health_and_reflection(
    privacy_contacts: RunningService,
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(privacy_contacts.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="nudge.contacts.v1.PrivacyService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert "nudge.contacts.v1.PrivacyService" in names
