"""A test send (MESSAGE_KIND_TEST: a campaign's, or a workflow test run's) through the real
delivery service, Kafka, PostgreSQL and the SMTP sink: sent to the test recipient whatever
the contact's consent, marked as a test, without tracking or unsubscribe headers, with the
sender's name and Reply-To, once, and counted nowhere (no event on delivery.events.v1).
Reply-To and the sender's name apply to every kind."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.events import new_envelope
from services.common.topics import DELIVERY_EVENTS, DELIVERY_REQUESTS
from tests.integration.common.test_consumer_loop import read_all
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.mail import mails_with
from tests.support import eventually, free_port, outbox_drained, unique

SENT = delivery_pb2.MESSAGE_STATUS_SENT
FAILED = delivery_pb2.MESSAGE_STATUS_FAILED


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
                contact=contacts_pb2.Contact(
                    email=f"{unique('c')}@example.com", first_name="Ada", last_name="L"
                ),
                consents=consents,  # type: ignore[arg-type]
            ),
            metadata=ws.metadata,
        )
    return answer.contact


async def status_of(delivery: RunningService, ws: Workspace, message_id: str) -> int:
    async with grpc.aio.insecure_channel(delivery.address) as ch:
        try:
            answer = await delivery_pb2_grpc.DeliveryServiceStub(ch).GetMessageStatus(
                delivery_pb2.GetMessageStatusRequest(message_id=message_id), metadata=ws.metadata
            )
        except grpc.aio.AioRpcError:
            return 0
    return int(answer.status)


def mails_for(message_id: str) -> list[EmailMessage]:
    return mails_with("X-Nudge-Message-Id", message_id)


async def publish(
    producer: AIOKafkaProducer, ws: Workspace, request: delivery_pb2.DeliveryRequested
) -> None:
    envelope = new_envelope(ws.id, request, event_id=request.message_id)
    key = (request.contact_id or request.message_id).encode()
    await producer.send_and_wait(DELIVERY_REQUESTS, envelope.SerializeToString(), key=key)


def make_test_request(
    contact_id: str, recipient: str, **fields: object
) -> delivery_pb2.DeliveryRequested:
    values: dict[str, object] = {
        "message_id": str(uuid.uuid4()),
        "contact_id": contact_id,
        "kind": delivery_pb2.MESSAGE_KIND_TEST,
        "purpose": contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
        "campaign_id": str(uuid.uuid4()),
        "test_recipient": recipient,
        "from_name": "Test shop",
        "reply_to": "owner@shop.example",
        "content": delivery_pb2.MessageContent(
            subject="{{ workspace.name }} news for {{ contact.first_name | default('you') }}",
            body_text="Hi {{ contact.first_name | default('there') }}: https://shop.example/x",
            body_html='<p>Hi {{ contact.first_name | default("there") }}</p>'
            '<a href="https://shop.example/x">x</a>',
        ),
    }
    values.update(fields)
    return delivery_pb2.DeliveryRequested(**values)  # type: ignore[arg-type]


def html_part(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def text_part(mail: EmailMessage) -> str:
    part = mail.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


async def test_a_test_send_reaches_the_manager_marked_untracked_and_counted_nowhere(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    # No consent at all: a campaign mail would be skipped; the test is the manager's.
    contact = await new_contact(contacts_service, workspace, [])
    manager = f"{unique('manager')}@example.com"
    request = make_test_request(contact.id, manager)
    for _ in range(2):  # a redelivered request is mailed once
        await publish(producer, workspace, request)

    mails = await eventually(lambda: mails_for(request.message_id), timeout=30)
    mail = mails[0]
    assert mail["To"] == manager
    assert mail["Subject"] == "[Test] Test shop news for Ada"
    assert mail["From"] == "Test shop <no-reply@nudge.localhost>"
    assert mail["Reply-To"] == "owner@shop.example"
    assert mail["X-Nudge-Test"] == "yes"
    assert mail["List-Unsubscribe"] is None and mail["List-Unsubscribe-Post"] is None
    html = html_part(mail)
    assert "<p>Hi Ada</p>" in html and 'href="https://shop.example/x"' in html  # not rewritten
    assert "<img" not in html  # no open pixel
    assert "preferences" not in text_part(mail).lower()
    await eventually(lambda: _is(delivery_service, workspace, request.message_id, SENT), timeout=30)
    assert len(mails_for(request.message_id)) == 1

    # Counted nowhere: the status and any event would commit together; once the outbox has
    # nothing left for the contact, the topic holds every event there was.
    await eventually(
        lambda: outbox_drained(os.environ["DATABASE_URL"], "delivery", contact.id), timeout=30
    )
    events = await read_all(os.environ["KAFKA_BOOTSTRAP_SERVERS"], DELIVERY_EVENTS)
    mentioning = [
        r
        for r in events
        if request.message_id.encode() in Envelope.FromString(r.value).SerializeToString()
    ]
    assert mentioning == []


async def _is(delivery: RunningService, ws: Workspace, message_id: str, status: int) -> bool:
    return await status_of(delivery, ws, message_id) == status


async def test_a_test_send_with_the_sample_contact_renders_the_defaults(
    delivery_service: RunningService, workspace: Workspace, producer: AIOKafkaProducer
) -> None:
    manager = f"{unique('manager')}@example.com"
    request = make_test_request("", manager, reply_to="")
    await publish(producer, workspace, request)
    mail = (await eventually(lambda: mails_for(request.message_id), timeout=30))[0]
    assert mail["Subject"] == "[Test] Test shop news for you"
    assert text_part(mail).startswith("Hi there:")
    assert mail["Reply-To"] is None


async def test_a_test_send_without_a_purpose_still_reads_the_contact(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    """A workflow's test run sent no purpose until 2026-12-04: contacts refused the data
    lookup (``purpose: is required``) and the mail was dead-lettered after five attempts.
    Requests already on the topic are still mailed, filled with the contact's data."""
    contact = await new_contact(contacts_service, workspace, [])
    request = make_test_request(
        contact.id,
        f"{unique('manager')}@example.com",
        purpose=contacts_pb2.CONSENT_PURPOSE_UNSPECIFIED,
        campaign_id="",
        workflow_id=str(uuid.uuid4()),
    )
    await publish(producer, workspace, request)
    mail = (await eventually(lambda: mails_for(request.message_id), timeout=30))[0]
    assert mail["Subject"] == "[Test] Test shop news for Ada"


