"""How fast a bulk import goes into PostgreSQL, and how long until its events are published
and consumed.

    .venv/bin/python bench/contacts_import.py [--scale N] [--no-segmentation] [--batch ROWS]

Starts the local stack and the contacts service (and segmentation, unless told not to) as
processes, writes a CSV of N generated contacts (default 1,000,000: e-mail, names, city,
tags, a consent column) to a temporary file, and imports it through ``ImportService`` from
this process, streaming the file in 512 KiB chunks (nothing holds it whole). Reports:
- ``rows_per_s``: rows into PostgreSQL, the import call alone (every row committed and its
  events in the outbox when the call answers);
- ``outbox_drained_s``: from the start of the import until the outbox is empty (every event
  acked by Kafka); ``relay_events_per_s`` from it;
- ``segmentation_s``: from the start until segmentation's read model holds every contact;
- ``contacts_peak_rss_mb`` (VmHWM of the contacts process) and ``client_peak_rss_mb``.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from _system import running_system
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc, imports_pb2, imports_pb2_grpc

CHUNK = 512 * 1024


def write_file(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write("email,first_name,last_name,city,tags,newsletter\n")
        for i in range(rows):
            out.write(
                f"c{i}@bench.example,First{i},Last{i % 997},City{i % 50},"
                f'"t{i % 7},u{i % 3}",{"yes" if i % 2 else "no"}\n'
            )


def ready(services: tuple[str, ...]) -> Any:
    def wait(env: dict[str, str]) -> None:
        for name in services:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with grpc.insecure_channel(env[f"NUDGE_{name.upper()}_ADDR"]) as channel:
                        answer = health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(), timeout=1
                        )
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not come up")
                time.sleep(0.2)

    return wait


def peak_rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


async def chunks(path: Path) -> AsyncIterator[imports_pb2.ImportContactsRequest]:
    yield imports_pb2.ImportContactsRequest(
        options=imports_pb2.ImportOptions(
            format=imports_pb2.IMPORT_FORMAT_CSV,
            columns={"city": "attributes.city"},
            consent_columns=[
                imports_pb2.ConsentColumn(
                    column="newsletter",
                    purpose=contacts_pb2.CONSENT_PURPOSE_MARKETING,
                    wording="Send me the newsletter",
                )
            ],
            tags=["bench"],
            import_key="bench-import",
            file_name=path.name,
        )
    )
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield imports_pb2.ImportContactsRequest(chunk=chunk)


async def wait_for(db: asyncpg.Connection, query: str, *args: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await db.fetchval(query, *args):
        if time.monotonic() > deadline:
            raise TimeoutError(query)
        await asyncio.sleep(0.1)


async def main(scale: int, segmentation: bool, batch: int | None) -> dict[str, Any]:
    services = ("contacts", "segmentation") if segmentation else ("contacts",)
    if batch:
        os.environ["CONTACTS_IMPORT_BATCH_ROWS"] = str(batch)
    with tempfile.TemporaryDirectory(prefix="nudge-import-") as tmp:
        path = Path(tmp) / "contacts.csv"
        write_file(path, scale)
        with running_system(services=services, ready=ready(services)) as system:
            env = system.env
            address = env["NUDGE_CONTACTS_ADDR"]
            async with grpc.aio.insecure_channel(address) as channel:
                created = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
                    contacts_pb2.CreateWorkspaceRequest(name="Bench shop", slug="bench-import"),
                    metadata=(("authorization", f"Admin {env['NUDGE_ADMIN_TOKEN']}"),),
                )
                metadata = (("authorization", f"Bearer {created.api_key}"),)
                db = await asyncpg.connect(env["DATABASE_URL"])
                try:
                    started = time.perf_counter()
                    summary = await imports_pb2_grpc.ImportServiceStub(channel).ImportContacts(
                        chunks(path), metadata=metadata
                    )
                    import_s = time.perf_counter() - started
                    await wait_for(
                        db, "SELECT NOT EXISTS (SELECT 1 FROM contacts.outbox)", timeout=3600
                    )
                    drained_s = time.perf_counter() - started
                    segmentation_s = None
                    if segmentation:
                        await wait_for(
                            db,
                            "SELECT count(*) = $2 FROM segmentation.profiles"
                            " WHERE workspace_id = $1 AND email IS NOT NULL",
                            created.workspace_id,
                            scale,
                            timeout=3600,
                        )
                        segmentation_s = time.perf_counter() - started
                    events = scale + await db.fetchval(
                        "SELECT count(*) FROM contacts.consent_events WHERE workspace_id = $1",
                        created.workspace_id,
                    )
                finally:
                    await db.close()
            return {
                "scale": scale,
                "kafka_kind": env["NUDGE_KAFKA_KIND"],
                "services": "+".join(services),
                "batch_rows": batch or 20_000,
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "created": summary.created,
                "rejected": summary.rejected,
                "import_s": round(import_s, 2),
                "rows_per_s": round(scale / import_s),
                "events": events,
                "outbox_drained_s": round(drained_s, 2),
                "relay_events_per_s": round(events / drained_s),
                "segmentation_s": round(segmentation_s, 2) if segmentation_s else None,
                "contacts_peak_rss_mb": peak_rss_mb(system.group.pid("contacts")),
                "client_peak_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                ),
            }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1_000_000, help="contacts in the file")
    parser.add_argument("--no-segmentation", action="store_true", help="start contacts only")
    parser.add_argument(
        "--batch", type=int, help="rows per transaction (CONTACTS_IMPORT_BATCH_ROWS)"
    )
    arguments = parser.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    print(json.dumps(run(main(arguments.scale, not arguments.no_segmentation, arguments.batch))))
