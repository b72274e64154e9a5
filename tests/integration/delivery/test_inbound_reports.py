"""Bounces and complaints over real SMTP: a DSN or an ARF report sent to a mail's VERP address
on delivery's inbound endpoint becomes one event on delivery.events.v1, a ledger change, and
(for a hard bounce or a complaint) the address on the workspace's suppression list."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import aiosmtplib
import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc

from services.delivery.domain import verp
from tests.integration.conftest import RunningService, Workspace
from tests.integration.delivery.auth_support import (
    AuthDelivery,
    CaptureSmtp,
    DeliveryEvents,
    auth_delivery,
    capture,
    delivery_events,
    mail_contact,
    new_contact,
    producer,
)
from tests.support import eventually, fetchval

__all__ = ["auth_delivery", "capture", "delivery_events", "producer"]  # fixtures

SAMPLES = Path(__file__).parents[2] / "unit" / "delivery" / "reports"


def report(name: str, verp_address: str, message_id: str) -> bytes:
    """A recorded-format report, addressed to ``verp_address`` about ``message_id``."""
    text = (SAMPLES / name).read_text()
    text = text.replace("VERP_ADDRESS", verp_address).replace("MESSAGE_ID", message_id)
    return text.replace("\n", "\r\n").encode()


async def send_report(
    delivery: AuthDelivery, rcpt: str, raw: bytes, sender: str = ""
) -> aiosmtplib.SMTPResponse:
    """One SMTP conversation with the inbound endpoint; the DATA reply (errors raise)."""
    async with aiosmtplib.SMTP(
        hostname="127.0.0.1", port=delivery.inbound_port, start_tls=False, timeout=30
    ) as client:
        await client.mail(sender)
        await client.rcpt(rcpt)
        return await client.data(raw)


async def status(delivery: AuthDelivery, ws: Workspace, message_id: str) -> int:
    async with grpc.aio.insecure_channel(delivery.service.address) as ch:
        answer = await delivery_pb2_grpc.DeliveryServiceStub(ch).GetMessageStatus(
            delivery_pb2.GetMessageStatusRequest(message_id=message_id), metadata=ws.metadata
        )
    return int(answer.status)


async def suppressions(contacts: RunningService, ws: Workspace) -> dict[str, int]:
    async with grpc.aio.insecure_channel(contacts.address) as ch:
        answer = await contacts_pb2_grpc.ConsentServiceStub(ch).ListSuppressions(
            contacts_pb2.ListSuppressionsRequest(), metadata=ws.metadata
        )
    return {s.email: int(s.reason) for s in answer.suppressions}


async def sent_mail(
    delivery: AuthDelivery,
    producer: AIOKafkaProducer,
    capture: CaptureSmtp,
    contacts: RunningService,
    ws: Workspace,
) -> tuple[contacts_pb2.Contact, str, str]:
    """A contact, a message delivery sent them (SENT in the ledger), and its VERP address."""
    contact = await new_contact(contacts, ws)
    message_id, mail = await mail_contact(producer, capture, ws, contact)
    sent = delivery_pb2.MESSAGE_STATUS_SENT
    await eventually(lambda: _is(status(delivery, ws, message_id), sent), timeout=30)
    return contact, message_id, mail.mail_from


async def _is(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]


@pytest.mark.parametrize(
    "sample",
    [
        "gmail_hard_bounce.eml",
        "outlook_hard_bounce.eml",
        "postfix_hard_bounce.eml",
        "exim_hard_bounce.eml",
    ],
)
async def test_a_hard_bounce_dsn_bounces_the_message_once_and_suppresses_the_address(
    sample: str,
    auth_delivery: AuthDelivery,
    contacts_service: RunningService,
    capture: CaptureSmtp,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    delivery_events: DeliveryEvents,
) -> None:
    contact, message_id, address = await sent_mail(
        auth_delivery, producer, capture, contacts_service, workspace
    )
    raw = report(sample, address, message_id)

    reply = await send_report(auth_delivery, address, raw)
    assert reply.code == 250
    bounced = await eventually(
        lambda: delivery_events.of(message_id, "message_bounced"), timeout=30
    )
    event = bounced[0].message_bounced
    assert (event.source, event.permanent, event.contact_id) == ("dsn", True, contact.id)
    assert event.status_code.startswith("5.") and event.smtp_response
    assert bounced[0].workspace_id == workspace.id
    assert await status(auth_delivery, workspace, message_id) == delivery_pb2.MESSAGE_STATUS_BOUNCED
    await eventually(
        lambda: _has(suppressions(contacts_service, workspace), contact.email, "HARD_BOUNCE"),
        timeout=30,
    )

    # The same report again (a relay's retry): accepted, and nothing new is published. A
    # complaint after it on the same key (partition) shows the replay was consumed.
    assert (await send_report(auth_delivery, address, raw)).code == 250
    await send_report(auth_delivery, address, report("yahoo_arf.eml", address, message_id))
    await eventually(lambda: delivery_events.of(message_id, "message_complained"), timeout=30)
    assert len(await delivery_events.of(message_id, "message_bounced")) == 1


async def _has(found: object, email: str, reason: str) -> bool:
    listed: dict[str, int] = await found  # type: ignore[misc]
    return listed.get(email) == contacts_pb2.SuppressionReason.Value(f"SUPPRESSION_REASON_{reason}")


@pytest.mark.parametrize(
    ("sample", "reporter"),
    [("yahoo_arf.eml", "Yahoo!-Mail-Feedback/2.0"), ("microsoft_jmrp.eml", "microsoft-jmrp")],
)
async def test_a_feedback_report_is_a_complaint_that_suppresses_the_address(
    sample: str,
    reporter: str,
    auth_delivery: AuthDelivery,
    contacts_service: RunningService,
    capture: CaptureSmtp,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    delivery_events: DeliveryEvents,
) -> None:
    contact, message_id, address = await sent_mail(
        auth_delivery, producer, capture, contacts_service, workspace
    )
    reply = await send_report(auth_delivery, address, report(sample, address, message_id))
    assert reply.code == 250
    found = await eventually(
        lambda: delivery_events.of(message_id, "message_complained"), timeout=30
    )
    event = found[0].message_complained
    assert (event.feedback_type, event.reporter, event.contact_id) == (
        "abuse",
        reporter,
        contact.id,
    )
    await eventually(
        lambda: _has(suppressions(contacts_service, workspace), contact.email, "COMPLAINT"),
        timeout=30,
    )
    # The mail was delivered: a complaint does not make it a bounce.
    assert await status(auth_delivery, workspace, message_id) == delivery_pb2.MESSAGE_STATUS_SENT


async def test_a_delayed_dsn_is_a_soft_bounce_that_suppresses_nobody(
    auth_delivery: AuthDelivery,
    contacts_service: RunningService,
    capture: CaptureSmtp,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    delivery_events: DeliveryEvents,
) -> None:
    contact, message_id, address = await sent_mail(
        auth_delivery, producer, capture, contacts_service, workspace
    )
    await send_report(auth_delivery, address, report("postfix_delayed.eml", address, message_id))
    found = await eventually(lambda: delivery_events.of(message_id, "message_bounced"), timeout=30)
    event = found[0].message_bounced
    assert (event.permanent, event.status_code, event.source) == (False, "4.2.2", "dsn")
    assert await status(auth_delivery, workspace, message_id) == delivery_pb2.MESSAGE_STATUS_SENT
    # A later hard bounce of the same message is published, after it on the same partition.
    await send_report(
        auth_delivery, address, report("postfix_hard_bounce.eml", address, message_id)
    )
    await eventually(
        lambda: _has(suppressions(contacts_service, workspace), contact.email, "HARD_BOUNCE"),
        timeout=30,
    )

    async def both() -> list[object]:
        found = await delivery_events.of(message_id, "message_bounced")
        return found if len(found) >= 2 else []

    bounces = await eventually(both, timeout=30)
    assert [e.message_bounced.permanent for e in bounces][:2] == [False, True]


async def test_addresses_that_are_not_a_message_of_ours_are_refused_at_rcpt(
    auth_delivery: AuthDelivery,
    contacts_service: RunningService,
    capture: CaptureSmtp,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    _, message_id, address = await sent_mail(
        auth_delivery, producer, capture, contacts_service, workspace
    )
    key = verp.derive_key(auth_delivery.link_secret)
    domain = auth_delivery.bounce_domain
    local = address.partition("@")[0]
    altered = local[:-2] + ("aa" if not local.endswith("aa") else "bb")
    for rcpt in (
        f"postmaster@{domain}",
        f"{altered}@{domain}",  # a guessed or altered token
        f"{local}@other.example.com",  # another domain
        verp.address(verp.derive_key("another secret"), message_id, domain),  # another key
        verp.address(key, str(uuid.uuid4()), domain),  # signed, but no such message
    ):
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
            await send_report(
                auth_delivery, rcpt, report("gmail_hard_bounce.eml", rcpt, message_id)
            )
        assert refused.value.code == 550, rcpt
    assert await status(auth_delivery, workspace, message_id) == delivery_pb2.MESSAGE_STATUS_SENT


async def test_mail_that_is_no_report_is_refused_and_oversized_mail_too(
    auth_delivery: AuthDelivery,
    contacts_service: RunningService,
    capture: CaptureSmtp,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    contact, message_id, address = await sent_mail(
        auth_delivery, producer, capture, contacts_service, workspace
    )
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send_report(auth_delivery, address, report("out_of_office.eml", address, message_id))
    assert refused.value.code == 550
    assert "not a delivery status or feedback report" in refused.value.message
    # A success notice is a report that needs nothing: accepted, and dropped.
    ok = await send_report(
        auth_delivery, address, report("postfix_success.eml", address, message_id)
    )
    assert ok.code == 250 and "ignored" in ok.message
    # Over the size limit (256 KiB in this fixture): refused, whatever it says.
    huge = report("gmail_hard_bounce.eml", address, message_id) + (b"x" * 76 + b"\r\n") * 4000
    with pytest.raises(aiosmtplib.SMTPResponseException) as too_big:
        await send_report(auth_delivery, address, huge)
    assert too_big.value.code == 552
    assert await status(auth_delivery, workspace, message_id) == delivery_pb2.MESSAGE_STATUS_SENT
    assert not await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT count(*) FROM delivery.inbound_reports WHERE message_id = $1::uuid",
        message_id,
    )
    assert contact.email not in await suppressions(contacts_service, workspace)


async def test_a_report_on_an_erased_contacts_message_is_dropped(
    auth_delivery: AuthDelivery,
    contacts_service: RunningService,
    capture: CaptureSmtp,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    """The report quotes the address of someone who asked to be forgotten: the ledger row
    stays pseudonymised (detail "erased", services/delivery/privacy.py), nothing is published."""
    _, message_id, address = await sent_mail(
        auth_delivery, producer, capture, contacts_service, workspace
    )
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:  # what erase_contact does to the row
        await conn.execute(
            "UPDATE delivery.messages SET contact_id = $2, detail = 'erased'"
            " WHERE message_id = $1::uuid",
            message_id,
            uuid.uuid4(),
        )
    finally:
        await conn.close()
    reply = await send_report(
        auth_delivery, address, report("gmail_hard_bounce.eml", address, message_id)
    )
    assert reply.code == 250
    # Recorded or not is decided before the reply: the ledger and the claim table say so.
    assert await status(auth_delivery, workspace, message_id) == delivery_pb2.MESSAGE_STATUS_SENT
    assert not await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT count(*) FROM delivery.inbound_reports WHERE message_id = $1::uuid",
        message_id,
    )
