"""How many mails a second delivery hands to the SMTP sink, from delivery.requests.v1.

    .venv/bin/python bench/delivery.py [--scale N] [--no-tracking] [--profile] [--spans]

Starts the local stack (PostgreSQL, Redis, Kafka, the aiosmtpd sink) and the contacts and
delivery services as processes (bench/_system.py), imports N contacts with marketing consent
in one ImportContacts call, then publishes N ``DeliveryRequested`` (campaign mail, one per
contact, keyed by contact as campaigns does) to delivery.requests.v1 in one burst and waits
until every mail is in the sink and every message is SENT in delivery's ledger. Reports:
- ``mails_per_s``: from the first mail in the sink to the last (the steady rate);
- ``end_to_end_per_s``: from the first publish to the last mail;
- ``latency_p50_ms`` / ``p99``: each message's publish to its receipt by the sink (the
  sink's ``X-Nudge-Received-At``), which under a burst is mostly queueing;
- ``ledger_sent`` and ``duplicates`` (mails in the sink beyond one per message);
- ``delivery_cpu_ms_per_mail`` / ``contacts_cpu_ms_per_mail``: CPU time of each process per
  mail, from the first publish to the last mail: on a machine shared with other work
  (``load_average_1m``) the rate is what the cores allow, the CPU per mail what the code
  costs (1000 / it is one process's ceiling on a core of its own).

``--no-tracking`` turns the open pixel and tracked links off (DELIVERY_TRACK_OPENS_AND_CLICKS).
``--spans`` has the services write their traces to files (``NUDGE_TRACES_DIR``) and sums
the wall time of each traced step (consumer record, eligibility RPC, SMTP hand-off...).
``--profile`` samples the delivery process with py-spy during the send (install it in the
venv: ``pip install py-spy``) and prints the functions where it spends its time.

The sink (deploy/local/smtp_sink.py) writes one Maildir file per mail and accepts ~550
mails/s on this machine: a faster delivery is capped by it, not measured.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from _system import percentile, running_system
from aiokafka import AIOKafkaProducer
from contacts_import import ready
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc, imports_pb2, imports_pb2_grpc
from nudge.delivery.v1 import delivery_pb2

from services.common.events import new_envelope
from services.common.topics import DELIVERY_REQUESTS

SENT = 2  # services/delivery/domain/ledger.py
DOMAINS = 8


def contacts_csv(scale: int) -> bytes:
    lines = ["email,first_name,newsletter"]
    lines += [f"b{i}@d{i % DOMAINS}.bench.example,Bench{i},yes" for i in range(scale)]
    return ("\n".join(lines) + "\n").encode()


async def import_contacts(env: dict[str, str], scale: int) -> tuple[str, dict[str, str]]:
    """A workspace and its N contacts, each with marketing consent: workspace id and contact
    id -> e-mail."""
    async with grpc.aio.insecure_channel(env["NUDGE_CONTACTS_ADDR"]) as channel:
        created = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Bench shop", slug="bench-delivery"),
            metadata=(("authorization", f"Admin {env['NUDGE_ADMIN_TOKEN']}"),),
        )
        metadata = (("authorization", f"Bearer {created.api_key}"),)
        data = contacts_csv(scale)

        async def requests() -> Any:
            yield imports_pb2.ImportContactsRequest(
                options=imports_pb2.ImportOptions(
                    format=imports_pb2.IMPORT_FORMAT_CSV,
                    consent_columns=[
                        imports_pb2.ConsentColumn(
                            column="newsletter",
                            purpose=contacts_pb2.CONSENT_PURPOSE_MARKETING,
                            wording="Send me the newsletter",
                        )
                    ],
                    import_key="bench-delivery",
                    file_name="bench.csv",
                )
            )
            for start in range(0, len(data), 512 * 1024):
                yield imports_pb2.ImportContactsRequest(chunk=data[start : start + 512 * 1024])

        await imports_pb2_grpc.ImportServiceStub(channel).ImportContacts(
            requests(), metadata=metadata
        )
    db = await asyncpg.connect(env["DATABASE_URL"])
    try:
        rows = await db.fetch(
            "SELECT id, email FROM contacts.contacts WHERE workspace_id = $1",
            uuid.UUID(created.workspace_id),
        )
    finally:
        await db.close()
    if len(rows) != scale:
        raise RuntimeError(f"imported {len(rows)} contacts of {scale}")
    return created.workspace_id, {str(r["id"]): r["email"] for r in rows}


async def publish(
    env: dict[str, str], workspace_id: str, contacts: dict[str, str]
) -> dict[str, float]:
    """One DeliveryRequested per contact, as fast as the producer takes them: message id ->
    when it was handed to the producer (epoch seconds)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], linger_ms=5, max_batch_size=262144
    )
    await producer.start()
    campaign_id = str(uuid.uuid4())
    published: dict[str, float] = {}
    try:
        sends = []
        for contact_id in contacts:
            message_id = str(uuid.uuid4())
            request = delivery_pb2.DeliveryRequested(
                message_id=message_id,
                contact_id=contact_id,
                kind=delivery_pb2.MESSAGE_KIND_CAMPAIGN,
                purpose=contacts_pb2.CONSENT_PURPOSE_MARKETING,
                campaign_id=campaign_id,
                content=delivery_pb2.MessageContent(
                    subject="Our spring collection, {{ contact.first_name }}",
                    body_text="Hello {{ contact.first_name }},\n\nthe new collection is here.\n",
                    body_html="<p>Hello {{ contact.first_name }},</p><p>the new collection.</p>",
                ),
            )
            envelope = new_envelope(workspace_id, request, event_id=message_id)
            published[message_id] = time.time()
            sends.append(
                await producer.send(
                    DELIVERY_REQUESTS, envelope.SerializeToString(), key=contact_id.encode()
                )
            )
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return published


