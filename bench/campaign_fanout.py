"""A campaign's fan-out at scale: from SENDING to every record on delivery.requests.v1.

    .venv/bin/python bench/campaign_fanout.py [--scale N] [--batch B] [--profile [SERVICE]]
        [--pg-split]

Starts PostgreSQL, Redis and Kafka (the local stack on free ports, durable PostgreSQL
settings as ``make run``) and the contacts, segmentation and campaigns services as
processes (bench/_system.py), creates a workspace, loads ``--scale`` VIP profiles into
segmentation's read model with COPY, writes a draft campaign on the built-in "vip" segment
and moves it to SENDING (as SendCampaign does). It then times, from that commit:

- ``seconds``: until the campaign is SENT (the fan-out's last checkpoint and transition);
- ``recipients_per_s``: ``--scale`` / ``seconds``;
- ``records``: the records on delivery.requests.v1 (the sum of its end offsets: the topic is
  new, so every record is this campaign's; more than ``--scale`` would mean replays);
- ``cpu_s``: CPU seconds used meanwhile by each service process and by the whole machine
  (``machine_busy``: the share of both cores busy), to tell what limits the rate;
- ``stream_contacts_per_s``: segmentation's StreamMembers of the same segment alone, the
  audience's ceiling.

``--profile`` records the campaigns process with py-spy (``.venv/bin/pip install py-spy``)
and prints its hottest functions; ``--profile contacts`` (or ``segmentation``) records that
service instead. ``--pg-split`` logs every statement's duration in PostgreSQL and adds
``pg_cpu_s`` (PostgreSQL's CPU by process: each service's backends, checkpointer, WAL
writer, autovacuum) and ``pg_statements`` (the costliest statements). The last line is one
JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402
import grpc  # noqa: E402
from _system import running_system  # noqa: E402
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc  # noqa: E402
from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc  # noqa: E402

from services.common.auth import internal_metadata  # noqa: E402

SERVICES = ("contacts", "segmentation", "campaigns")


def cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int | None) -> float:
    """CPU seconds of ``pid`` and its children (a service may run helpers)."""
    if pid is None:
        return 0.0
    total = cpu_s(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += tree_cpu_s(int(child))
    return total


def listening_pid(port: int) -> int | None:
    """The process listening on ``port`` (its socket's inode in /proc/net/tcp, or tcp6 for
    a socket on every address as Java's Kafka opens it, then the process holding that
    inode)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inode = fields[9]
                break
        if inode is not None:
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == target:
                    return int(proc.name)
    return None


def infra_pids(env: dict[str, str]) -> dict[str, int | None]:
    """PostgreSQL's postmaster (its backends are its children) and the Kafka broker."""
    from urllib.parse import urlsplit

    pg_port = urlsplit(env["DATABASE_URL"]).port
    kafka_port = int(env["KAFKA_BOOTSTRAP_SERVERS"].split(",")[0].rsplit(":", 1)[1])
    return {
        "postgres": listening_pid(pg_port) if pg_port else None,
        "kafka": listening_pid(kafka_port),
    }


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of every core since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def ready(env: dict[str, str]) -> None:
    from services.common.healthcheck import check_grpc

    deadline = time.monotonic() + 180
    for name in SERVICES:
        address = env[f"NUDGE_{name.upper()}_ADDR"]
        while check_grpc(address, "", timeout=1) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become healthy")
            time.sleep(0.3)


async def new_workspace(env: dict[str, str], slug: str = "bench-fanout") -> str:
    async with grpc.aio.insecure_channel(env["NUDGE_CONTACTS_ADDR"]) as channel:
        created = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Bench shop", slug=slug),
            metadata=(("authorization", f"Admin {env['NUDGE_ADMIN_TOKEN']}"),),
        )
    return str(created.workspace_id)


TARGETED_MESSAGES = contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES
GRANTED = contacts_pb2.CONSENT_STATUS_GRANTED


