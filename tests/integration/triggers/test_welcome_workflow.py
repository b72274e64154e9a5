"""The trigger engine as it runs: a Faust worker process between real Kafka, PostgreSQL and
SMTP. A signup becomes exactly one welcome mail, whatever is replayed or killed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import asyncpg
import grpc
import pytest
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc

from tests.integration.conftest import (
    RunningService,
    Workspace,
    run_in_process,
    wait_grpc_serving,
)
from tests.integration.triggers.support import publish_welcome
from tests.mail import mails
from tests.markers import one_per_partition, settle
from tests.support import eventually, fetchval, free_port, unique


class Worker:
    """``python -m services.triggers`` as a child process that a test may kill."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port()
        env = {**os.environ, "TRIGGERS_GRPC_PORT": str(self.port), "NUDGE_LOG_FORMAT": "text"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.triggers"], env=env, stdout=log, stderr=log
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    async def ready(self) -> None:
        """Serving gRPC: its sidecar has migrated the schema and the agent is about to run."""
        await wait_grpc_serving(f"127.0.0.1:{self.port}", timeout=120)


@pytest.fixture(scope="module")
async def triggers_worker(
    contacts_service: RunningService, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    worker = Worker(tmp_path_factory.mktemp("triggers") / "worker.log")
    worker.start()
    try:
        await worker.ready()
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="module")
async def delivery_service(contacts_service: RunningService) -> AsyncIterator[RunningService]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    async with run_in_process(serve, Settings(grpc_port=port), port) as running:
        yield running


def welcome_mails_by_recipient() -> Counter[str]:
    return Counter(str(m["To"]) for m in mails() if str(m["Subject"]).startswith("Welcome to"))


def mailed(message_id: str) -> bool:
    return any(str(m["X-Nudge-Message-Id"]) == message_id for m in mails())


async def settle_contacts(
    contacts: RunningService, delivery: RunningService, ws: Workspace, contact_ids: list[str]
) -> None:
    """Everything reported so far for these contacts went through triggers and delivery."""
    await settle(
        contacts_addr=contacts.address,
        delivery_addr=delivery.address,
        metadata=ws.metadata,
        database_url=os.environ["DATABASE_URL"],
        contact_ids=contact_ids,
        delivered=mailed,
    )


async def signed_up_contacts(
    channel: grpc.aio.Channel, ws: Workspace, count: int
) -> list[contacts_pb2.Contact]:
    stub = contacts_pb2_grpc.ContactServiceStub(channel)
    answers = await asyncio.gather(
        *(
            stub.CreateContact(
                contacts_pb2.CreateContactRequest(
                    contact=contacts_pb2.Contact(email=f"{unique('new')}@example.com"),
                    consents=[contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS],
                ),
                metadata=ws.metadata,
            )
            for _ in range(count)
        )
    )
    return [a.contact for a in answers]


async def report_signup(
    channel: grpc.aio.Channel, ws: Workspace, contact_id: str, key: str
) -> None:
    await shop_pb2_grpc.ShopEventServiceStub(channel).TrackEvent(
        shop_pb2.TrackEventRequest(
            idempotency_key=key,
            contact=contacts_pb2.ContactRef(contact_id=contact_id),
            event=shop_pb2.ShopEvent(signed_up=shop_pb2.SignedUp()),
        ),
        metadata=ws.metadata,
    )


async def report_signups(
    channel: grpc.aio.Channel, ws: Workspace, contacts: list[contacts_pb2.Contact]
) -> None:
    await asyncio.gather(*(report_signup(channel, ws, c.id, unique("signup")) for c in contacts))


async def processed_signups(database_url: str, ws: Workspace) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM triggers.runs WHERE workspace_id = $1::uuid", ws.id
            )
        )
    finally:
        await conn.close()


async def test_a_signup_reported_twice_is_welcomed_once(
    triggers_worker: Worker,
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
) -> None:
    await publish_welcome(os.environ["DATABASE_URL"], workspace.id)
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        [contact] = await signed_up_contacts(channel, workspace, 1)
        # Two different platform events for one signup (a retry with a new key, say).
        await report_signup(channel, workspace, contact.id, unique("signup"))
        await report_signup(channel, workspace, contact.id, unique("signup"))
    await eventually(lambda: welcome_mails_by_recipient()[contact.email], timeout=60)
    # Markers on the contact's own key show that both signups were consumed by both services.
    await settle_contacts(contacts_service, delivery_service, workspace, [contact.id])
    assert welcome_mails_by_recipient()[contact.email] == 1


async def waiting_on_lock(database_url: str, table: str) -> bool:
    """Some session waits for a lock on ``table`` (the worker, blocked mid-event)."""
    return bool(
        await fetchval(
            database_url,
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = $1::regclass",
            table,
        )
    )


async def test_killing_the_worker_mid_stream_loses_and_repeats_nothing(
    triggers_worker: Worker,
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    infra: dict[str, str],
) -> None:
    """The worker is killed while it handles an event, with part of the stream done.

    To land the kill mid-stream whatever the machine's speed, the test lets the first
    ``before`` signups through, then takes a lock on ``triggers.runs`` and reports
    the rest: the worker blocks inside the transaction of its next event (its
    processed-event record written, its run not yet). SIGKILL then, release, restart."""
    database_url = infra["DATABASE_URL"]
    total, before = 150, 50
    await publish_welcome(database_url, workspace.id)
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        contacts = await signed_up_contacts(channel, workspace, total)
        await report_signups(channel, workspace, contacts[:before])
        await eventually(
            lambda: _equals(processed_signups(database_url, workspace), before), timeout=60
        )
        blocker = await asyncpg.connect(database_url)
        try:
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute("LOCK TABLE triggers.runs IN EXCLUSIVE MODE")
            await report_signups(channel, workspace, contacts[before:])
            await eventually(lambda: waiting_on_lock(database_url, "triggers.runs"), timeout=60)
            done_at_kill = await processed_signups(database_url, workspace)
            assert 0 < done_at_kill < total, done_at_kill
            triggers_worker.kill()  # SIGKILL: no commit, no goodbye
            await lock.rollback()
        finally:
            await blocker.close()
    triggers_worker.start()

    emails = {c.email for c in contacts}

    def all_welcomed() -> bool:
        counts = welcome_mails_by_recipient()
        return all(counts[e] >= 1 for e in emails)

    await eventually(all_welcomed, timeout=120, interval=0.2)
    await settle_contacts(
        contacts_service, delivery_service, workspace, one_per_partition([c.id for c in contacts])
    )
    counts = welcome_mails_by_recipient()
    assert {e: counts[e] for e in emails if counts[e] != 1} == {}
    assert await processed_signups(database_url, workspace) == total


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected
