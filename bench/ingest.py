"""How many shop events the system ingests a second, and that each reaches Kafka once.

    .venv/bin/python bench/ingest.py [--scale N] [--all-services]

Starts the local stack and the services ingestion needs (contacts and the gateway; with
``--all-services`` every service, so that the consumers of shop.events.v1 compete for the
cores too), creates a workspace and 1,000 contacts, then measures, each phase with its own
idempotency keys:
1. ``http_single``: N events, ``POST /v1/events`` one event a request, 32 connections
   (``bench/loadgen``, a small Go client built here when Go is on the machine; otherwise
   a Python client, which takes a good part of a core from the services);
2. ``grpc_single``: N events, ``TrackEvent`` at 32 concurrent calls (Python, one channel);
3. ``http_batch``: 10 N events, ``POST /v1/events:batch`` of 1,000, 4 requests in flight;
4. ``grpc_batch``: 10 N events, ``TrackEvents`` of 1,000, 4 calls in flight.
Then it waits for the outbox to drain, reads shop.events.v1 from the start and compares the
events of the workspace with the keys contacts claimed (every accepted event, in
PostgreSQL): ``topic_missing`` and ``topic_duplicates`` must be 0. The last line is one JSON
object with the figures. The load generator shares the machine with what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
import psutil
from _system import ROOT, percentile, running_system
from aiokafka import AIOKafkaConsumer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc

CONTACTS = 1000
CONCURRENCY = 32
BATCH = 1000
BATCHES_IN_FLIGHT = 4
TOPIC = "shop.events.v1"


def event_json(key: str, contact: int) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "contact": {"email": f"c{contact}@bench.example"},
        "type": "page_viewed",
        "data": {"url": f"https://shop.example/p/{contact}", "product_id": f"p{contact}"},
    }


def event_proto(key: str, contact: int) -> shop_pb2.TrackEventRequest:
    return shop_pb2.TrackEventRequest(
        idempotency_key=key,
        contact=contacts_pb2.ContactRef(email=f"c{contact}@bench.example"),
        event=shop_pb2.ShopEvent(
            page_viewed=shop_pb2.PageViewed(
                url=f"https://shop.example/p/{contact}", product_id=f"p{contact}"
            )
        ),
    )


def build_loadgen() -> Path | None:
    """The Go load generator, built into a temporary directory; None without Go."""
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        return None
    out = Path(tempfile.mkdtemp(prefix="nudge-loadgen-")) / "loadgen"
    subprocess.run([go, "build", "-o", str(out), "."], cwd=ROOT / "bench" / "loadgen", check=True)
    return out


def wait_ready(env: dict[str, str]) -> None:
    """Contacts answers its health check and the gateway answers HTTP."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with grpc.insecure_channel(env["NUDGE_CONTACTS_ADDR"]) as channel:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            gateway = httpx.get(f"{env['NUDGE_GATEWAY_URL']}/openapi.json", timeout=1)
            if answer.status == health_pb2.HealthCheckResponse.SERVING and gateway.is_success:
                return
        except (grpc.RpcError, httpx.HTTPError):
            pass
        time.sleep(0.2)
    raise TimeoutError("contacts and the gateway did not come up")


