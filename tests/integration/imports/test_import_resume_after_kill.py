"""An import survives the contacts process dying under it: the process (a real child, as
operators run it) is killed with SIGKILL while the file is still streaming, after some of
its batches committed; a new process resumes the import with the same key. Every row lands
once, and every contact has exactly one ContactCreated on the topic (one event id: the
relay is at-least-once, so a copy of the same event may be published twice, never a second
event)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc, imports_pb2, imports_pb2_grpc

from services.common.healthcheck import check_grpc
from tests.integration.conftest import Workspace
from tests.integration.imports.helpers import events_by_contact, requests
from tests.support import eventually, fetchval, free_port, wait_until

ROWS = 3_000
BATCH = 200
KEY = "nightly-crm-export"


class Contacts:
    """``python -m services.contacts`` as a child process, on its own port."""

    def __init__(self, tmp_path: Path, admin: str) -> None:
        self.port = free_port()
        self.log = tmp_path / f"contacts-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if k != "NUDGE_BIND_HOST"}
        env.update(
            CONTACTS_GRPC_PORT=str(self.port),
            CONTACTS_IMPORT_BATCH_ROWS=str(BATCH),
            NUDGE_ADMIN_TOKEN=admin,
            NUDGE_INTERNAL_TOKEN=secrets.token_urlsafe(32),
            NUDGE_LINK_SECRET=secrets.token_urlsafe(32),
            NUDGE_DEV_MODE="0",
            NUDGE_LOG_FORMAT="text",
        )
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.contacts"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.serving, timeout=90)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serving(self) -> bool:
        assert self.process.poll() is None, self.log.read_text(errors="replace")[-3000:]
        return check_grpc(self.address, "", timeout=1) is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL: no clean-up of any kind
        self.process.wait(timeout=30)


@pytest.fixture
def processes(infra: dict[str, str], tmp_path: Path) -> Iterator[list[Contacts]]:
    started: list[Contacts] = []
    yield started
    for child in started:
        child.kill()


def the_file() -> bytes:
    lines = [b"email,first_name,external_id"]
    lines += [b"k%d@example.com,Name %d,x-%d" % (i, i, i) for i in range(ROWS)]
    return b"\n".join(lines) + b"\n"


async def committed_line(ws: Workspace) -> int:
    value = await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT committed_line FROM contacts.imports WHERE workspace_id = $1 AND import_key = $2",
        uuid.UUID(ws.id),
        KEY,
    )
    return int(value or 0)  # type: ignore[call-overload]


async def test_import_killed_mid_stream_resumes_without_duplicates_or_double_events(
    processes: list[Contacts], tmp_path: Path
) -> None:
    admin = secrets.token_urlsafe(24)
    first = Contacts(tmp_path, admin)
    processes.append(first)
    async with grpc.aio.insecure_channel(first.address) as channel:
        created = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(
                name="Kill shop", slug=f"kill-{uuid.uuid4().hex[:8]}"
            ),
            metadata=(("authorization", f"Admin {admin}"),),
        )
    ws = Workspace(id=created.workspace_id, api_key=created.api_key)
    data = the_file()
    options = imports_pb2.ImportOptions(format=imports_pb2.IMPORT_FORMAT_CSV, import_key=KEY)

    # The first call sends two thirds of the file and then holds the stream open: the
    # process dies while the import is in the middle of its file, whatever the timing.
    async def two_thirds() -> AsyncIterator[imports_pb2.ImportContactsRequest]:
        async for request in requests(options, data[: len(data) * 2 // 3], chunk=4096):
            yield request
        await asyncio.Event().wait()

    async with grpc.aio.insecure_channel(first.address) as channel:
        call = imports_pb2_grpc.ImportServiceStub(channel).ImportContacts(
            two_thirds(), metadata=ws.metadata
        )
        task = asyncio.ensure_future(call)
        await eventually(lambda: committed_line(ws), timeout=60)
        first.kill()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await task
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    landed = await committed_line(ws)
    count_after_kill = await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT count(*) FROM contacts.contacts WHERE workspace_id = $1",
        uuid.UUID(ws.id),
    )
    assert 0 < landed < ROWS + 1, landed  # some batches committed, not all
    assert isinstance(count_after_kill, int) and 0 < count_after_kill < ROWS
    assert count_after_kill % BATCH == 0  # whole batches, nothing half-written

    second = Contacts(tmp_path, admin)
    processes.append(second)
    async with grpc.aio.insecure_channel(second.address) as channel:
        summary = await imports_pb2_grpc.ImportServiceStub(channel).ImportContacts(
            requests(options, data, chunk=65_536), metadata=ws.metadata
        )
    assert summary.resumed and summary.state == imports_pb2.IMPORT_STATE_COMPLETED
    assert (summary.rows, summary.created, summary.updated, summary.rejected) == (ROWS, ROWS, 0, 0)
    db = os.environ["DATABASE_URL"]
    ids = [
        str(r)
        for r in await fetchval(  # type: ignore[union-attr]
            db,
            "SELECT array_agg(id) FROM contacts.contacts WHERE workspace_id = $1",
            uuid.UUID(ws.id),
        )
    ]
    assert len(ids) == ROWS
    await eventually(
        lambda: fetchval(
            db,
            "SELECT NOT EXISTS (SELECT 1 FROM contacts.outbox WHERE key = ANY($1))",
            [i.encode() for i in ids],
        ),
        timeout=120,
    )
    events = await events_by_contact(os.environ["KAFKA_BOOTSTRAP_SERVERS"], ws.id, ids)
    created_ids = {
        contact_id: {e.event_id for e in envs if e.WhichOneof("payload") == "contact_created"}
        for contact_id, envs in events.items()
    }
    assert set(created_ids) == set(ids)
    assert all(len(event_ids) == 1 for event_ids in created_ids.values())
    assert all(
        e.WhichOneof("payload") == "contact_created" for envs in events.values() for e in envs
    )
