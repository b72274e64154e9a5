"""Trigger engine workers as child processes, for the tests that kill them (test_kill.py,
test_scale_out.py), and the checks those tests share: every run took each of its steps once,
and each of its mails reached delivery.requests.v1 under its one deterministic message id.

How a kill is landed mid-stream whatever the machine's speed: :class:`TableLock` takes an
EXCLUSIVE lock on ``triggers.run_steps``, which every transaction of the engine that takes a
step writes (an event starting a run, a timer advancing one). The workers then block inside
those transactions (the event's claim and the timer's DELETE written, nothing committed);
:func:`blocked_on` says when they do. SIGKILL then, release, restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from nudge.delivery.v1 import delivery_pb2

from services.triggers.domain.engine import RunState, effect_id
from tests.integration.conftest import wait_grpc_serving
from tests.support import fetchval, free_port


class Worker:
    """``python -m services.triggers`` as a child process, in consumer group ``app_id``."""

    def __init__(self, log_path: Path, app_id: str, data_dir: Path) -> None:
        self.log_path = log_path
        self.app_id = app_id
        self.data_dir = data_dir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "TRIGGERS_GRPC_PORT": str(self.port),
            "TRIGGERS_APP_ID": self.app_id,
            "TRIGGERS_DATA_DIR": str(self.data_dir),
            "TRIGGERS_LIVE_WORKFLOWS_TTL_S": "0.5",
            "NUDGE_LOG_FORMAT": "text",
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.triggers"], env=env, stdout=log, stderr=log
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no commit, no goodbye, no leave-group."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    async def ready(self) -> None:
        """Serving gRPC: migrated, relays and timer loop running, the Faust worker started."""
        await wait_grpc_serving(f"127.0.0.1:{self.port}", timeout=120)


class TableLock:
    """An EXCLUSIVE lock on a table, held in an open transaction until released: readers go
    on, every writer waits."""

    def __init__(self, conn: asyncpg.Connection, tx: asyncpg.transaction.Transaction) -> None:
        self._conn = conn
        self._tx = tx

    @classmethod
    async def take(cls, database_url: str, table: str) -> TableLock:
        conn = await asyncpg.connect(database_url)
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        return cls(conn, tx)

    async def release(self) -> None:
        if not self._conn.is_closed():
            await self._tx.rollback()
            await self._conn.close()


async def blocked_on(database_url: str, table: str) -> int:
    """How many sessions wait for a lock on ``table``."""
    return int(
        await fetchval(  # type: ignore[arg-type]
            database_url,
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = $1::regclass",
            table,
        )
    )


async def group_members(bootstrap: str, group_id: str) -> int:
    """Members of the consumer group that hold an assignment (a stable group's size)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_consumer_groups([group_id])
        groups = described.groups if hasattr(described, "groups") else described
        total = 0
        for group in groups:
            state = group[2] if isinstance(group, tuple) else group.state
            members = group[5] if isinstance(group, tuple) else group.members
            if state == "Stable":
                total += len(members)
        return total
    finally:
        await admin.close()


async def count(database_url: str, query: str, *args: object) -> int:
    return int(await fetchval(database_url, query, *args))  # type: ignore[call-overload]


async def runs_of(database_url: str, workspace_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(
            await conn.fetch(
                "SELECT id::text AS id, contact_id::text AS contact_id, state, end_reason,"
                " ended_at FROM triggers.runs WHERE workspace_id = $1::uuid",
                workspace_id,
            )
        )
    finally:
        await conn.close()


async def steps_by_run(database_url: str, workspace_id: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT run_id::text AS run_id, step_id, iteration, outcome FROM triggers.run_steps"
            " WHERE workspace_id = $1::uuid ORDER BY run_id, at, step_id",
            workspace_id,
        )
    finally:
        await conn.close()
    steps: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        steps[row["run_id"]].append(f"{row['step_id']}#{row['iteration']}:{row['outcome']}")
    return steps


def expected_message_ids(
    workspace_id: str, runs: list[asyncpg.Record], steps: list[str]
) -> dict[str, str]:
    """message id -> run id: the id each Send step of each run must carry (engine.effect_id,
    iteration 0), whoever took the step and however often it was replayed."""
    expected = {}
    for run in runs:
        state = RunState(
            run_id=run["id"],
            workspace_id=workspace_id,
            contact_id=run["contact_id"],
            started_at=run["ended_at"],
            position=None,
        )
        for step in steps:
            expected[effect_id(state, step, 0)] = run["id"]
    return expected


def duplicates_differ(requests: list[delivery_pb2.DeliveryRequested]) -> list[str]:
    """Message ids whose copies on the topic are not the same request (a replay must ask for
    the same mail, to the same contact, with the same content)."""
    first: dict[str, bytes] = {}
    differ = []
    for request in requests:
        body = request.SerializeToString(deterministic=True)
        if first.setdefault(request.message_id, body) != body:
            differ.append(request.message_id)
    return differ


def new_workspace() -> str:
    return str(uuid.uuid4())


async def wait_all(*probes: asyncio.Future[object]) -> None:
    await asyncio.gather(*probes)
