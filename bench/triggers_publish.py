"""Publishing a date workflow (a birthday) in a workspace that already knows N contacts.

    .venv/bin/python bench/triggers_publish.py [--scale N]

Starts PostgreSQL alone, applies triggers' migrations, writes ``N`` contacts' facts with COPY
(each with a birthday and one of a few time zones) and publishes the birthday template as
the API's ``PublishWorkflow`` does (services/triggers/entrypoints/grpc.py): the new version
and :func:`services.triggers.derived.schedule_workflow` in one transaction, timed
(``publish_s``). Then it runs the scheduling jobs the publication leaves, as the worker's
loop does (services/triggers/runtime/schedules.py), until every contact has its timer
(``schedule_s``, ``timers_per_s``). Before the scheduling moved out of the publication,
``publish_s`` held all of it: the gateway gives an RPC 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402
from _system import postgres_url  # noqa: E402

from services.common.db import migrate  # noqa: E402
from services.triggers import derived, handlers  # noqa: E402
from services.triggers import workflows_store as store  # noqa: E402
from services.triggers.bootstrap import MIGRATIONS  # noqa: E402
from services.triggers.domain.model import Definition  # noqa: E402

try:  # the scheduling jobs (after the change); absent before it
    from services.triggers.runtime import schedules
except ImportError:  # pragma: no cover - the code before the change
    schedules = None  # type: ignore[assignment]

TEMPLATE = ROOT / "services" / "triggers" / "templates" / "birthday.json"
ZONES = ("Europe/Rome", "Europe/Budapest", "America/New_York", "Asia/Tokyo", "")


async def write_facts(conn: asyncpg.Connection, workspace_id: uuid.UUID, count: int) -> None:
    rows = io.StringIO()
    for i in range(count):
        born = date(1950 + i % 50, 1 + i % 12, 1 + i % 28)
        rows.write(f"{workspace_id}\t{uuid.uuid4()}\t{ZONES[i % len(ZONES)]}\t{born}\n")
    await conn.copy_to_table(
        "contact_facts",
        source=io.BytesIO(rows.getvalue().encode()),
        columns=["workspace_id", "contact_id", "time_zone", "birthday"],
    )


async def measure(url: str, count: int) -> dict[str, Any]:
    await migrate(url, handlers.SCHEMA, MIGRATIONS)
    conn = await asyncpg.connect(url, server_settings={"search_path": handlers.SCHEMA})
    try:
        ws = uuid.uuid4()
        await write_facts(conn, ws, count)
        doc = json.loads(TEMPLATE.read_text())
        definition = Definition.model_validate(doc)
        stored = definition.model_dump(mode="json", by_alias=True)
        now = datetime.now(UTC)
        draft = await store.insert_workflow(
            conn,
            str(ws),
            name=definition.name,
            draft=stored,
            trigger_event=definition.trigger.event,
            template_id="birthday",
            now=now,
        )
        workflow_id = draft["id"]
        started = time.perf_counter()
        async with conn.transaction():
            await store.publish(
                conn,
                str(ws),
                workflow_id,
                version=1,
                definition=stored,
                trigger_event=definition.trigger.event,
                published_by="bench",
                now=now,
            )
            await derived.schedule_workflow(conn, str(ws), str(workflow_id), 1, now)
        publish_s = time.perf_counter() - started
        started = time.perf_counter()
        if schedules is not None:
            while await schedules.run_one_batch(conn, datetime.now(UTC)):
                pass
        schedule_s = time.perf_counter() - started
        timers = await conn.fetchval("SELECT count(*) FROM timers WHERE workspace_id = $1", ws)
        assert timers == count, f"{timers} timers for {count} contacts"
        return {
            "contacts": count,
            "timers": timers,
            "publish_s": round(publish_s, 3),
            "schedule_s": round(schedule_s, 3),
            "timers_per_s": round(count / (publish_s + schedule_s)),
        }
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=100_000, help="contacts known (N)")
    args = parser.parse_args()
    with postgres_url() as url:
        result = asyncio.run(measure(url, args.scale))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
