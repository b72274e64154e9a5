"""Every SMTP outcome, each over a real conversation with the project's sink
(deploy/local/smtp_sink.py), steered by the recipient's address (``bounce-550+...``).

What is proven: a refused recipient bounces once (hard: suppressed by contacts; soft: not),
with its event; a deferral is tried again later from ``pending_sends`` while the partition
moves on, and fails when out of attempts; a hand-off without an answer is UNKNOWN, resent
for transactional mail only; a claim left by a crash is found by the sweeper.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc, events_pb2

from services.common.events import new_envelope
from services.common.topics import DELIVERY_REQUESTS
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.delivery.helpers import (
    Events,
    Sink,
    address,
    automation_request,
    execute,
    fetchval,
    is_suppressed,
    new_contact,
    request_mail,
    row,
    running_sink,
    status_is,
)
from tests.support import eventually, free_port, unique

S = delivery_pb2  # MessageStatus values, as the ledger stores them
MAX_ATTEMPTS = 3
# A deferred message is due again no sooner than half this (backoff with jitter): far beyond
# any test's wait, so that a deferral provably waits in ``pending_sends`` until the test
# releases it (:func:`release`), however slow the machine.
RETRY_BASE_DELAY_S = 600.0
# So long a backoff also means a hand-off that timed out (a loaded machine) would wait minutes:
# the SMTP timeout is generous, the sink being local (no test here needs it to expire).
SMTP_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
async def sink(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sink]:
    async with running_sink(tmp_path_factory.mktemp("sink")) as running:
        yield running


@pytest.fixture(scope="module")
async def delivery(contacts_service: RunningService, sink: Sink) -> AsyncIterator[RunningService]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    settings = Settings(
        grpc_port=port,
        smtp_url=sink.url,
        smtp_timeout_s=SMTP_TIMEOUT_S,
        retry_max_attempts=MAX_ATTEMPTS,
        retry_base_delay_s=RETRY_BASE_DELAY_S,
        retry_max_delay_s=RETRY_BASE_DELAY_S * 4,
        retry_poll_interval_s=0.2,
        sweep_interval_s=0.5,
    )
    async with run_in_process(serve, settings, port) as running:
        yield running


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def events(infra: dict[str, str]) -> AsyncIterator[Events]:
    reader = Events(infra["KAFKA_BOOTSTRAP_SERVERS"])
    await reader.start()
    yield reader
    await reader.stop()


def payload(found: list[tuple[str, object]], name: str) -> object:
    return next(p for n, p in found if n == name)


async def release(message_id: str) -> bool:
    """Make the next attempt of a message DEFERRED now due now (the retry loop takes it on
    its next round); False when it is not waiting (being tried, or finished)."""
    done = await execute(
        "UPDATE delivery.pending_sends p SET due_at = now() FROM delivery.messages m"
        " WHERE p.message_id = $1::uuid AND m.message_id = p.message_id AND m.status = $2",
        message_id,
        S.MESSAGE_STATUS_DEFERRED,
    )
    return done != "UPDATE 0"


async def test_a_refused_recipient_is_a_hard_bounce_recorded_once_and_suppressed(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    sink: Sink,
    events: Events,
) -> None:
    contact = await new_contact(contacts_service, workspace, address("bounce-550"))
    message_id = await request_mail(producer, workspace, contact.id)

    bounced = await eventually(lambda: status_is(message_id, S.MESSAGE_STATUS_BOUNCED), timeout=60)
    assert bounced["detail"].startswith("550 5.1.1"), bounced["detail"]
    assert bounced["attempts"] == 1
    found = await eventually(
        lambda: events.has(message_id, "message_queued", "message_bounced"), timeout=30
    )
    event = payload(found, "message_bounced")
    assert isinstance(event, events_pb2.MessageBounced)
    assert (event.permanent, event.source, event.status_code) == (True, "smtp", "5.1.1")
    assert (event.contact_id, event.workflow_id) == (contact.id, "wf-test")
    # Contacts lists the address on the hard bounce: a later request is skipped, not mailed.
    await eventually(lambda: is_suppressed(contacts_service, workspace, contact.id), timeout=60)
    later = await request_mail(producer, workspace, contact.id)
    skipped = await eventually(lambda: status_is(later, S.MESSAGE_STATUS_SKIPPED), timeout=60)
    assert skipped["detail"] == "suppressed:hard_bounce"
    assert sink.copies(message_id) == sink.copies(later) == 0
    assert [n for n, _ in await events.about(message_id)] == ["message_queued", "message_bounced"]


async def test_a_refused_message_is_a_soft_bounce_that_suppresses_nobody(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    sink: Sink,
    events: Events,
) -> None:
    contact = await new_contact(contacts_service, workspace, address("bouncedata1-554"))
    message_id = await request_mail(producer, workspace, contact.id)

    await eventually(lambda: status_is(message_id, S.MESSAGE_STATUS_BOUNCED), timeout=60)
    found = await eventually(lambda: events.has(message_id, "message_bounced"), timeout=30)
    event = payload(found, "message_bounced")
    assert isinstance(event, events_pb2.MessageBounced)
    assert (event.permanent, event.status_code) == (False, "5.7.1")
    # The address is fine: the next mail goes out (the rule refused the first DATA only).
    later = await request_mail(producer, workspace, contact.id)
    await eventually(lambda: status_is(later, S.MESSAGE_STATUS_SENT), timeout=60)
    assert sink.copies(later) == 1 and sink.copies(message_id) == 0
    assert not await is_suppressed(contacts_service, workspace, contact.id)


async def test_a_deferred_message_waits_in_postgres_not_in_the_partition(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    sink: Sink,
    events: Events,
) -> None:
    contact = await new_contact(contacts_service, workspace, address("defer1-451"))
    message_id = await request_mail(producer, workspace, contact.id)
    deferred = await eventually(
        lambda: status_is(message_id, S.MESSAGE_STATUS_DEFERRED), timeout=60
    )
    assert deferred["detail"].startswith("451 4.3.0"), deferred["detail"]
    # Its next attempt waits in PostgreSQL, minutes away (the backoff of this instance).
    waits = await fetchval(
        "SELECT due_at > now() + make_interval(secs => $2) FROM delivery.pending_sends"
        " WHERE message_id = $1::uuid",
        message_id,
        RETRY_BASE_DELAY_S / 2 - 60,
    )
    assert waits is True, "the deferred message is not waiting minutes in pending_sends"
    # A later request on the same key (same partition, same contact) is mailed meanwhile:
    # the deferral holds neither the partition nor the contact's order.
    later = await request_mail(producer, workspace, contact.id)
    await eventually(lambda: status_is(later, S.MESSAGE_STATUS_SENT), timeout=60)
    assert sink.copies(later) == 1
    assert (await row(message_id))["status"] == S.MESSAGE_STATUS_DEFERRED  # type: ignore[index]
    assert sink.copies(message_id) == 0
    # Released (due now), the retry loop hands it over again: the sink takes it this time.
    assert await release(message_id)
    sent = await eventually(lambda: status_is(message_id, S.MESSAGE_STATUS_SENT), timeout=60)
    assert sent["attempts"] == 2
    assert sink.copies(message_id) == 1
    found = await eventually(lambda: events.has(message_id, "message_sent"), timeout=30)
    assert [n for n, _ in found] == ["message_queued", "message_deferred", "message_sent"]
    event = payload(found, "message_deferred")
    assert isinstance(event, events_pb2.MessageDeferred)
    assert event.attempt == 1 and event.next_attempt_at.seconds > 0
    assert (
        await execute(
            "SELECT 1 FROM delivery.pending_sends WHERE message_id = $1::uuid", message_id
        )
        == "SELECT 0"
    )


async def test_a_message_deferred_until_out_of_attempts_fails(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    sink: Sink,
    events: Events,
) -> None:
    contact = await new_contact(contacts_service, workspace, address("deferdata-452"))
    message_id = await request_mail(producer, workspace, contact.id)

    async def failed_at_last() -> asyncpg.Record | None:
        await release(message_id)  # each deferral due now, not minutes away
        return await status_is(message_id, S.MESSAGE_STATUS_FAILED)

    failed = await eventually(failed_at_last, timeout=60, interval=0.2)
    assert failed["attempts"] == MAX_ATTEMPTS
    assert failed["detail"].startswith(f"gave up after {MAX_ATTEMPTS} attempt(s): 452 4.2.2")
    found = await eventually(lambda: events.has(message_id, "message_failed"), timeout=30)
    deferrals = [p for n, p in found if n == "message_deferred"]
    assert [d.attempt for d in deferrals] == list(range(1, MAX_ATTEMPTS))  # type: ignore[attr-defined]
    event = payload(found, "message_failed")
    assert isinstance(event, events_pb2.MessageFailed) and event.attempts == MAX_ATTEMPTS
    assert sink.copies(message_id) == 0


async def test_no_answer_to_the_data_is_unknown_and_campaign_mail_is_not_resent(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    sink: Sink,
    events: Events,
) -> None:
    """``drop1``: the sink stores the mail, then hangs up without answering the DATA."""
    contact = await new_contact(contacts_service, workspace, address("drop1"))
    message_id = await request_mail(producer, workspace, contact.id)

    await eventually(lambda: status_is(message_id, S.MESSAGE_STATUS_UNKNOWN), timeout=60)
    found = await eventually(lambda: events.has(message_id, "message_unknown"), timeout=30)
    event = payload(found, "message_unknown")
    assert isinstance(event, events_pb2.MessageUnknown) and not event.resent
    later = await request_mail(producer, workspace, contact.id)  # behind it on the partition
    await eventually(lambda: status_is(later, S.MESSAGE_STATUS_SENT), timeout=60)
    assert sink.copies(message_id) == 1  # the server has it; it was never handed over again
    assert (await row(message_id))["status"] == S.MESSAGE_STATUS_UNKNOWN  # type: ignore[index]


async def test_no_answer_to_the_data_of_transactional_mail_resends_it_with_its_message_id(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    sink: Sink,
    events: Events,
) -> None:
    contact = await new_contact(contacts_service, workspace, address("drop1"), consents=())
    async with grpc.aio.insecure_channel(delivery.address) as ch:
        sent = await delivery_pb2_grpc.DeliveryServiceStub(ch).SendTransactional(
            delivery_pb2.SendTransactionalRequest(
                idempotency_key=unique("reset"),
                contact_id=contact.id,
                content=delivery_pb2.MessageContent(subject="Reset", body_text="Your link"),
            ),
            metadata=workspace.metadata,
        )
    message_id = sent.message_id

    done = await eventually(lambda: status_is(message_id, S.MESSAGE_STATUS_SENT), timeout=60)
    assert done["attempts"] == 2
    copies = [m for m in sink.messages() if str(m["X-Nudge-Message-Id"]) == message_id]
    assert len(copies) == 2 and copies[0]["Message-ID"] == copies[1]["Message-ID"]
    found = await eventually(lambda: events.has(message_id, "message_sent"), timeout=30)
    assert [n for n, _ in found] == ["message_queued", "message_unknown", "message_sent"]
    event = payload(found, "message_unknown")
    assert isinstance(event, events_pb2.MessageUnknown) and event.resent


async def crashed_claim(ws: Workspace, contact_id: str, kind: int) -> str:
    """A ledger row as a SIGKILL between the claim and the answer leaves it, an hour old,
    with the request kept for a transactional message (as the claim keeps it)."""
    message_id, envelope = automation_request(ws, contact_id)
    envelope.delivery_requested.kind = kind  # type: ignore[assignment]
    if kind == delivery_pb2.MESSAGE_KIND_TRANSACTIONAL:
        envelope.delivery_requested.purpose = contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
    envelope = new_envelope(ws.id, envelope.delivery_requested, event_id=message_id)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    # One transaction, as the claim writes them: the sweeper running between a ledger row
    # and its kept request would find nothing to resend and leave the receipt UNKNOWN.
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO delivery.messages (message_id, workspace_id, contact_id, kind,"
                " status, claimed_at, updated_at) VALUES ($1, $2, $3, $4, 1, $5, $5)",
                uuid.UUID(message_id),
                uuid.UUID(ws.id),
                uuid.UUID(contact_id),
                kind,
                hour_ago,
            )
            if kind == delivery_pb2.MESSAGE_KIND_TRANSACTIONAL:
                await conn.execute(
                    "INSERT INTO delivery.pending_sends (message_id, workspace_id, contact_id,"
                    " first_attempt_at, envelope) VALUES ($1, $2, $3, $4, $5)",
                    uuid.UUID(message_id),
                    uuid.UUID(ws.id),
                    uuid.UUID(contact_id),
                    hour_ago,
                    envelope.SerializeToString(),
                )
    finally:
        await conn.close()
    return message_id


async def test_the_sweeper_reports_stale_claims_unknown_and_resends_only_transactional_mail(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    sink: Sink,
    events: Events,
) -> None:
    contact = await new_contact(contacts_service, workspace, address())
    campaign = await crashed_claim(workspace, contact.id, delivery_pb2.MESSAGE_KIND_CAMPAIGN)
    receipt = await crashed_claim(workspace, contact.id, delivery_pb2.MESSAGE_KIND_TRANSACTIONAL)

    await eventually(lambda: status_is(campaign, S.MESSAGE_STATUS_UNKNOWN), timeout=60)
    await eventually(lambda: status_is(receipt, S.MESSAGE_STATUS_SENT), timeout=60)
    assert sink.copies(receipt) == 1
    assert sink.copies(campaign) == 0
    not_resent = payload(
        await eventually(lambda: events.has(campaign, "message_unknown"), timeout=30),
        "message_unknown",
    )
    assert isinstance(not_resent, events_pb2.MessageUnknown)
    assert (not_resent.resent, not_resent.kind) == (False, delivery_pb2.MESSAGE_KIND_CAMPAIGN)
    assert "interrupted between the claim" in not_resent.reason
    resent = payload(
        await eventually(
            lambda: events.has(receipt, "message_unknown", "message_sent"), timeout=30
        ),
        "message_unknown",
    )
    assert isinstance(resent, events_pb2.MessageUnknown) and resent.resent
    assert (await row(campaign))["status"] == S.MESSAGE_STATUS_UNKNOWN  # type: ignore[index]


async def test_a_contact_who_unsubscribes_just_before_the_handoff_is_not_mailed(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    sink: Sink,
) -> None:
    contact = await new_contact(contacts_service, workspace, address())
    message_id, envelope = automation_request(workspace, contact.id)  # built while subscribed
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        await contacts_pb2_grpc.ConsentServiceStub(ch).RecordConsent(
            contacts_pb2.RecordConsentRequest(
                contact=contacts_pb2.ContactRef(contact_id=contact.id),
                purpose=contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
                status=contacts_pb2.CONSENT_STATUS_WITHDRAWN,
                source=contacts_pb2.CONSENT_SOURCE_UNSUBSCRIBE_LINK,
                actor="contact",
            ),
            metadata=workspace.metadata,
        )
    await producer.send_and_wait(
        DELIVERY_REQUESTS, envelope.SerializeToString(), key=contact.id.encode()
    )
    skipped = await eventually(lambda: status_is(message_id, S.MESSAGE_STATUS_SKIPPED), timeout=60)
    assert skipped["detail"] == "consent_withdrawn:automations"
    assert sink.copies(message_id) == 0
