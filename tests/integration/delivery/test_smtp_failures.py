"""Delivery against an SMTP server that refuses, defers, goes away or stops answering.

A real aiosmtpd server (tests/smtp_server.py) answers as scripted for one recipient, so the
tests share one delivery service without disturbing each other. What is proven is delivery's
behaviour today: a permanent refusal (5xx) is a bounce, recorded once and never retried; a
temporary one (4xx) and a refused connection are retried until the server takes the mail,
once; a server that has the data but never answers leaves the message CLAIMED, not re-sent.
Each test ends with a later request on the same key (same partition) being mailed: the
failure neither blocks the partition nor hides a second attempt still to come.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2

from services.common.events import deterministic_id, new_envelope
from services.common.topics import DELIVERY_REQUESTS
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.smtp_server import ScriptedSmtp
from tests.support import eventually, fetchval, free_port, unique

CLAIMED, SENT, BOUNCED, RETRY = 1, 2, 4, 6  # services/delivery/domain/ledger.py
SMTP_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def smtp() -> Iterator[ScriptedSmtp]:
    server = ScriptedSmtp()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def delivery(
    contacts_service: RunningService, smtp: ScriptedSmtp
) -> AsyncIterator[RunningService]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    settings = Settings(grpc_port=port, smtp_url=smtp.url, smtp_timeout_s=SMTP_TIMEOUT_S)
    async with run_in_process(serve, settings, port) as running:
        yield running


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


async def request_mail(
    producer: AIOKafkaProducer, ws: Workspace, contact: contacts_pb2.Contact
) -> str:
    message_id = deterministic_id(ws.id, unique("run"))
    request = delivery_pb2.DeliveryRequested(
        message_id=message_id,
        contact_id=contact.id,
        kind=delivery_pb2.MESSAGE_KIND_AUTOMATION,
        purpose=contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
        content=delivery_pb2.MessageContent(subject="Hello", body_text="Hi"),
    )
    await producer.send_and_wait(
        DELIVERY_REQUESTS,
        new_envelope(ws.id, request, event_id=message_id).SerializeToString(),
        key=contact.id.encode(),
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


def stored(smtp: ScriptedSmtp, message_id: str) -> int:
    return sum(1 for m in smtp.messages() if m["X-Nudge-Message-Id"] == message_id)


async def then_a_later_request_is_mailed(
    smtp: ScriptedSmtp, producer: AIOKafkaProducer, ws: Workspace, contact: contacts_pb2.Contact
) -> None:
    """Behind the failed one on the same partition: the partition moves on, and whatever
    delivery was going to do with the earlier request is done."""
    later = await request_mail(producer, ws, contact)
    await eventually(lambda: stored(smtp, later), timeout=60)


async def is_suppressed(
    contacts: RunningService, ws: Workspace, contact: contacts_pb2.Contact
) -> bool:
    async with grpc.aio.insecure_channel(contacts.address) as channel:
        answer = await contacts_pb2_grpc.ConsentServiceStub(channel).CheckEligibility(
            contacts_pb2.CheckEligibilityRequest(
                contact_id=contact.id, purpose=contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
            ),
            metadata=ws.metadata,
        )
    return answer.reason == "suppressed:hard_bounce"


@pytest.mark.parametrize("stage", ["rcpt", "data"])
async def test_a_permanent_refusal_is_a_bounce_recorded_once_and_not_retried(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    smtp: ScriptedSmtp,
    stage: str,
) -> None:
    contact = await new_contact(contacts_service, workspace)
    refusal = "550 5.1.1 no such mailbox" if stage == "rcpt" else "554 5.7.1 rejected as spam"
    smtp.script(contact.email, **{stage: [refusal]})  # a retry would be accepted
    message_id = await request_mail(producer, workspace, contact)

    bounced = await eventually(lambda: status_is(message_id, BOUNCED), timeout=60)
    assert bounced["detail"].startswith(refusal[:3]), bounced["detail"]
    assert bounced["attempts"] == 1
    # Contacts lists the address on the bounce (delivery.events.v1): a later request behind
    # the failed one on the partition is finished as skipped, not mailed.
    await eventually(lambda: is_suppressed(contacts_service, workspace, contact), timeout=60)
    later = await request_mail(producer, workspace, contact)
    skipped = await eventually(
        lambda: status_is(later, delivery_pb2.MESSAGE_STATUS_SKIPPED), timeout=60
    )
    assert skipped["detail"] == "suppressed:hard_bounce"
    assert stored(smtp, later) == 0
    assert stored(smtp, message_id) == 0
    assert smtp.data_attempts[message_id] == (1 if stage == "data" else 0)
    assert (await row(message_id))["attempts"] == 1  # type: ignore[index]


@pytest.mark.parametrize("stage", ["rcpt", "data"])
async def test_a_temporary_refusal_is_retried_until_the_server_takes_the_mail_once(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    smtp: ScriptedSmtp,
    stage: str,
) -> None:
    contact = await new_contact(contacts_service, workspace)
    smtp.script(contact.email, **{stage: ["451 4.3.0 try again later"] * 2})
    message_id = await request_mail(producer, workspace, contact)

    sent = await eventually(lambda: status_is(message_id, SENT), timeout=60)
    assert sent["attempts"] == 3  # two deferrals, then accepted
    await then_a_later_request_is_mailed(smtp, producer, workspace, contact)
    assert stored(smtp, message_id) == 1
    assert smtp.data_attempts[message_id] == (3 if stage == "data" else 1)


async def test_a_refused_connection_loses_nothing(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    smtp: ScriptedSmtp,
) -> None:
    contact = await new_contact(contacts_service, workspace)
    smtp.stop()  # nothing listens on the port: connection refused
    try:
        message_id = await request_mail(producer, workspace, contact)
        waiting = await eventually(lambda: status_is(message_id, RETRY), timeout=60)
        assert "refused" in waiting["detail"].lower() or "connect" in waiting["detail"].lower()
    finally:
        smtp.start()
    sent = await eventually(lambda: status_is(message_id, SENT), timeout=60)
    assert sent["attempts"] >= 2
    await then_a_later_request_is_mailed(smtp, producer, workspace, contact)
    assert stored(smtp, message_id) == 1
    assert smtp.data_attempts[message_id] == 1


async def test_a_server_that_takes_the_data_and_never_answers_is_not_sent_twice(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    smtp: ScriptedSmtp,
) -> None:
    """The server has the mail, delivery's SMTP timeout runs out before the reply: whether
    it went out is unknown, so it must not be handed over again (at most once)."""
    contact = await new_contact(contacts_service, workspace)
    hold = smtp.hold_data(lambda m: str(m["To"]).endswith(f"<{contact.email}>"))
    message_id = await request_mail(producer, workspace, contact)
    await asyncio.to_thread(smtp.wait_held, hold, 60)
    try:
        # Past delivery's SMTP timeout: it has given up waiting for this reply.
        await eventually(
            lambda: fetchval_detail(message_id), timeout=SMTP_TIMEOUT_S + 60, interval=0.2
        )
    finally:
        smtp.release(hold)
    await then_a_later_request_is_mailed(smtp, producer, workspace, contact)
    assert smtp.data_attempts[message_id] == 1, "handed over again after an unknown outcome"
    assert stored(smtp, message_id) == 1
    assert (await row(message_id))["status"] == CLAIMED  # type: ignore[index]


async def fetchval_detail(message_id: str) -> str:
    """The ledger's note on the message, once delivery has written one."""
    detail = await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT detail FROM delivery.messages WHERE message_id = $1::uuid",
        message_id,
    )
    return str(detail or "")