async def http_single_go(
    loadgen: Path, url: str, api_key: str, prefix: str, count: int
) -> dict[str, Any]:
    body = json.dumps(event_json(f"{prefix}-{{n}}", 0)).replace("c0@", "c{c}@")
    body = body.replace("/p/0", "/p/{c}").replace('"p0"', '"p{c}"')
    process = await asyncio.create_subprocess_exec(
        str(loadgen),
        f"-url={url}/v1/events",
        f"-c={CONCURRENCY}",
        f"-n={count}",
        f"-contacts={CONTACTS}",
        f"-header=Authorization: Bearer {api_key}",
        f"-body={body}",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    figures: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return figures


async def http_single_python(url: str, api_key: str, prefix: str, count: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: collections.Counter[int] = collections.Counter()
    numbers = iter(range(count))
    limits = httpx.Limits(max_connections=CONCURRENCY)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:

        async def worker() -> None:
            for n in numbers:
                sent = time.perf_counter()
                answer = await http.post(
                    "/v1/events", json=event_json(f"{prefix}-{n}", n % CONTACTS)
                )
                latencies.append((time.perf_counter() - sent) * 1000)
                statuses[answer.status_code] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        seconds = time.perf_counter() - started
    return {
        "per_s": count / seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "status": {str(k): v for k, v in statuses.items()},
    }


async def grpc_single(address: str, api_key: str, prefix: str, count: int) -> dict[str, Any]:
    metadata = (("authorization", f"Bearer {api_key}"),)
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    numbers = iter(range(count))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = shop_pb2_grpc.ShopEventServiceStub(channel)

        async def worker() -> None:
            for n in numbers:
                sent = time.perf_counter()
                try:
                    await stub.TrackEvent(
                        event_proto(f"{prefix}-{n}", n % CONTACTS), metadata=metadata, timeout=60
                    )
                except grpc.aio.AioRpcError as err:
                    errors[err.code().name] += 1
                latencies.append((time.perf_counter() - sent) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        seconds = time.perf_counter() - started
    return {
        "per_s": count / seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "errors": dict(errors),
    }


async def http_batch(url: str, api_key: str, prefix: str, count: int) -> dict[str, Any]:
    bodies = [
        json.dumps(
            {
                "events": [
                    event_json(f"{prefix}-{n}", n % CONTACTS)
                    for n in range(start, min(start + BATCH, count))
                ]
            }
        ).encode()
        for start in range(0, count, BATCH)
    ]
    latencies: list[float] = []
    accepted = 0
    queue = iter(bodies)
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:

        async def worker() -> None:
            nonlocal accepted
            for body in queue:
                sent = time.perf_counter()
                answer = await http.post("/v1/events:batch", content=body)
                latencies.append((time.perf_counter() - sent) * 1000)
                answer.raise_for_status()
                accepted += answer.json()["accepted"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(BATCHES_IN_FLIGHT)))
        seconds = time.perf_counter() - started
    return {
        "per_s": count / seconds,
        "batch_p50_ms": percentile(latencies, 50),
        "batch_p99_ms": percentile(latencies, 99),
        "accepted": accepted,
    }


async def grpc_batch(address: str, api_key: str, prefix: str, count: int) -> dict[str, Any]:
    metadata = (("authorization", f"Bearer {api_key}"),)
    requests = [
        shop_pb2.TrackEventsRequest(
            events=[
                event_proto(f"{prefix}-{n}", n % CONTACTS)
                for n in range(start, min(start + BATCH, count))
            ]
        )
        for start in range(0, count, BATCH)
    ]
    latencies: list[float] = []
    accepted = 0
    queue = iter(requests)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = shop_pb2_grpc.ShopEventServiceStub(channel)

        async def worker() -> None:
            nonlocal accepted
            for request in queue:
                sent = time.perf_counter()
                answer = await stub.TrackEvents(request, metadata=metadata, timeout=120)
                latencies.append((time.perf_counter() - sent) * 1000)
                accepted += sum(
                    r.status == shop_pb2.TRACK_EVENT_STATUS_ACCEPTED for r in answer.results
                )

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(BATCHES_IN_FLIGHT)))
        seconds = time.perf_counter() - started
    return {
        "per_s": count / seconds,
        "batch_p50_ms": percentile(latencies, 50),
        "batch_p99_ms": percentile(latencies, 99),
        "accepted": accepted,
    }


class CpuMeter:
    """CPU seconds the services' processes spent, per phase: unlike rates, this hardly
    depends on how busy the shared machine is, so it tells what an event costs."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._last = self._read()

    def _read(self) -> dict[str, float]:
        out = {}
        for name, process in self._processes.items():
            times = process.cpu_times()
            out[name] = times.user + times.system
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child_times = child.cpu_times()
                    out[name] += child_times.user + child_times.system
        return out

    def per_event_us(self, events: int) -> dict[str, float]:
        """CPU microseconds per event of each service since the last call."""
        now = self._read()
        spent = {name: round((now[name] - self._last[name]) / events * 1e6, 1) for name in now}
        self._last = now
        return spent


async def outbox_drained(db: asyncpg.Connection, timeout: float = 600) -> float:
    """Seconds until contacts' outbox is empty (every accepted event handed to Kafka)."""
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while await db.fetchval("SELECT count(*) FROM contacts.outbox"):
        if time.monotonic() > deadline:
            raise TimeoutError("the outbox did not drain")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def topic_check(
    bootstrap: str, workspace_id: str, accepted: set[str], timeout: float = 120
) -> dict[str, int]:
    """Reads shop.events.v1 from the start until every accepted event has been seen (or the
    topic stays quiet), counting the workspace's events by id."""
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=f"bench-ingest-{time.time_ns()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    seen: collections.Counter[str] = collections.Counter()
    try:
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
            if not batches:
                if accepted <= seen.keys() and time.monotonic() - quiet_since > 2:
                    break
                continue
            quiet_since = time.monotonic()
            for records in batches.values():
                for record in records:
                    envelope = Envelope.FromString(record.value)
                    if envelope.workspace_id == workspace_id:
                        seen[envelope.event_id] += 1
    finally:
        await consumer.stop()
    return {
        "topic_events": sum(seen.values()),
        "topic_missing": len(accepted - seen.keys()),
        "topic_duplicates": sum(c - 1 for c in seen.values()),
        "topic_unexpected": len(seen.keys() - accepted),
    }