def maildir_count(maildir: Path) -> int:
    try:
        return len(os.listdir(maildir / "new"))
    except FileNotFoundError:
        return 0


def received(maildir: Path) -> list[tuple[str, float]]:
    """(message id, received at) of every mail in the sink, from the headers alone."""
    parser = BytesHeaderParser()
    found = []
    for name in os.listdir(maildir / "new"):
        with open(maildir / "new" / name, "rb") as f:
            headers = parser.parse(f)
        found.append(
            (
                str(headers["X-Nudge-Message-Id"]),
                datetime.fromisoformat(str(headers["X-Nudge-Received-At"])).timestamp(),
            )
        )
    return found


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used: unlike wall time, hardly changed by
    other processes competing for the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_profile(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: no profile", file=sys.stderr)
        return None
    return subprocess.Popen(
        [
            *(py_spy, "record", "--pid", str(pid), "--duration", str(seconds)),
            *("--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def top_of_profile(path: Path, top: int = 25) -> dict[str, list[tuple[str, float]]]:
    """From py-spy's collapsed stacks: the share of samples where each function is on the
    stack (inclusive) and where it is the innermost frame (self)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [
            f.split(" (")[0] + " " + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
            for f in stack.split(";")
        ]
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    share = lambda c: [(f, round(100 * n / max(total, 1), 1)) for f, n in c.most_common(top)]  # noqa: E731
    return {"inclusive_pct": share(inclusive), "self_pct": share(own)}


def span_costs(traces_dir: Path) -> dict[str, dict[str, float]]:
    """Per span name of the delivery and contacts processes: how many, the mean and p50
    duration (ms), and the sum in seconds: the wall time each step takes per message."""
    durations: dict[str, list[float]] = collections.defaultdict(list)
    for path in traces_dir.glob("*.jsonl"):
        service = path.name.split(".")[0]
        for line in path.read_text().splitlines():
            span = json.loads(line)
            name = f"{service}: {span['name']}"
            durations[name].append((span["end_ns"] - span["start_ns"]) / 1e6)
    return {
        name: {
            "count": len(ms),
            "mean_ms": round(sum(ms) / len(ms), 2),
            "p50_ms": round(percentile(ms, 50), 2),
            "total_s": round(sum(ms) / 1000, 1),
        }
        for name, ms in sorted(durations.items(), key=lambda item: -sum(item[1]))
    }


async def main(scale: int, tracking: bool, profile: bool, spans: bool) -> dict[str, Any]:
    services = ("contacts", "delivery")
    os.environ["DELIVERY_TRACK_OPENS_AND_CLICKS"] = "true" if tracking else "false"
    traces_dir = Path(tempfile.mkdtemp(prefix="nudge-bench-spans-"))
    if spans:
        os.environ["NUDGE_TRACES_DIR"] = str(traces_dir)
    with running_system(services=services, ready=ready(services)) as system:
        env = system.env
        maildir = Path(env["NUDGE_MAILDIR"])
        workspace_id, contacts = await import_contacts(env, scale)
        before = maildir_count(maildir)
        delivery_pid = system.group._services["delivery"].child.pid  # type: ignore[union-attr]
        contacts_pid = system.group._services["contacts"].child.pid  # type: ignore[union-attr]
        cpu_before = {"delivery": cpu_s(delivery_pid), "contacts": cpu_s(contacts_pid)}
        profiler = None
        profile_out = Path(tempfile.mkdtemp(prefix="nudge-profile-")) / "delivery.txt"
        started = time.time()
        published = await publish(env, workspace_id, contacts)
        published_s = time.time() - started
        if profile:
            profiler = start_profile(delivery_pid, 20, profile_out)
        deadline = time.monotonic() + max(120, scale / 10)
        while maildir_count(maildir) - before < scale:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{maildir_count(maildir) - before} mails of {scale}")
            await asyncio.sleep(0.2)
        cpu_ms = {
            "delivery": (cpu_s(delivery_pid) - cpu_before["delivery"]) * 1000 / scale,
            "contacts": (cpu_s(contacts_pid) - cpu_before["contacts"]) * 1000 / scale,
        }
        db = await asyncpg.connect(env["DATABASE_URL"])
        try:
            while True:
                ledger_sent = await db.fetchval(
                    "SELECT count(*) FROM delivery.messages WHERE workspace_id = $1"
                    " AND status = $2",
                    uuid.UUID(workspace_id),
                    SENT,
                )
                if ledger_sent >= scale or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        finally:
            await db.close()
        mails = [(m, t) for m, t in received(maildir) if m in published]
        times = sorted(t for _, t in mails)
        latencies = [(t - published[m]) * 1000 for m, t in mails]
        figures: dict[str, Any] = {
            "tracking": tracking,
            "kafka_kind": env["NUDGE_KAFKA_KIND"],
            "scale": scale,
            "published_per_s": round(scale / published_s),
            "mails_per_s": round((len(times) - 1) / (times[-1] - times[0]), 1),
            "end_to_end_per_s": round(len(times) / (times[-1] - started), 1),
            "latency_p50_ms": round(percentile(latencies, 50), 1),
            "latency_p99_ms": round(percentile(latencies, 99), 1),
            "ledger_sent": ledger_sent,
            "mails": len(mails),
            "duplicates": len(mails) - len({m for m, _ in mails}),
            # The ceiling of one delivery process on a core of its own.
            "delivery_cpu_ms_per_mail": round(cpu_ms["delivery"], 2),
            "contacts_cpu_ms_per_mail": round(cpu_ms["contacts"], 2),
            "load_average_1m": round(os.getloadavg()[0], 1),
        }
        if spans:
            await asyncio.sleep(6)  # the span processors export in batches
            figures["spans"] = span_costs(traces_dir)
        if profiler is not None:
            profiler.wait(timeout=60)
            if profile_out.exists():
                figures["profile"] = top_of_profile(profile_out)
        return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20_000, help="messages (and contacts)")
    parser.add_argument(
        "--no-tracking", action="store_true", help="no open pixel, no tracked links"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the delivery process")
    parser.add_argument("--spans", action="store_true", help="time each traced step")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.scale, not args.no_tracking, args.profile, args.spans))))