async def load_profiles(database_url: str, workspace_id: str, scale: int) -> float:
    """``scale`` VIP profiles in segmentation's read model and as consenting contacts in
    contacts, with COPY; seconds taken."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    ws = uuid.UUID(workspace_id)
    conn = await asyncpg.connect(database_url)
    try:
        chunk = 100_000
        for start in range(0, scale, chunk):
            rows = [
                (ws, uuid.uuid4(), f"bench{n}@example.com", True, now, now)
                for n in range(start, min(scale, start + chunk))
            ]
            await conn.copy_records_to_table(
                "profiles",
                schema_name="segmentation",
                records=rows,
                columns=("workspace_id", "contact_id", "email", "vip", "created_at", "updated_at"),
            )
            # The same people in contacts, consenting to targeted messages: the audience asks
            # contacts whether each may be mailed.
            await conn.copy_records_to_table(
                "contacts",
                schema_name="contacts",
                records=[(w, c, e, v, t, u) for w, c, e, v, t, u in rows],
                columns=("workspace_id", "id", "email", "vip", "created_at", "updated_at"),
            )
            await conn.copy_records_to_table(
                "consents",
                schema_name="contacts",
                records=[(w, c, TARGETED_MESSAGES, GRANTED, t) for w, c, _, _, t, _ in rows],
                columns=("workspace_id", "contact_id", "purpose", "status", "updated_at"),
            )
        await conn.execute("VACUUM (ANALYZE) segmentation.profiles")
        await conn.execute("VACUUM (ANALYZE) contacts.contacts")
        await conn.execute("VACUUM (ANALYZE) contacts.consents")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def new_campaign(database_url: str, workspace_id: str) -> uuid.UUID:
    campaign_id = uuid.uuid4()
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "campaigns"})
    try:
        await conn.execute(
            "INSERT INTO campaigns (id, workspace_id, name, segment_ids, subject, body_text,"
            " body_html, status, created_at, updated_at, reply_to)"
            " VALUES ($1, $2, 'Bench', '{vip}', 'Spring tea, {{ contact.first_name }}', $3,"
            " $4, 1, $5, $5, 'manager@example.com')",
            campaign_id,
            uuid.UUID(workspace_id),
            "Hello {{ contact.first_name }},\nnew tea has arrived.\nCome and taste it.\nAda",
            "<p>Hello {{ contact.first_name }},</p><p>new tea has arrived.</p>",
            datetime.now(UTC),
        )
    finally:
        await conn.close()
    return campaign_id


async def send_and_wait(
    database_url: str, workspace_id: str, campaign_id: uuid.UUID, timeout: float
) -> float:
    """SENDING now (as SendCampaign does); seconds until the fan-out marks it SENT."""
    from services.campaigns.adapters.postgres import transition
    from services.campaigns.domain.model import Status

    conn = await asyncpg.connect(database_url, server_settings={"search_path": "campaigns"})
    try:
        moved = await transition(
            conn,
            workspace_id,
            campaign_id,
            (Status.DRAFT,),
            Status.SENDING,
            "bench",
            "",
            datetime.now(UTC),
        )
        assert moved is not None
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        while True:
            status = await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id)
            if status == Status.SENT:
                return time.perf_counter() - started
            if status != Status.SENDING or time.monotonic() > deadline:
                raise RuntimeError(f"campaign status {status} after {timeout} s")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def records_on_topic(bootstrap: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from services.common.topics import DELIVERY_REQUESTS

    # Subscribed (no group): the consumer fetches the topic's metadata as it starts.
    consumer = AIOKafkaConsumer(
        DELIVERY_REQUESTS, bootstrap_servers=bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(DELIVERY_REQUESTS, p)
            for p in sorted(consumer.partitions_for_topic(DELIVERY_REQUESTS) or [])
        ]
        assert partitions, "no metadata for the topic"
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        # aiokafka's stop of a group-less consumer may end in a CancelledError of its own
        # committed-offsets task: nothing of ours is lost.
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.stop()


async def stream_rate(env: dict[str, str], workspace_id: str, batch: int) -> float:
    metadata = internal_metadata(env["NUDGE_INTERNAL_TOKEN"], workspace_id)
    async with grpc.aio.insecure_channel(env["NUDGE_SEGMENTATION_ADDR"]) as channel:
        stub = segmentation_pb2_grpc.SegmentServiceStub(channel)
        started = time.perf_counter()
        members = 0
        async for message in stub.StreamMembers(
            segmentation_pb2.StreamMembersRequest(
                target=segmentation_pb2.SegmentTarget(segment_id="vip"), batch_size=batch
            ),
            metadata=metadata,
            timeout=600,
        ):
            members += len(message.members)
        return members / (time.perf_counter() - started)


def top_of_profile(path: Path, top: int = 20) -> list[tuple[str, float]]:
    """Functions by the share of samples they appear in (py-spy's raw format)."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        for frame in set(stack.split(";")):
            counts[frame] = counts.get(frame, 0) + int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [(frame, round(n / max(total, 1), 3)) for frame, n in ranked]


def leaves_of_profile(path: Path, top: int = 20) -> list[tuple[str, float]]:
    """Functions by the share of samples spent in them themselves (the innermost frame)."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        leaf = stack.split(";")[-1]
        counts[leaf] = counts.get(leaf, 0) + int(n)
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [(frame, round(n / max(total, 1), 3)) for frame, n in ranked]


# -- --pg-split: where PostgreSQL's time goes ------------------------------------------------

_DURATION = re.compile(r"duration: ([0-9.]+) ms  (parse|bind|execute) [^:]*: (.*)")


def _socket_owners(pids: dict[str, int | None]) -> dict[str, str]:
    """Socket inode -> the service holding it."""
    owners: dict[str, str] = {}
    for name, pid in pids.items():
        if pid is None:
            continue
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owners[target[8:-1]] = name
    return owners


def pg_roles(postmaster: int, services: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds of PostgreSQL's processes by role: each client backend under the service
    it serves (its client port's socket, /proc/net/tcp), each background process by its
    title, and the exited children (autovacuum workers) from the postmaster's cutime."""
    port_inode: dict[int, str] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        port_inode[int(fields[1].split(":")[1], 16)] = fields[9]
    owners = _socket_owners(services)
    roles: dict[str, float] = {}
    fields = Path(f"/proc/{postmaster}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    roles["postmaster"] = (int(fields[11]) + int(fields[12])) / tick
    roles["exited children"] = (int(fields[13]) + int(fields[14])) / tick
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    for child in children:
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            title = title.removeprefix("postgres: ").strip()
            found = re.search(r"127\.0\.0\.1\((\d+)\)", title)
            if found:
                role = "backend: " + owners.get(port_inode.get(int(found[1]), ""), "other")
            else:
                role = re.sub(r" \d+$", "", title.split("  ")[0])
            roles[role] = roles.get(role, 0.0) + cpu_s(int(child))
    return roles


async def log_every_statement(database_url: str, postmaster: int) -> str:
    """Every statement's duration into PostgreSQL's log from now on; the log's path."""
    conn = await asyncpg.connect(database_url)
    try:
        for setting in (
            "log_min_duration_statement = 0",
            "log_autovacuum_min_duration = 0",
            "log_checkpoints = on",
        ):
            await conn.execute(f"ALTER SYSTEM SET {setting}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()
    return os.readlink(f"/proc/{postmaster}/fd/2")


def statement_split(log: Path, offset: int, top: int = 15) -> list[tuple[str, float, int]]:
    """(statement, seconds, executions) from the log after ``offset``, the costliest first
    (parse, bind and execute together, by the statement's first 110 characters)."""
    totals: dict[str, list[float]] = {}
    with log.open("rb") as f:
        f.seek(offset)
        for raw in f:
            found = _DURATION.search(raw.decode(errors="replace"))
            if not found:
                continue
            key = found[3][:110]
            entry = totals.setdefault(key, [0.0, 0])
            entry[0] += float(found[1]) / 1000
            entry[1] += found[2] == "execute"
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return [(sql, round(s, 2), int(n)) for sql, (s, n) in ranked]


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["CAMPAIGNS_FANOUT_BATCH_SIZE"] = str(args.batch)
    result: dict[str, Any] = {"scale": args.scale, "batch": args.batch}
    with running_system(services=SERVICES, ready=ready) as system:
        env = system.env
        if args.warmup:
            # Another workspace's campaign first: the broker's JVM compiles its produce path
            # and PostgreSQL's caches fill, as on a system that has been running.
            warm = asyncio.run(new_workspace(env, "bench-warmup"))
            asyncio.run(load_profiles(env["DATABASE_URL"], warm, args.warmup))
            warm_campaign = asyncio.run(new_campaign(env["DATABASE_URL"], warm))
            result["warmup_s"] = round(
                asyncio.run(send_and_wait(env["DATABASE_URL"], warm, warm_campaign, args.timeout)),
                2,
            )
        records_before = asyncio.run(records_on_topic(env["KAFKA_BOOTSTRAP_SERVERS"]))
        workspace_id = asyncio.run(new_workspace(env))
        result["load_s"] = round(
            asyncio.run(load_profiles(env["DATABASE_URL"], workspace_id, args.scale)), 1
        )
        result["stream_contacts_per_s"] = round(
            asyncio.run(stream_rate(env, workspace_id, args.batch))
        )
        campaign_id = asyncio.run(new_campaign(env["DATABASE_URL"], workspace_id))
        pids: dict[str, int | None] = {name: system.group.pid(name) for name in SERVICES}
        pids.update(infra_pids(env))
        if args.pg_split:
            pg_log = Path(
                asyncio.run(log_every_statement(env["DATABASE_URL"], pids["postgres"] or 0))
            )
            log_offset = pg_log.stat().st_size
            services = {name: pids[name] for name in SERVICES}
            roles_before = pg_roles(pids["postgres"] or 0, services)
        cpu_before = {name: tree_cpu_s(pid) for name, pid in pids.items()}
        busy_before, total_before = machine_jiffies()
        profiler = None
        profile = Path(tempfile.mkdtemp(prefix="nudge-fanout-")) / f"{args.profile}.txt"
        if args.profile:
            py_spy = Path(sys.executable).parent / "py-spy"
            profiler = subprocess.Popen(
                [
                    *(str(py_spy), "record", "--pid", str(pids[args.profile])),
                    *("--rate", "100", "--format", "raw", "--output", str(profile)),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
        seconds = asyncio.run(
            send_and_wait(env["DATABASE_URL"], workspace_id, campaign_id, args.timeout)
        )
        busy_after, total_after = machine_jiffies()
        result["cpu_s"] = {
            name: round(tree_cpu_s(pid) - cpu_before[name], 1) for name, pid in pids.items()
        }
        if args.pg_split:
            roles_after = pg_roles(pids["postgres"] or 0, services)
            result["pg_cpu_s"] = {
                role: round(cpu - roles_before.get(role, 0.0), 1)
                for role, cpu in sorted(roles_after.items(), key=lambda kv: -kv[1])
                if cpu - roles_before.get(role, 0.0) >= 0.05
            }
            result["pg_statements"] = statement_split(pg_log, log_offset)
        result["machine_busy"] = round(
            (busy_after - busy_before) / max(1, total_after - total_before), 2
        )
        if profiler is not None:
            profiler.send_signal(2)  # SIGINT: py-spy writes what it has
            profiler.wait(timeout=60)
            if profile.exists():
                result["profile_top"] = top_of_profile(profile)
                result["profile_self"] = leaves_of_profile(profile)
        result["seconds"] = round(seconds, 2)
        result["recipients_per_s"] = round(args.scale / seconds)
        sys.stderr.write(json.dumps(result) + "\n")  # the figures, should the count fail
        result["records"] = (
            asyncio.run(records_on_topic(env["KAFKA_BOOTSTRAP_SERVERS"])) - records_before
        )
        result["target_per_s"] = 50_000
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1_000_000, help="recipients")
    parser.add_argument("--batch", type=int, default=2000, help="fan-out batch (max 5000)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for SENT")
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="first fan out a campaign to this many contacts of another workspace, unmeasured",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="campaigns",
        choices=SERVICES,
        help="py-spy a service's process (campaigns when none is named)",
    )
    parser.add_argument(
        "--pg-split",
        action="store_true",
        help="PostgreSQL's CPU by process role and statement time (every statement logged)",
    )
    args = parser.parse_args()
    result = run(args)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