async def create_contacts(address: str, api_key: str) -> None:
    metadata = (("authorization", f"Bearer {api_key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = contacts_pb2_grpc.ContactServiceStub(channel)
        numbers = iter(range(CONTACTS))

        async def worker() -> None:
            for n in numbers:
                await stub.CreateContact(
                    contacts_pb2.CreateContactRequest(
                        contact=contacts_pb2.Contact(email=f"c{n}@bench.example")
                    ),
                    metadata=metadata,
                )

        await asyncio.gather(*(worker() for _ in range(16)))


async def batch_phases(
    address: str, url: str, api_key: str, count: int, cpu: CpuMeter, db: asyncpg.Connection
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    batch = await http_batch(url, api_key, "hb", count)
    figures["http_batch_events_per_s"] = round(batch["per_s"], 1)
    figures["http_batch_p50_ms"] = round(batch["batch_p50_ms"], 1)
    figures["http_batch_accepted"] = batch["accepted"]
    figures["http_batch_cpu_us_per_event"] = cpu.per_event_us(count)
    figures["relay_lag_after_http_batch_s"] = round(await outbox_drained(db), 2)
    cpu.per_event_us(count)

    batch = await grpc_batch(address, api_key, "gb", count)
    figures["grpc_batch_events_per_s"] = round(batch["per_s"], 1)
    figures["grpc_batch_p50_ms"] = round(batch["batch_p50_ms"], 1)
    figures["grpc_batch_accepted"] = batch["accepted"]
    figures["grpc_batch_cpu_us_per_event"] = cpu.per_event_us(count)
    figures["relay_lag_after_grpc_batch_s"] = round(await outbox_drained(db), 2)

    return figures


async def main(scale: int, all_services: bool, single_only: bool) -> dict[str, Any]:
    loadgen = build_loadgen()
    services = ("contacts", "gateway")
    with running_system(
        **({} if all_services else {"services": services, "ready": wait_ready})
    ) as system:
        env = system.env
        address, url = env["NUDGE_CONTACTS_ADDR"], env["NUDGE_GATEWAY_URL"]
        async with grpc.aio.insecure_channel(address) as channel:
            created = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
                contacts_pb2.CreateWorkspaceRequest(name="Bench shop", slug="bench-ingest"),
                metadata=(("authorization", f"Admin {env['NUDGE_ADMIN_TOKEN']}"),),
            )
        api_key = created.api_key
        await create_contacts(address, api_key)
        db = await asyncpg.connect(env["DATABASE_URL"])
        figures: dict[str, Any] = {
            "kafka_kind": env["NUDGE_KAFKA_KIND"],
            "scale": scale,
            "services": "all" if all_services else "+".join(services),
            "http_client": "go loadgen" if loadgen else "python httpx",
        }
        try:
            # Warm-up: connections, caches, JIT-free but still first-call costs.
            await grpc_single(address, api_key, "warm", 500)

            pids = {name: system.group.pid(name) for name in services}
            cpu = CpuMeter({name: pid for name, pid in pids.items() if pid is not None})
            if loadgen is not None:
                http = await http_single_go(loadgen, url, api_key, "hs", scale)
            else:
                http = await http_single_python(url, api_key, "hs", scale)
            figures["http_single_events_per_s"] = round(http["per_s"], 1)
            figures["http_single_p50_ms"] = round(http["p50_ms"], 1)
            figures["http_single_p99_ms"] = round(http["p99_ms"], 1)
            figures["http_single_status"] = http["status"]
            figures["http_single_cpu_us_per_event"] = cpu.per_event_us(scale)
            figures["relay_lag_after_http_single_s"] = round(await outbox_drained(db), 2)
            cpu.per_event_us(scale)

            single = await grpc_single(address, api_key, "gs", scale)
            figures["grpc_single_events_per_s"] = round(single["per_s"], 1)
            figures["grpc_single_p50_ms"] = round(single["p50_ms"], 1)
            figures["grpc_single_p99_ms"] = round(single["p99_ms"], 1)
            figures["grpc_single_errors"] = single["errors"]
            figures["grpc_single_cpu_us_per_event"] = cpu.per_event_us(scale)
            figures["relay_lag_after_grpc_single_s"] = round(await outbox_drained(db), 2)
            cpu.per_event_us(scale)

            batch_events = 0 if single_only else 10 * scale
            if batch_events:
                figures.update(await batch_phases(address, url, api_key, batch_events, cpu, db))
            accepted = {
                str(r["event_id"])
                for r in await db.fetch(
                    "SELECT event_id FROM contacts.ingested_events WHERE workspace_id = $1",
                    created.workspace_id,
                )
            }
            figures["accepted_events"] = len(accepted)
            figures["expected_events"] = 500 + 2 * scale + 2 * batch_events
            figures.update(
                await topic_check(env["KAFKA_BOOTSTRAP_SERVERS"], created.workspace_id, accepted)
            )
        finally:
            await db.close()
        return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10_000, help="events of each single phase")
    parser.add_argument("--all-services", action="store_true", help="start every service")
    parser.add_argument(
        "--single-only", action="store_true", help="no batch phases (for code without them)"
    )
    arguments = parser.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    print(json.dumps(run(main(arguments.scale, arguments.all_services, arguments.single_only))))
