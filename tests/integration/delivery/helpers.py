"""What the delivery integration tests share: a sink of their own (deploy/local/smtp_sink.py,
a child process, steered by the local parts of addresses), contacts, requests, the ledger
and the events delivery published."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import asyncpg
import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from deploy.local.procs import ProcessRegistry
from deploy.local.smtp_sink import MaildirReader, start_smtp_sink
from services.common.events import deterministic_id, new_envelope
from services.common.topics import DELIVERY_EVENTS, DELIVERY_REQUESTS
from tests.integration.conftest import RunningService, Workspace
from tests.support import free_port, unique


class Sink:
    """The project's SMTP sink in a child process, on its own port and Maildir."""

    def __init__(self, registry: ProcessRegistry, maildir: Path, port: int) -> None:
        self.registry = registry
        self.maildir = maildir
        self.port = port
        self.url = f"smtp://127.0.0.1:{port}"

    def messages(self) -> list[EmailMessage]:
        return MaildirReader(self.maildir).messages()

    def copies(self, message_id: str) -> int:
        return sum(1 for m in self.messages() if str(m["X-Nudge-Message-Id"]) == message_id)


@contextlib.asynccontextmanager
async def running_sink(tmp: Path, port: int | None = None) -> AsyncIterator[Sink]:
    registry = ProcessRegistry()
    port = port or free_port()
    try:
        await start_smtp_sink(registry, maildir=tmp / "mail", port=port, log_dir=tmp)
        yield Sink(registry, tmp / "mail", port)
    finally:
        registry.stop_all()


def address(rule: str = "") -> str:
    """A unique address at example.com; ``rule`` is a sink rule (``bounce-550``, ``drop1``)."""
    tag = unique("c")
    return f"{rule}+{tag}@example.com" if rule else f"{tag}@example.com"


async def new_contact(
    contacts: RunningService,
    ws: Workspace,
    email: str,
    consents: tuple[int, ...] = (contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,),
) -> contacts_pb2.Contact:
    async with grpc.aio.insecure_channel(contacts.address) as ch:
        answer = await contacts_pb2_grpc.ContactServiceStub(ch).CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(email=email, first_name="Ada"),
                consents=list(consents),  # type: ignore[arg-type]
            ),
            metadata=ws.metadata,
        )
    return answer.contact


def automation_request(ws: Workspace, contact_id: str) -> tuple[str, Envelope]:
    message_id = deterministic_id(ws.id, unique("run"))
    request = delivery_pb2.DeliveryRequested(
        message_id=message_id,
        contact_id=contact_id,
        kind=delivery_pb2.MESSAGE_KIND_AUTOMATION,
        purpose=contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
        workflow_id="wf-test",
        content=delivery_pb2.MessageContent(subject="Hello", body_text="Hi"),
    )
    return message_id, new_envelope(ws.id, request, event_id=message_id)


async def request_mail(producer: AIOKafkaProducer, ws: Workspace, contact_id: str) -> str:
    message_id, envelope = automation_request(ws, contact_id)
    await producer.send_and_wait(
        DELIVERY_REQUESTS, envelope.SerializeToString(), key=contact_id.encode()
    )
    return message_id


async def row(message_id: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        return await conn.fetchrow(
            "SELECT status, detail, attempts FROM delivery.messages WHERE message_id = $1::uuid",
            message_id,
        )
    finally:
        await conn.close()


async def status_is(message_id: str, status: int) -> asyncpg.Record | None:
    found = await row(message_id)
    return found if found is not None and found["status"] == status else None


async def execute(query: str, *args: object) -> str:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        return str(await conn.execute(query, *args))
    finally:
        await conn.close()


async def fetchval(query: str, *args: object) -> object:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def is_suppressed(contacts: RunningService, ws: Workspace, contact_id: str) -> bool:
    async with grpc.aio.insecure_channel(contacts.address) as channel:
        answer = await contacts_pb2_grpc.ConsentServiceStub(channel).CheckEligibility(
            contacts_pb2.CheckEligibilityRequest(
                contact_id=contact_id, purpose=contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
            ),
            metadata=ws.metadata,
        )
    return answer.reason == "suppressed:hard_bounce"


class Events:
    """delivery.events.v1 as read from the start by a group of its own."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = AIOKafkaConsumer(
            DELIVERY_EVENTS,
            bootstrap_servers=bootstrap,
            group_id=f"test-{uuid.uuid4()}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self.seen: list[Envelope] = []

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def about(self, message_id: str) -> list[tuple[str, object]]:
        """(payload name, payload) of every event about ``message_id`` so far, in order."""
        batches = await self._consumer.getmany(timeout_ms=200, max_records=10_000)
        for records in batches.values():
            self.seen += [Envelope.FromString(r.value) for r in records if r.value]
        found = []
        for envelope in self.seen:
            name = envelope.WhichOneof("payload")
            if name is None:
                continue
            payload = getattr(envelope, name)
            if getattr(payload, "message_id", None) == message_id:
                found.append((name, payload))
        return found

    async def has(self, message_id: str, *names: str) -> list[tuple[str, object]] | None:
        """The events about the message once every one of ``names`` is among them."""
        found = await self.about(message_id)
        return found if set(names) <= {name for name, _ in found} else None
