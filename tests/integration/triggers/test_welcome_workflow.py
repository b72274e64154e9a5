"""The trigger engine as it runs: a Faust worker process between real Kafka, PostgreSQL and
SMTP. A signup becomes exactly one welcome mail, whatever is replayed or killed."""

from __future__ import annotations

import asyncio
import mailbox
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc

from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.support import eventually, free_port, unique


class Worker:
    """``python -m services.triggers`` as a child process that a test may kill."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "TRIGGERS_GRPC_PORT": str(free_port()), "NUDGE_LOG_FORMAT": "text"}
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


@pytest.fixture(scope="module")
def triggers_worker(
    contacts_service: RunningService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    worker = Worker(tmp_path_factory.mktemp("triggers") / "worker.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
async def delivery_service(contacts_service: RunningService) -> AsyncIterator[RunningService]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    async with run_in_process(serve, Settings(grpc_port=port), port) as running:
        yield running


def welcome_mails_by_recipient() -> Counter[str]:
    box = mailbox.Maildir(os.environ["NUDGE_MAILDIR"], create=True)
    return Counter(str(m["To"]) for m in box if str(m["Subject"]).startswith("Welcome to"))


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


async def processed_signups(database_url: str, ws: Workspace) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM triggers.workflow_runs WHERE workspace_id = $1::uuid", ws.id
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
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        [contact, marker] = await signed_up_contacts(channel, workspace, 2)
        # Two different platform events for one signup (a retry with a new key, say).
        await report_signup(channel, workspace, contact.id, unique("signup"))
        await report_signup(channel, workspace, contact.id, unique("signup"))
        await eventually(lambda: welcome_mails_by_recipient()[contact.email], timeout=60)
        # A later signup for another contact, reported last, shows the first two were consumed.
        await report_signup(channel, workspace, marker.id, unique("signup"))
        await eventually(lambda: welcome_mails_by_recipient()[marker.email], timeout=60)
    assert welcome_mails_by_recipient()[contact.email] == 1


async def test_killing_the_worker_mid_stream_loses_and_repeats_nothing(
    triggers_worker: Worker,
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    infra: dict[str, str],
) -> None:
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        contacts = await signed_up_contacts(channel, workspace, 150)
        await asyncio.gather(
            *(report_signup(channel, workspace, c.id, unique("signup")) for c in contacts)
        )
    # Kill the worker (SIGKILL: no commit, no goodbye) once it is part-way through.
    await eventually(lambda: processed_signups(infra["DATABASE_URL"], workspace), timeout=60)
    triggers_worker.kill()
    done_at_kill = await processed_signups(infra["DATABASE_URL"], workspace)
    triggers_worker.start()

    emails = {c.email for c in contacts}

    def all_welcomed() -> bool:
        counts = welcome_mails_by_recipient()
        return all(counts[e] >= 1 for e in emails)

    await eventually(all_welcomed, timeout=120, interval=0.2)
    counts = welcome_mails_by_recipient()
    assert {e: counts[e] for e in emails if counts[e] != 1} == {}
    assert await processed_signups(infra["DATABASE_URL"], workspace) == len(contacts)
    print(f"worker killed after {done_at_kill}/{len(contacts)} signups")
