"""Outbox relay throughput: rows per second from a full outbox table to Kafka acks.

Fills an outbox with ``--rows`` events of ``--keys`` contacts (committed before the relay
starts), runs one relay on a 4-partition topic until the outbox is empty, and prints one
JSON line last: ``{"rows": ..., "seconds": ..., "rows_per_s": ...}``. PostgreSQL and Kafka
come from ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` when set, else from the local stack
on free ports (started and stopped here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _system import local_infra  # type: ignore[import-not-found]  # noqa: E402
from nudge.shop.v1 import shop_pb2  # noqa: E402

from deploy.local.topics import ensure_topics  # noqa: E402
from services.common.db import create_pool, migrate  # noqa: E402
from services.common.events import new_envelope  # noqa: E402
from services.common.kafka import KafkaPublisher, supports_idempotence  # noqa: E402
from services.common.outbox import OutboxRelay, add_to_outbox  # noqa: E402


async def measure(env: dict[str, str], rows: int, keys: int) -> dict[str, float]:
    schema = f"bench_outbox_{uuid.uuid4().hex[:8]}"
    topic = f"bench.outbox.{uuid.uuid4().hex[:8]}"
    await ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"], {topic: 4})
    await migrate(env["DATABASE_URL"], schema, None)
    pool = await create_pool(env["DATABASE_URL"], schema)
    async with pool.acquire() as conn, conn.transaction():
        for i in range(rows):
            contact = f"contact-{i % keys}"
            envelope = new_envelope(
                "ws",
                shop_pb2.ShopEvent(contact_id=contact, searched=shop_pb2.Searched(query=str(i))),
            )
            await add_to_outbox(conn, schema, topic, contact, envelope)
    publisher = KafkaPublisher(
        env["KAFKA_BOOTSTRAP_SERVERS"],
        "bench",
        idempotent=supports_idempotence(env.get("NUDGE_KAFKA_KIND", "")),
    )
    await publisher.start()
    relay = OutboxRelay(pool, schema, publisher)
    started = time.monotonic()
    task = asyncio.create_task(relay.run())
    try:
        # The relay counts what Kafka acked; 10 ms of polling is noise at 20k rows.
        while relay.published < rows:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        seconds = time.monotonic() - started
    finally:
        task.cancel()
        await publisher.stop()
        await pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await pool.close()
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=1_000)
    args = parser.parse_args()
    if os.environ.get("DATABASE_URL") and os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        result = asyncio.run(measure(dict(os.environ), args.rows, args.keys))
    else:
        with local_infra(("postgres", "kafka")) as (env, _):
            result = asyncio.run(measure(env, args.rows, args.keys))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
