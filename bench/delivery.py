"""How many mails a second delivery hands to the SMTP sink, from delivery.requests.v1.

    .venv/bin/python bench/delivery.py [--scale N] [--track] [--dkim] [--sink maildir|mailpit]
                                       [--processes N] [--profile] [--spans]

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
- ``claim_groups`` / ``outcome_groups``: how many groups the claims and the outcomes were
  written in (services/delivery/writes.py; N when written one by one);
- ``delivery_cpu_ms_per_mail`` / ``contacts_cpu_ms_per_mail``: CPU time of each process per
  mail, from the first publish to the last mail: on a machine shared with other work
  (``load_average_1m``) the rate is what the cores allow, the CPU per mail what the code
  costs (1000 / it is one process's ceiling on a core of its own).

``--track`` turns the open pixel and tracked links on (DELIVERY_TRACK_OPENS_AND_CLICKS; off
by default, ``--no-tracking`` is accepted for older command lines). ``--dkim`` sets a DKIM
key for the sending domain with the SetDkimKey RPC before the send, so every mail is signed
(``dkim_signed`` counts the mails in the sink with a DKIM-Signature). ``--processes N`` runs
N delivery processes in one consumer group (delivery.requests.v1 has 4 partitions); the CPU
per mail is then the sum over them. ``--sink mailpit`` hands the mail to Mailpit
(``mailpit`` on PATH or /root/go/bin/mailpit, in memory, counted through its API) rather
than the project's sink.
``--spans`` has the services write their traces to files (``NUDGE_TRACES_DIR``) and sums
the wall time of each traced step (consumer record, eligibility RPC, SMTP hand-off...).
``--profile`` samples the delivery process with py-spy during the send (install it in the
venv: ``pip install py-spy``) and prints the functions where it spends its time.

The default sink (deploy/local/smtp_sink.py) writes one Maildir file per mail and accepts
~550 mails/s on this machine: a faster delivery is capped by it, not measured; Mailpit
took ~1,350 mails/s.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
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
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc

from services.common.events import new_envelope
from services.common.topics import DELIVERY_REQUESTS

SENT = 2  # services/delivery/domain/ledger.py
DOMAINS = 8


def contacts_csv(scale: int) -> bytes:
    lines = ["email,first_name,newsletter"]
    lines += [f"b{i}@d{i % DOMAINS}.bench.example,Bench{i},yes" for i in range(scale)]
    return ("\n".join(lines) + "\n").encode()


async def import_contacts(env: dict[str, str], scale: int) -> tuple[str, str, dict[str, str]]:
    """A workspace and its N contacts, each with marketing consent: workspace id, its API
    key, and contact id -> e-mail."""
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
    return created.workspace_id, created.api_key, {str(r["id"]): r["email"] for r in rows}


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


class MaildirSink:
    """The project's sink (deploy/local/smtp_sink.py), started by the local stack."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir

    def count(self) -> int:
        try:
            return len(os.listdir(self.maildir / "new"))
        except FileNotFoundError:
            return 0

    def received(self) -> list[tuple[str, float, bool]]:
        """(message id, received at, DKIM-signed) of every mail, from the headers alone."""
        parser = BytesHeaderParser()
        found = []
        for name in os.listdir(self.maildir / "new"):
            with open(self.maildir / "new" / name, "rb") as f:
                headers = parser.parse(f)
            found.append(
                (
                    str(headers["X-Nudge-Message-Id"]),
                    datetime.fromisoformat(str(headers["X-Nudge-Received-At"])).timestamp(),
                    "DKIM-Signature" in headers,
                )
            )
        return found


