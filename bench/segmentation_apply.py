"""How fast segmentation's read model applies contact events (a bulk import's ContactCreated)
or shop events (a shop's traffic).

    .venv/bin/python bench/segmentation_apply.py [--scale N] [--batch B] [--kind contacts|shop]
        [--mix realistic|orders]

``--kind shop`` publishes N shop events to ``shop.events.v1`` instead, for N/5 contacts (keyed
by contact id, occurred over the last year): ``--mix realistic`` (the default) is 60 % page
views, 15 % searches, 10 % cart updates, 10 % orders (line items with categories), 2 %
cancellations, 3 % signups; ``--mix orders`` only orders, cancellations and signups (the
kinds every version of the read model claims, to compare with code that ignored the rest).
The drain polls the offsets the service's consumer group committed on the topic until all N
are (a record's offset is committed once its batch's transaction is).

Starts PostgreSQL, Redis and Kafka (the local stack on free ports, or the URLs in the
environment), creates the topics, publishes N ContactCreated envelopes to
``contacts.events.v1`` (one new contact each, keyed by its id, as contacts' outbox relay
sends them), and only then starts the segmentation service as its own process
(``python -m services.segmentation``, ``SEGMENTATION_APPLY_BATCH_MAX=B``). It polls the
number of profiles of the workspace until all N are there.

The rate runs from the first profile seen to the last, so the service's start-up and group
join are not counted (``drain_s_total`` counts them). ``--batch 1`` applies each record in
its own transaction, for comparison. ``--writer-only`` starts PostgreSQL alone and applies N
snapshots through ``ReadModelWriter`` in-process, 2,000 waiting at a time as in the service:
the database side's rate without Kafka and the consumer loop. The last line is one JSON
object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
from _system import local_infra, postgres_url  # type: ignore[import-not-found]  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.partitioner import DefaultPartitioner  # noqa: E402
from nudge.contacts.v1 import contacts_pb2, events_pb2  # noqa: E402
from nudge.shop.v1 import shop_pb2  # noqa: E402

from deploy.local.topics import ensure_topics  # noqa: E402
from services.common.events import new_envelope  # noqa: E402
from services.common.topics import CONTACTS_EVENTS, SHOP_EVENTS, TOPICS  # noqa: E402
from tests.support import free_port  # noqa: E402

TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def contact_events(workspace_id: str, count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` ContactCreated of new contacts: (contact id, envelope bytes)."""
    for n in range(count):
        contact_id = str(uuid.uuid4())
        contact = contacts_pb2.Contact(
            id=contact_id,
            workspace_id=workspace_id,
            email=f"c{n}@example.com",
            first_name=f"Contact {n}",
            tags=["imported"],
            attributes={"source": "bench"},
            version=1,
        )
        envelope = new_envelope(workspace_id, events_pb2.ContactCreated(contact=contact))
        yield contact_id, envelope.SerializeToString()


CATEGORIES = ("shoes", "shirts", "bags", "hats", "socks", "coats")
REALISTIC = (
    ("page_viewed", 60),
    ("searched", 15),
    ("cart_updated", 10),
    ("order_placed", 10),
    ("order_cancelled", 2),
    ("signed_up", 3),
)
ORDERS_ONLY = (("order_placed", 85), ("order_cancelled", 5), ("signed_up", 10))