async def test_a_test_send_whose_template_fails_is_failed_not_a_crash(
    delivery_service: RunningService, workspace: Workspace, producer: AIOKafkaProducer
) -> None:
    bad = make_test_request(
        "",
        f"{unique('manager')}@example.com",
        content=delivery_pb2.MessageContent(
            subject="x",
            body_text="{% for i in range(50000) %}{% for j in range(50000) %}"
            "{% endfor %}{% endfor %}",
        ),
    )
    good = make_test_request("", f"{unique('manager')}@example.com")
    await publish(producer, workspace, bad)
    await publish(producer, workspace, good)
    await eventually(lambda: _is(delivery_service, workspace, bad.message_id, FAILED), timeout=30)
    await eventually(lambda: mails_for(good.message_id), timeout=30)  # the consumer went on
    assert mails_for(bad.message_id) == []


async def test_a_campaign_mail_carries_the_senders_name_and_reply_to(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    contact = await new_contact(
        contacts_service, workspace, [contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES]
    )
    request = delivery_pb2.DeliveryRequested(
        message_id=str(uuid.uuid4()),
        contact_id=contact.id,
        kind=delivery_pb2.MESSAGE_KIND_CAMPAIGN,
        purpose=contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
        campaign_id=str(uuid.uuid4()),
        from_name="Café Lumière",
        reply_to="owner@shop.example",
        content=delivery_pb2.MessageContent(subject="Hello", body_text="Hi"),
    )
    await publish(producer, workspace, request)
    mail = (await eventually(lambda: mails_for(request.message_id), timeout=30))[0]
    assert mail["From"].addresses[0].display_name == "Café Lumière"
    assert mail["Reply-To"] == "owner@shop.example"
    assert mail["Subject"] == "Hello"
    assert mail["X-Nudge-Test"] is None
    assert mail["List-Unsubscribe"] is not None


async def test_a_campaign_mail_whose_template_fails_for_its_contact_is_failed_and_the_next_sent(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    """Not only Jinja2's errors: an arithmetic or type error of the template for this
    contact finishes the message as FAILED rather than stopping the consumer."""
    contact = await new_contact(
        contacts_service, workspace, [contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES]
    )

    def campaign_request(body: str) -> delivery_pb2.DeliveryRequested:
        return delivery_pb2.DeliveryRequested(
            message_id=str(uuid.uuid4()),
            contact_id=contact.id,
            kind=delivery_pb2.MESSAGE_KIND_CAMPAIGN,
            purpose=contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
            campaign_id=str(uuid.uuid4()),
            content=delivery_pb2.MessageContent(subject="Hello", body_text=body),
        )

    broken = [campaign_request("{{ 1 / 0 }}"), campaign_request("{{ contact.first_name + 1 }}")]
    good = campaign_request("Hi {{ contact.first_name }}")
    for request in (*broken, good):
        await publish(producer, workspace, request)
    for request in broken:
        await eventually(
            lambda r=request: _is(delivery_service, workspace, r.message_id, FAILED), timeout=30
        )
    await eventually(lambda: mails_for(good.message_id), timeout=30)
    assert all(mails_for(r.message_id) == [] for r in broken)
