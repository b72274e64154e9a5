"""What the DKIM and inbound-report tests share: an SMTP server that keeps each mail exactly as
received (raw bytes and envelope sender: a DKIM signature is verified over the bytes, and the
VERP address is the envelope's), a delivery service sending to it with its inbound endpoint
on, and helpers to mail a contact and read delivery.events.v1."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2
from nudge.events.v1.envelope_pb2 import Envelope as EventEnvelope

from services.common.events import deterministic_id, new_envelope
from services.common.topics import DELIVERY_EVENTS, DELIVERY_REQUESTS
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.support import eventually, free_port, unique


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes


class CaptureSmtp:
    """aiosmtpd in a thread: accepts everything, keeps the exact bytes and the envelope."""

    def __init__(self) -> None:
        self.port = free_port()
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        with self._lock:
            self._received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), raw))
        return "250 OK stored"

    def received_for(self, message_id: str) -> list[Received]:
        marker = f"X-Nudge-Message-Id: {message_id}\r\n".encode()
        with self._lock:
            return [r for r in self._received if marker in r.raw]


@dataclass
class AuthDelivery:
    service: RunningService
    inbound_port: int
    link_secret: str
    bounce_domain: str


@pytest.fixture(scope="module")
def capture() -> Iterator[CaptureSmtp]:
    server = CaptureSmtp()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def auth_delivery(
    contacts_service: RunningService, capture: CaptureSmtp
) -> AsyncIterator[AuthDelivery]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port, inbound = free_port(), free_port()
    settings = Settings(
        grpc_port=port,
        smtp_url=capture.url,
        inbound_smtp_port=inbound,
        inbound_max_message_bytes=256 * 1024,
    )
    async with run_in_process(serve, settings, port) as running:
        yield AuthDelivery(
            running, inbound, settings.link_secret, settings.from_address.rpartition("@")[2]
        )


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await p.start()
    yield p
    await p.stop()


async def new_contact(contacts: RunningService, ws: Workspace) -> contacts_pb2.Contact:
    async with grpc.aio.insecure_channel(contacts.address) as ch:
        answer = await contacts_pb2_grpc.ContactServiceStub(ch).CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(email=f"{unique('c')}@example.com", first_name="Ada"),
                consents=[contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS],
            ),
            metadata=ws.metadata,
        )
    return answer.contact


async def mail_contact(
    producer: AIOKafkaProducer,
    capture: CaptureSmtp,
    ws: Workspace,
    contact: contacts_pb2.Contact,
    subject: str = "Hello",
) -> tuple[str, Received]:
    """Request an automation mail through Kafka; the message id and the mail as received."""
    message_id = deterministic_id(ws.id, unique("run"))
    request = delivery_pb2.DeliveryRequested(
        message_id=message_id,
        contact_id=contact.id,
        kind=delivery_pb2.MESSAGE_KIND_AUTOMATION,
        purpose=contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
        content=delivery_pb2.MessageContent(
            subject=subject, body_text="Hi {{ contact.first_name }}"
        ),
    )
    await producer.send_and_wait(
        DELIVERY_REQUESTS,
        new_envelope(ws.id, request, event_id=message_id).SerializeToString(),
        key=contact.id.encode(),
    )
    received = await eventually(lambda: capture.received_for(message_id), timeout=60)
    return message_id, received[0]


class DeliveryEvents:
    """Every record of delivery.events.v1 from the start, read as the test waits."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = AIOKafkaConsumer(
            DELIVERY_EVENTS,
            bootstrap_servers=bootstrap,
            group_id=unique("auth-test"),
            auto_offset_reset="earliest",
        )
        self.seen: list[EventEnvelope] = []

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def of(self, message_id: str, payload: str) -> list[EventEnvelope]:
        """The events seen so far whose payload is ``payload`` about ``message_id``."""
        batches = await self._consumer.getmany(timeout_ms=200)
        for records in batches.values():
            for record in records:
                envelope = EventEnvelope()
                envelope.ParseFromString(record.value)
                self.seen.append(envelope)
        return [
            e
            for e in self.seen
            if e.WhichOneof("payload") == payload and getattr(e, payload).message_id == message_id
        ]


@pytest.fixture
async def delivery_events(infra: dict[str, str]) -> AsyncIterator[DeliveryEvents]:
    reader = DeliveryEvents(infra["KAFKA_BOOTSTRAP_SERVERS"])
    await reader.start()
    yield reader
    await reader.stop()
