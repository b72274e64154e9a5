"""``nudge_delivery_outcomes_total`` (services/delivery/outcome_metrics.py) as the real
delivery service counts it, over real conversations with the project's sink steered by the
recipient's address (tests/integration/delivery/helpers.py): each outcome once, under its
kind of mail, a skip under its reason, and nothing counted twice.

The counts are the test process's (delivery runs in it); every test waits for the counts
to reach what it expects, since a count follows its transaction's commit. This delivery
keeps its ledger in a database of its own: its retry loop and sweeper then find no other
test's messages, whose outcomes would move the counts too."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2

from services.common.events import deterministic_id, new_envelope
from services.common.topics import DELIVERY_REQUESTS
from services.delivery.outcome_metrics import OUTCOME_COUNTS
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.delivery.helpers import Sink, address, new_contact, running_sink
from tests.support import eventually, free_port, unique

S = delivery_pb2
MAX_ATTEMPTS = 3
OUTCOMES = (
    "sent",
    "deferred",
    "bounced_hard",
    "bounced_soft",
    "complained",
    "failed",
    "unknown",
    "skipped",
)
KINDS = ("campaign", "automation", "transactional", "test", "other")
REASONS = ("", "no_consent", "suppressed", "other")


@pytest.fixture(scope="module")
async def sink(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sink]:
    async with running_sink(tmp_path_factory.mktemp("sink")) as running:
        yield running


@pytest.fixture(scope="module")
async def ledger_url(infra: dict[str, str]) -> AsyncIterator[str]:
    """A database of this module's own on the session's PostgreSQL."""
    name = f"nudge_metrics_{uuid.uuid4().hex[:10]}"
    shared = os.environ["DATABASE_URL"]
    conn = await asyncpg.connect(shared)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield urlsplit(shared)._replace(path=f"/{name}").geturl()
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


@pytest.fixture(scope="module")
async def delivery(
    contacts_service: RunningService, sink: Sink, ledger_url: str
) -> AsyncIterator[RunningService]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    settings = Settings(
        grpc_port=port,
        database_url=ledger_url,
        smtp_url=sink.url,
        smtp_timeout_s=30.0,
        retry_max_attempts=MAX_ATTEMPTS,
        retry_base_delay_s=600.0,  # a deferral waits until the test releases it
        retry_max_delay_s=2400.0,
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


def counts() -> Counter[tuple[str, str, str]]:
    return Counter(
        {(o, k, r): OUTCOME_COUNTS.value(o, k, r) for o in OUTCOMES for k in KINDS for r in REASONS}
    )


async def request(
    producer: AIOKafkaProducer,
    ws: Workspace,
    contact_id: str,
    kind: int = S.MESSAGE_KIND_AUTOMATION,
    purpose: int = contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
    test_recipient: str = "",
) -> str:
    message_id = deterministic_id(ws.id, unique("m"))
    envelope = new_envelope(
        ws.id,
        delivery_pb2.DeliveryRequested(
            message_id=message_id,
            contact_id=contact_id,
            kind=kind,  # type: ignore[arg-type]
            purpose=purpose,  # type: ignore[arg-type]
            workflow_id="wf-metrics",
            test_recipient=test_recipient,
            content=delivery_pb2.MessageContent(subject="Hello", body_text="Hi"),
        ),
        event_id=message_id,
    )
    await producer.send_and_wait(
        DELIVERY_REQUESTS, envelope.SerializeToString(), key=contact_id.encode()
    )
    return message_id


async def assert_counted(
    before: Counter[tuple[str, str, str]], expected: dict[tuple[str, ...], int]
) -> None:
    """Wait until the counts moved by ``expected`` exactly, and by nothing else."""

    def moved() -> dict[tuple[str, ...], int]:
        now = counts()
        return {key: now[key] - before[key] for key in now if now[key] != before[key]}

    await eventually(lambda: moved() == expected, timeout=60, interval=0.1)


async def test_each_smtp_outcome_is_counted_once_under_its_kind(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    before = counts()
    taken = await new_contact(contacts_service, workspace, address())
    hard = await new_contact(contacts_service, workspace, address("bounce-550"))
    soft = await new_contact(contacts_service, workspace, address("bouncedata1-554"))
    deferred = await new_contact(contacts_service, workspace, address("defer1-451"))
    unanswered = await new_contact(contacts_service, workspace, address("drop1"))
    for contact in (taken, hard, soft, deferred, unanswered):
        await request(producer, workspace, contact.id)
    receipt = await new_contact(contacts_service, workspace, address())
    await request(
        producer,
        workspace,
        receipt.id,
        kind=S.MESSAGE_KIND_TRANSACTIONAL,
        purpose=contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL,
    )
    await assert_counted(
        before,
        {
            ("sent", "automation", ""): 1,
            ("bounced_hard", "automation", ""): 1,
            ("bounced_soft", "automation", ""): 1,
            ("deferred", "automation", ""): 1,
            ("unknown", "automation", ""): 1,
            ("sent", "transactional", ""): 1,
        },
    )


async def test_skipped_and_invalid_requests_are_counted_with_a_bounded_reason(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    before = counts()
    no_consent = await new_contact(contacts_service, workspace, address(), consents=())
    await request(producer, workspace, no_consent.id)
    # A request of no kind: no retry can fix it, it FAILS (counted under kind "other").
    await request(producer, workspace, no_consent.id, kind=S.MESSAGE_KIND_UNSPECIFIED)
    await assert_counted(
        before,
        {("skipped", "automation", "no_consent"): 1, ("failed", "other", ""): 1},
    )


async def test_a_mail_deferred_until_out_of_attempts_counts_each_deferral_then_failed(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    ledger_url: str,
) -> None:
    before = counts()
    contact = await new_contact(contacts_service, workspace, address("deferdata-452"))
    message_id = await request(producer, workspace, contact.id)

    async def released_until_failed() -> bool:
        # Each deferral due now rather than minutes away.
        conn = await asyncpg.connect(ledger_url)
        try:
            await conn.execute(
                "UPDATE delivery.pending_sends p SET due_at = now() FROM delivery.messages m"
                " WHERE p.message_id = $1::uuid AND m.message_id = p.message_id"
                " AND m.status = $2",
                uuid.UUID(message_id),
                S.MESSAGE_STATUS_DEFERRED,
            )
        finally:
            await conn.close()
        return OUTCOME_COUNTS.value("failed", "automation") > before[("failed", "automation", "")]

    await eventually(released_until_failed, timeout=60, interval=0.2)
    await assert_counted(
        before,
        {("deferred", "automation", ""): MAX_ATTEMPTS - 1, ("failed", "automation", ""): 1},
    )


async def test_a_claim_left_by_a_crash_and_a_test_send_are_counted(
    delivery: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    ledger_url: str,
) -> None:
    """The sweeper's UNKNOWN counts under the claim's kind; a test send under ``test``."""
    before = counts()
    contact = await new_contact(contacts_service, workspace, address())
    conn = await asyncpg.connect(ledger_url)
    try:  # a ledger row as a SIGKILL between the claim and the answer leaves it, hours old
        await conn.execute(
            "INSERT INTO delivery.messages (message_id, workspace_id, contact_id, kind,"
            " status, claimed_at, updated_at) VALUES ($1, $2, $3, $4, $5, now() - interval"
            " '1 hour', now() - interval '1 hour')",
            uuid.uuid4(),
            uuid.UUID(workspace.id),
            uuid.UUID(contact.id),
            S.MESSAGE_KIND_CAMPAIGN,
            S.MESSAGE_STATUS_CLAIMED,
        )
    finally:
        await conn.close()
    await request(
        producer,
        workspace,
        contact.id,
        kind=S.MESSAGE_KIND_TEST,
        purpose=contacts_pb2.CONSENT_PURPOSE_MARKETING,
        test_recipient="manager@example.com",
    )
    await assert_counted(before, {("unknown", "campaign", ""): 1, ("sent", "test", ""): 1})
