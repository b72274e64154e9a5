"""The delivery service on real Kafka, PostgreSQL and SMTP: mail once, only when allowed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from email.message import EmailMessage

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import links
from services.common.events import deterministic_id, new_envelope
from services.common.topics import DELIVERY_REQUESTS
from tests.integration.common.test_consumer_loop import read_all
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.delivery.test_dkim_signing import violations
from tests.mail import mails_with
from tests.support import eventually, free_port, unique

SENT = delivery_pb2.MESSAGE_STATUS_SENT
SKIPPED = delivery_pb2.MESSAGE_STATUS_SKIPPED


def mails_for(message_id: str) -> list[EmailMessage]:
    return mails_with("X-Nudge-Message-Id", message_id)


@pytest.fixture(scope="module")
async def delivery_service(contacts_service: RunningService) -> AsyncIterator[RunningService]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    async with run_in_process(serve, Settings(grpc_port=port), port) as running:
        yield running


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await p.start()
    yield p
    await p.stop()


async def new_contact(
    contacts: RunningService, ws: Workspace, consents: list[int]
) -> contacts_pb2.Contact:
    async with grpc.aio.insecure_channel(contacts.address) as ch:
        answer = await contacts_pb2_grpc.ContactServiceStub(ch).CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(email=f"{unique('c')}@example.com", first_name="Ada"),
                consents=consents,  # type: ignore[arg-type]
            ),
            metadata=ws.metadata,
        )
    return answer.contact


async def status_of(
    delivery: RunningService, ws: Workspace, message_id: str
) -> delivery_pb2.GetMessageStatusResponse:
    async with grpc.aio.insecure_channel(delivery.address) as ch:
        answer: delivery_pb2.GetMessageStatusResponse = await delivery_pb2_grpc.DeliveryServiceStub(
            ch
        ).GetMessageStatus(
            delivery_pb2.GetMessageStatusRequest(message_id=message_id), metadata=ws.metadata
        )
    return answer


async def has_status(delivery: RunningService, ws: Workspace, message_id: str, status: int) -> bool:
    return (await status_of(delivery, ws, message_id)).status == status


def automation_request(ws: Workspace, contact_id: str) -> tuple[str, bytes]:
    message_id = deterministic_id(ws.id, unique("run"))
    request = delivery_pb2.DeliveryRequested(
        message_id=message_id,
        contact_id=contact_id,
        kind=delivery_pb2.MESSAGE_KIND_AUTOMATION,
        purpose=contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
        content=delivery_pb2.MessageContent(
            subject="Hello {{ contact.first_name }} from {{ workspace.name }}", body_text="Hi"
        ),
    )
    return message_id, new_envelope(ws.id, request, event_id=message_id).SerializeToString()


async def test_a_request_replayed_three_times_is_mailed_once(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    contact = await new_contact(
        contacts_service, workspace, [contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS]
    )
    message_id, value = automation_request(workspace, contact.id)
    for _ in range(3):
        await producer.send_and_wait(DELIVERY_REQUESTS, value, key=contact.id.encode())

    mails = await eventually(lambda: mails_for(message_id), timeout=30)
    assert mails[0]["Subject"] == "Hello Ada from Test shop"
    assert mails[0]["To"] == f"Ada <{contact.email}>"
    assert "no-reply@" in mails[0]["From"] and "Test shop" in mails[0]["From"]
    # One-click unsubscribe (RFC 8058), signed for this message and contact.
    assert mails[0]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token = "".join(str(mails[0]["List-Unsubscribe"]).split()).strip("<>").rsplit("/u/", 1)[1]
    claims = links.verify(os.environ.get("NUDGE_LINK_SECRET", "dev-link-secret"), token)
    assert (claims.message_id, claims.contact_id) == (message_id, contact.id)
    # The sink has the mail a moment before delivery records the server's answer.
    await eventually(lambda: has_status(delivery_service, workspace, message_id, SENT), timeout=30)

    # A later request behind the replays on the same partition proves they were all consumed.
    marker_id, marker = automation_request(workspace, contact.id)
    await producer.send_and_wait(DELIVERY_REQUESTS, marker, key=contact.id.encode())
    await eventually(lambda: mails_for(marker_id), timeout=30)
    assert len(mails_for(message_id)) == 1


async def test_a_contact_without_consent_is_not_mailed(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    contact = await new_contact(contacts_service, workspace, [])
    message_id, value = automation_request(workspace, contact.id)
    await producer.send_and_wait(DELIVERY_REQUESTS, value, key=contact.id.encode())

    async def skipped() -> delivery_pb2.GetMessageStatusResponse | None:
        try:
            answer = await status_of(delivery_service, workspace, message_id)
        except grpc.aio.AioRpcError:
            return None
        return answer if answer.status == SKIPPED else None

    answer = await eventually(skipped, timeout=30)
    assert answer.detail == "no_consent:automations"
    assert mails_for(message_id) == []


async def test_transactional_mail_needs_no_consent_and_is_sent_once_per_key(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    infra: dict[str, str],
) -> None:
    contact = await new_contact(contacts_service, workspace, [])
    request = delivery_pb2.SendTransactionalRequest(
        idempotency_key=unique("order"),
        contact_id=contact.id,
        # The contact's fields are the template's at sending time, not when it is queued.
        content=delivery_pb2.MessageContent(
            subject="Your order, {{ contact.email }}",
            body_text="Order {{ vars.order }} is on its way",
        ),
        vars={"order": "42"},
    )
    async with grpc.aio.insecure_channel(delivery_service.address) as ch:
        stub = delivery_pb2_grpc.DeliveryServiceStub(ch)
        first = await stub.SendTransactional(request, metadata=workspace.metadata)
        second = await stub.SendTransactional(request, metadata=workspace.metadata)
        # The same key for another mail is a caller's bug: refused, nothing queued.
        other = delivery_pb2.SendTransactionalRequest()
        other.CopyFrom(request)
        other.content.subject = "Another order"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SendTransactional(other, metadata=workspace.metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(refused.value) == ["idempotency_key"]
    assert first.message_id == second.message_id
    assert (first.replayed, second.replayed) == (False, True)
    mails = await eventually(lambda: mails_for(first.message_id), timeout=30)
    assert mails[0]["Subject"] == f"Your order, {contact.email}"
    assert "Order 42 is on its way" in mails[0].get_content()
    assert mails[0]["List-Unsubscribe"] is None  # transactional mail is not unsubscribable
    await eventually(
        lambda: has_status(delivery_service, workspace, first.message_id, SENT), timeout=30
    )
    # A later mail on the same Kafka key (the contact) is mailed after the first.
    async with grpc.aio.insecure_channel(delivery_service.address) as ch:
        later = await delivery_pb2_grpc.DeliveryServiceStub(ch).SendTransactional(
            delivery_pb2.SendTransactionalRequest(
                idempotency_key=unique("order"),
                contact_id=contact.id,
                content=delivery_pb2.MessageContent(subject="Shipped", body_text="On its way"),
            ),
            metadata=workspace.metadata,
        )
    await eventually(lambda: mails_for(later.message_id), timeout=30)
    assert len(mails_for(first.message_id)) == 1
    # The outbox publishes in order: once the later request was mailed, a request the replay
    # had queued would be on the topic too.
    assert await requests_on_topic(infra, first.message_id) == 1


async def requests_on_topic(infra: dict[str, str], message_id: str) -> int:
    """How many records of delivery.requests.v1 carry ``message_id`` as their event id."""
    records = await read_all(infra["KAFKA_BOOTSTRAP_SERVERS"], DELIVERY_REQUESTS)
    return sum(Envelope.FromString(r.value).event_id == message_id for r in records)


async def test_another_workspace_cannot_read_a_message_status(
    delivery_service: RunningService, contacts_service: RunningService, workspace: Workspace
) -> None:
    contact = await new_contact(contacts_service, workspace, [])
    async with grpc.aio.insecure_channel(delivery_service.address) as ch:
        sent = await delivery_pb2_grpc.DeliveryServiceStub(ch).SendTransactional(
            delivery_pb2.SendTransactionalRequest(
                idempotency_key="k",
                contact_id=contact.id,
                content=delivery_pb2.MessageContent(subject="s", body_text="b"),
            ),
            metadata=workspace.metadata,
        )
    await eventually(lambda: mails_for(sent.message_id), timeout=30)
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        other = await contacts_pb2_grpc.WorkspaceServiceStub(ch).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Other", slug=unique("other")),
            metadata=(("authorization", "Admin test-admin-token"),),
        )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await status_of(
            delivery_service, Workspace(other.workspace_id, other.api_key), sent.message_id
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_transactional_send_with_a_broken_template_is_invalid(
    delivery_service: RunningService, contacts_service: RunningService, workspace: Workspace
) -> None:
    contact = await new_contact(contacts_service, workspace, [])
    async with grpc.aio.insecure_channel(delivery_service.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await delivery_pb2_grpc.DeliveryServiceStub(ch).SendTransactional(
                delivery_pb2.SendTransactionalRequest(
                    idempotency_key="k",
                    contact_id=contact.id,
                    content=delivery_pb2.MessageContent(subject="{% if %}", body_text="b"),
                ),
                metadata=workspace.metadata,
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_request_no_retry_can_fix_is_failed_and_does_not_block_the_partition(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    contact = await new_contact(
        contacts_service, workspace, [contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS]
    )
    broken_id = deterministic_id(workspace.id, unique("broken"))
    broken = delivery_pb2.DeliveryRequested(
        message_id=broken_id,
        contact_id=contact.id,
        kind=delivery_pb2.MESSAGE_KIND_AUTOMATION,  # and no purpose
        content=delivery_pb2.MessageContent(subject="s", body_text="b"),
    )
    await producer.send_and_wait(
        DELIVERY_REQUESTS,
        new_envelope(workspace.id, broken, event_id=broken_id).SerializeToString(),
        key=contact.id.encode(),
    )
    after_id, after = automation_request(workspace, contact.id)
    await producer.send_and_wait(DELIVERY_REQUESTS, after, key=contact.id.encode())
    await eventually(lambda: mails_for(after_id), timeout=30)
    answer = await status_of(delivery_service, workspace, broken_id)
    assert answer.status == delivery_pb2.MESSAGE_STATUS_FAILED
    assert mails_for(broken_id) == []


async def test_a_contact_at_an_internationalised_domain_is_mailed_at_its_ascii_form(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    """Contacts keeps the Unicode domain; the To header and RCPT carry its A-labels (a
    relay without SMTPUTF8, like the sink, would refuse the Unicode form)."""
    local = unique("c")
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        contact = (
            await contacts_pb2_grpc.ContactServiceStub(ch).CreateContact(
                contacts_pb2.CreateContactRequest(
                    contact=contacts_pb2.Contact(email=f"{local}@bücher.example", first_name="Ada"),
                    consents=[contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS],
                ),
                metadata=workspace.metadata,
            )
        ).contact
    assert contact.email == f"{local}@bücher.example"
    message_id, value = automation_request(workspace, contact.id)
    await producer.send_and_wait(DELIVERY_REQUESTS, value, key=contact.id.encode())
    [mail] = await eventually(lambda: mails_for(message_id), timeout=30)
    assert [a.addr_spec for a in mail["To"].addresses] == [f"{local}@xn--bcher-kva.example"]
    await eventually(lambda: has_status(delivery_service, workspace, message_id, SENT), timeout=30)