def mailpit_binary() -> str | None:
    found = shutil.which("mailpit")
    if found is None and Path("/root/go/bin/mailpit").exists():
        found = "/root/go/bin/mailpit"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MailpitSink:
    """Mailpit (in memory, no message limit) on free ports, read through its HTTP API."""

    def __init__(self, binary: str, log: Path) -> None:
        self.smtp_port, self.http_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.http_port}/api/v1"
        self.process = subprocess.Popen(
            [
                binary,
                *("--smtp", f"127.0.0.1:{self.smtp_port}"),
                *("--listen", f"127.0.0.1:{self.http_port}"),
                *("--max", "0", "--quiet", "--smtp-auth-accept-any"),
                "--smtp-auth-allow-insecure",
                "--disable-version-check",
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.count()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"mailpit did not start (see {log})") from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.smtp_port}"

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.api + path, timeout=30) as answer:
            return json.load(answer)

    def count(self) -> int:
        return int(self._get("/messages?limit=1")["total"])

    def received(self) -> list[tuple[str, float, bool]]:
        """(message id, received at, DKIM-signed): Mailpit lists the Message-ID header
        (``<message id>@<domain>``) and when it took the mail; signed is read from the
        first mail's headers only (one request per mail would take minutes)."""
        found = []
        start = 0
        first_id = ""
        while True:
            page = self._get(f"/messages?start={start}&limit=5000")["messages"]
            for m in page:
                first_id = first_id or m["ID"]
                created = datetime.fromisoformat(m["Created"].replace("Z", "+00:00"))
                found.append((m["MessageID"].partition("@")[0], created.timestamp(), False))
            if len(page) < 5000:
                break
            start += len(page)
        if first_id:
            signed = "DKIM-Signature" in self._get(f"/message/{first_id}/headers")
            found = [(m, t, signed) for m, t, _ in found]
        return found

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


async def set_dkim_key(env: dict[str, str], api_key: str) -> str:
    """A DKIM key for the domain of delivery's From address, through the RPC: every mail of
    the bench is then signed. Returns the domain."""
    domain = env.get("DELIVERY_FROM_ADDRESS", "no-reply@nudge.localhost").rpartition("@")[2]
    async with grpc.aio.insecure_channel(env["NUDGE_DELIVERY_ADDR"]) as channel:
        await delivery_pb2_grpc.DeliveryServiceStub(channel).SetDkimKey(
            delivery_pb2.SetDkimKeyRequest(domain=domain, selector="bench"),
            metadata=(("authorization", f"Bearer {api_key}"),),
        )
    return domain


def start_delivery(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """One more delivery process in the same consumer group, on a port of its own; returns
    once the group gave it partitions of delivery.requests.v1 (it logs the assignment)."""
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "services.delivery"],
        env={
            **env,
            "DELIVERY_GRPC_PORT": str(port),
            "NUDGE_LOG_LEVEL": "INFO",
            "NUDGE_LOG_FORMAT": "text",
        },
        cwd=Path(__file__).resolve().parents[1],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not any(
        "assigned" in line and DELIVERY_REQUESTS in line
        for line in log.read_text(errors="replace").splitlines()
    ):
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the extra delivery process did not start (see {log})")
        time.sleep(0.2)
    return child


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


