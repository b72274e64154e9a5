"""The trigger engine's event handler alone: CPU an event, without Kafka or Faust.

    .venv/bin/python bench/triggers_handler.py [--scale N] [--profile]

``bench/triggers.py`` measures a worker end to end (Kafka, Faust, the handler, PostgreSQL),
and on a shared 2-core machine its figures move by half from one run to the next. This one
starts PostgreSQL alone, publishes the abandoned-cart and post-purchase templates, and hands
``handlers.on_events`` the events of ``bench/triggers.py`` (each contact changes a cart four
times, then orders it) in batches of 500, cut in rounds and chunks as the worker cuts them
(``app._consume``: up to 4 chunks of at least 50 at a time). The handler's process CPU per
event (``cpu_us_per_event``, the worker's share of the cost) is what to compare between two
versions, in alternating runs. Logging is set up as the worker's (JSON, INFO, to /dev/null),
since a log line per event is part of the cost. ``--profile`` prints cProfile's top entries
(the figures then include its overhead).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402
from _system import postgres_url  # noqa: E402
from nudge.events.v1.envelope_pb2 import Envelope  # noqa: E402
from triggers import publish, shop_events, workflow  # noqa: E402

from services.common.db import migrate  # noqa: E402
from services.common.logs import setup_logging  # noqa: E402
from services.triggers import handlers  # noqa: E402
from services.triggers.bootstrap import MIGRATIONS  # noqa: E402
from services.triggers.config import Settings  # noqa: E402
from services.triggers.runtime.caps import FrequencyCaps  # noqa: E402
from services.triggers.runtime.runs import Engine, waves  # noqa: E402

BATCH = 500  # the worker's batch_max


async def measure(url: str, count: int, profile: bool) -> dict[str, Any]:
    settings = Settings()
    await migrate(url, handlers.SCHEMA, MIGRATIONS)
    pool = await asyncpg.create_pool(
        url,
        min_size=settings.concurrency,
        max_size=settings.concurrency,
        server_settings={"search_path": handlers.SCHEMA},
    )
    assert pool is not None
    try:
        workspace = uuid.uuid4()
        async with pool.acquire() as conn:
            for name in ("abandoned_cart", "post_purchase"):
                await publish(conn, workspace, workflow(name, {}))
        engine = Engine(FrequencyCaps(None, ""), live_ttl_s=3600.0)
        events = [
            Envelope.FromString(value)
            for _, value in shop_events(str(workspace), max(100, count // 5), count)
        ]
        await handlers.on_events(pool, engine, events[:50])  # caches and statements warm
        events = events[50:]
        profiler = cProfile.Profile() if profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        for i in range(0, len(events), BATCH):
            for round_ in waves(events[i : i + BATCH], lambda e: e.shop_event.contact_id):
                size = max(settings.round_min, -(-len(round_) // settings.concurrency))
                await asyncio.gather(
                    *(
                        handlers.on_events(pool, engine, round_[j : j + size])
                        for j in range(0, len(round_), size)
                    )
                )
        if profiler is not None:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if profiler is not None:
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
        return {
            "events": len(events),
            "wall_s": round(wall, 2),
            "events_per_s": round(len(events) / wall),
            "cpu_us_per_event": round(cpu / len(events) * 1e6),
            "profiled": profile,
        }
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20_000, help="events handled")
    parser.add_argument("--profile", action="store_true", help="cProfile's top entries")
    args = parser.parse_args()
    devnull = open(os.devnull, "w")  # noqa: SIM115  # the worker's log lines, discarded
    stderr, sys.stderr = sys.stderr, devnull
    setup_logging("triggers", "INFO", "json")
    sys.stderr = stderr
    with postgres_url() as url:
        result = asyncio.run(measure(url, args.scale, args.profile))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