def shop_events(workspace_id: str, count: int, mix: str) -> Iterator[tuple[str, bytes]]:
    """``count`` shop events for ``count // 5`` contacts, times spread over the last year."""
    rng = random.Random(13)
    kinds, weights = zip(*(REALISTIC if mix == "realistic" else ORDERS_ONLY), strict=True)
    contacts = [str(uuid.uuid4()) for _ in range(max(1, count // 5))]
    now = datetime.now(UTC)
    placed: dict[str, list[str]] = {}
    for n in range(count):
        contact_id = rng.choice(contacts)
        kind = rng.choices(kinds, weights)[0]
        event = shop_pb2.ShopEvent(contact_id=contact_id)
        event.occurred_at.FromDatetime(now - timedelta(seconds=rng.randrange(365 * 86400)))
        category = rng.choice(CATEGORIES)
        item = shop_pb2.LineItem(
            product_id=f"p{n % 500}",
            category=category,
            quantity=1 + n % 3,
            unit_price=shop_pb2.Money(amount_minor=1000 + n % 9000, currency="EUR"),
        )
        total = shop_pb2.Money(amount_minor=(1000 + n % 9000) * (1 + n % 3), currency="EUR")
        if kind == "page_viewed":
            event.page_viewed.CopyFrom(shop_pb2.PageViewed(url=f"/p/{n % 500}", category=category))
        elif kind == "searched":
            event.searched.CopyFrom(shop_pb2.Searched(query=f"Red {category}"))
        elif kind == "cart_updated":
            event.cart_updated.CopyFrom(
                shop_pb2.CartUpdated(cart_id=f"cart-{contact_id}", items=[item], total=total)
            )
        elif kind == "order_placed":
            placed.setdefault(contact_id, []).append(f"o-{n}")
            event.order_placed.CopyFrom(
                shop_pb2.OrderPlaced(
                    order_id=f"o-{n}", cart_id=f"cart-{contact_id}", items=[item], total=total
                )
            )
        elif kind == "order_cancelled":
            # One of the contact's orders (one not seen yet, at times: a cancellation first).
            order_id = rng.choice(placed.get(contact_id) or [f"o-{count + n}"])
            event.order_cancelled.CopyFrom(shop_pb2.OrderCancelled(order_id=order_id))
        else:
            event.signed_up.CopyFrom(shop_pb2.SignedUp())
        yield contact_id, new_envelope(workspace_id, event).SerializeToString()


async def produce(
    bootstrap: str, workspace_id: str, count: int, kind: str = "contacts", mix: str = "realistic"
) -> float:
    """Publish ``count`` events of ``kind``; the seconds it took."""
    started = time.perf_counter()
    topic = CONTACTS_EVENTS if kind == "contacts" else SHOP_EVENTS
    events = (
        contact_events(workspace_id, count)
        if kind == "contacts"
        else shop_events(workspace_id, count, mix)
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        partitioner = DefaultPartitioner()
        batches: dict[int, Any] = {p: producer.create_batch() for p in partitions}
        sent = []
        for contact_id, value in events:
            key = contact_id.encode()
            partition = partitioner(key, partitions, partitions)
            args: dict[str, Any] = {
                "key": key,
                "value": value,
                "timestamp": None,
                "headers": [("traceparent", TRACEPARENT)],
            }
            if batches[partition].append(**args) is None:  # full: send it, start the next
                sent.append(
                    await producer.send_batch(batches[partition], topic, partition=partition)
                )
                batches[partition] = producer.create_batch()
                batches[partition].append(**args)
            if len(sent) > 64:  # bound what is in flight
                await asyncio.gather(*sent)
                sent = []
        for partition, batch in batches.items():
            if batch.record_count():
                sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def drain(
    database_url: str,
    workspace_id: str,
    count: int,
    service: subprocess.Popen[bytes],
    kind: str = "contacts",
    bootstrap: str = "",
) -> dict[str, float]:
    """Poll until all ``count`` are applied: the workspace's profiles (contacts), or the
    offsets the service's group committed on shop.events.v1 (shop: it commits a record's
    offset only once its batch committed, and not every shop event leaves a row to count);
    times from the service's start."""
    if kind == "contacts":

        async def progress() -> int:
            try:
                return int(
                    await conn.fetchval(
                        "SELECT count(*) FROM segmentation.profiles WHERE workspace_id = $1",
                        uuid.UUID(workspace_id),
                    )
                )
            except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
                return 0  # not migrated yet

        conn = await asyncpg.connect(database_url)
        close: Any = conn.close
    else:
        offsets = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id="segmentation", enable_auto_commit=False
        )
        await offsets.start()
        close = offsets.stop
        parts = [TopicPartition(SHOP_EVENTS, p) for p in range(TOPICS[SHOP_EVENTS])]

        async def progress() -> int:
            done = 0
            for tp in parts:
                done += await offsets.committed(tp) or 0
            return done

    started = time.perf_counter()
    first_at = 0.0
    first_rows = 0
    try:
        while True:
            if service.poll() is not None:
                raise RuntimeError(f"the segmentation service exited with {service.returncode}")
            rows = await progress()
            now = time.perf_counter()
            if rows and not first_at:
                first_at, first_rows = now, rows
            if rows >= count:
                span = now - first_at
                return {
                    "drain_s": round(span, 2),
                    "drain_s_total": round(now - started, 2),
                    "events_per_s": round((count - first_rows) / span) if span > 0 else 0.0,
                }
            await asyncio.sleep(0.25)
    finally:
        await close()


async def writer_only(database_url: str, count: int, batch: int) -> dict[str, float]:
    from services.common.db import create_pool, migrate
    from services.segmentation.adapters.postgres import SCHEMA
    from services.segmentation.bootstrap import CONSUMER_CONCURRENCY, MIGRATIONS
    from services.segmentation.domain.readmodel import ProfileSnapshot
    from services.segmentation.handlers import ReadModelWriter

    await migrate(database_url, SCHEMA, MIGRATIONS)
    pool = await create_pool(database_url, SCHEMA, max_size=20)
    try:
        writer = ReadModelWriter(pool, max_batch=batch)
        workspace_id = str(uuid.uuid4())
        started = time.perf_counter()
        for first in range(0, count, CONSUMER_CONCURRENCY):
            await asyncio.gather(
                *(
                    writer.apply(
                        workspace_id,
                        str(uuid.uuid4()),
                        ProfileSnapshot(
                            contact_id=str(uuid.uuid4()),
                            email=f"c{n}@example.com",
                            vip=False,
                            tags=("imported",),
                            attributes={"source": "bench"},
                            version=1,
                        ),
                    )
                    for n in range(first, min(count, first + CONSUMER_CONCURRENCY))
                )
            )
        span = time.perf_counter() - started
        return {"writer_s": round(span, 2), "events_per_s": round(count / span)}
    finally:
        await pool.close()


def _profiler() -> list[str]:
    """``BENCH_PROFILE=FILE``: run the service under cProfile, its stats written to FILE."""
    out = os.environ.get("BENCH_PROFILE")
    return ["-m", "cProfile", "-o", out] if out else []


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=100_000, help="ContactCreated to apply")
    parser.add_argument("--batch", type=int, default=1000, help="SEGMENTATION_APPLY_BATCH_MAX")
    parser.add_argument("--writer-only", action="store_true", help="PostgreSQL side alone")
    parser.add_argument("--kind", choices=("contacts", "shop"), default="contacts")
    parser.add_argument("--mix", choices=("realistic", "orders"), default="realistic")
    args = parser.parse_args()
    if args.writer_only:
        with postgres_url() as database_url:
            figures = asyncio.run(writer_only(database_url, args.scale, args.batch))
        print(
            json.dumps(
                {"scale": args.scale, "batch_max": args.batch, "writer_only": True, **figures}
            )
        )
        return
    with local_infra(("postgres", "redis", "kafka")) as (infra, tmp):
        bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
        asyncio.run(ensure_topics(bootstrap, TOPICS))
        workspace_id = str(uuid.uuid4())
        produce_s = asyncio.run(produce(bootstrap, workspace_id, args.scale, args.kind, args.mix))
        env = {
            **os.environ,
            **infra,
            "NUDGE_LOG_LEVEL": "WARNING",
            "SEGMENTATION_GRPC_PORT": str(free_port()),
            "SEGMENTATION_APPLY_BATCH_MAX": str(args.batch),
            "NUDGE_CONTACTS_ADDR": f"127.0.0.1:{free_port()}",  # not called here
            "NUDGE_INTERNAL_TOKEN": secrets.token_urlsafe(32),
        }
        log = (Path(tmp) / "segmentation.log").open("wb")
        service = subprocess.Popen(
            [sys.executable, *_profiler(), "-m", "services.segmentation"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            figures = asyncio.run(
                drain(
                    infra["DATABASE_URL"],
                    workspace_id,
                    args.scale,
                    service,
                    args.kind,
                    bootstrap,
                )
            )
            rss = peak_rss_mb(service.pid)
        except RuntimeError:
            sys.stderr.write((Path(tmp) / "segmentation.log").read_text()[-5000:])
            raise
        finally:
            service.terminate()
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()
            log.close()
            if os.environ.get("BENCH_KEEP_LOG"):
                import shutil

                shutil.copy(Path(tmp) / "segmentation.log", os.environ["BENCH_KEEP_LOG"])
    result = {
        "scale": args.scale,
        "kind": args.kind,
        "mix": args.mix if args.kind == "shop" else None,
        "batch_max": args.batch,
        "kafka": infra.get("NUDGE_KAFKA_KIND", "?"),
        "produce_s": round(produce_s, 1),
        **figures,
        "service_peak_rss_mb": rss,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