async def main(
    scale: int,
    tracking: bool,
    profile: bool,
    spans: bool,
    *,
    dkim: bool = False,
    sink_kind: str = "maildir",
    processes: int = 1,
) -> dict[str, Any]:
    services = ("contacts", "delivery")
    os.environ["DELIVERY_TRACK_OPENS_AND_CLICKS"] = "true" if tracking else "false"
    traces_dir = Path(tempfile.mkdtemp(prefix="nudge-bench-spans-"))
    logs = Path(tempfile.mkdtemp(prefix="nudge-bench-delivery-"))
    if spans:
        os.environ["NUDGE_TRACES_DIR"] = str(traces_dir)
    mailpit: MailpitSink | None = None
    if sink_kind == "mailpit":
        binary = mailpit_binary()
        if binary is None:
            raise SystemExit("--sink mailpit: no mailpit on PATH nor /root/go/bin/mailpit")
        mailpit = MailpitSink(binary, logs / "mailpit.log")
        os.environ["SMTP_URL"] = mailpit.url  # the stack then starts no sink of its own
    extra: list[subprocess.Popen[bytes]] = []
    try:
        with running_system(services=services, ready=ready(services)) as system:
            env = system.env
            sink: MaildirSink | MailpitSink = mailpit or MaildirSink(Path(env["NUDGE_MAILDIR"]))
            workspace_id, api_key, contacts = await import_contacts(env, scale)
            if dkim:
                await set_dkim_key(env, api_key)
            for n in range(processes - 1):
                extra.append(start_delivery(env, logs / f"delivery-{n + 2}.log"))
            before = sink.count()
            delivery_pid = system.group._services["delivery"].child.pid  # type: ignore[union-attr]
            contacts_pid = system.group._services["contacts"].child.pid  # type: ignore[union-attr]
            delivery_pids = [delivery_pid, *(p.pid for p in extra)]
            cpu_before = {
                "delivery": sum(cpu_s(pid) for pid in delivery_pids),
                "contacts": cpu_s(contacts_pid),
            }
            profiler = None
            profile_out = Path(tempfile.mkdtemp(prefix="nudge-profile-")) / "delivery.txt"
            started = time.time()
            published = await publish(env, workspace_id, contacts)
            published_s = time.time() - started
            if profile:
                profiler = start_profile(delivery_pid, 20, profile_out)
            deadline = time.monotonic() + max(120, scale / 10)
            while sink.count() - before < scale:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{sink.count() - before} mails of {scale}")
                await asyncio.sleep(0.2)
            cpu_delivery = sum(cpu_s(pid) for pid in delivery_pids) - cpu_before["delivery"]
            cpu_ms = {
                "delivery": cpu_delivery * 1000 / scale,
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
                # A group of claims (of outcomes) is written with one clock reading: the
                # distinct times are the groups (one per mail when written one by one).
                groups = await db.fetchrow(
                    "SELECT count(DISTINCT claimed_at) AS claims,"
                    " count(DISTINCT updated_at) AS outcomes"
                    " FROM delivery.messages WHERE workspace_id = $1",
                    uuid.UUID(workspace_id),
                )
            finally:
                await db.close()
            mails = [(m, t, signed) for m, t, signed in sink.received() if m in published]
            times = sorted(t for _, t, _ in mails)
            latencies = [(t - published[m]) * 1000 for m, t, _ in mails]
            figures: dict[str, Any] = {
                "tracking": tracking,
                "dkim": dkim,
                "sink": sink_kind,
                "delivery_processes": processes,
                "kafka_kind": env["NUDGE_KAFKA_KIND"],
                "scale": scale,
                "published_per_s": round(scale / published_s),
                "mails_per_s": round((len(times) - 1) / (times[-1] - times[0]), 1),
                "end_to_end_per_s": round(len(times) / (times[-1] - started), 1),
                "latency_p50_ms": round(percentile(latencies, 50), 1),
                "latency_p99_ms": round(percentile(latencies, 99), 1),
                "ledger_sent": ledger_sent,
                "mails": len(mails),
                "duplicates": len(mails) - len({m for m, _, _ in mails}),
                "dkim_signed": sum(1 for _, _, signed in mails if signed),
                "claim_groups": groups["claims"],
                "outcome_groups": groups["outcomes"],
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
    finally:
        for child in extra:
            child.terminate()
            child.wait(timeout=30)
        if mailpit is not None:
            mailpit.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20_000, help="messages (and contacts)")
    parser.add_argument("--track", action="store_true", help="open pixel and tracked links")
    parser.add_argument("--no-tracking", action="store_true", help="the default (older runs)")
    parser.add_argument("--dkim", action="store_true", help="a DKIM key: every mail signed")
    parser.add_argument("--sink", choices=("maildir", "mailpit"), default="maildir")
    parser.add_argument("--processes", type=int, default=1, help="delivery processes")
    parser.add_argument("--profile", action="store_true", help="py-spy the delivery process")
    parser.add_argument("--spans", action="store_true", help="time each traced step")
    args = parser.parse_args()
    figures = asyncio.run(
        main(
            args.scale,
            args.track and not args.no_tracking,
            args.profile,
            args.spans,
            dkim=args.dkim,
            sink_kind=args.sink,
            processes=args.processes,
        )
    )
    print(json.dumps(figures))
