"""Segments at a million contacts: counts, a member stream, incremental updates, the sweep.

    .venv/bin/python bench/segments.py [--scale N] [--runs R] [--only count,stream,...]

Starts PostgreSQL, Redis and Kafka (the local stack on free ports, durable PostgreSQL
settings as ``make run``), loads ``--scale`` contacts and ~10 orders each
(``bench/segments_data.py``), then starts the segmentation service as its own process and
measures, each figure the median of ``--runs`` (>= 5) runs:

- ``count``: CountSegment over gRPC for every built-in segment and for a three-clause custom
  rule ("ordered 2+ times in the last 60 days AND tag newsletter AND total spent >= 100.00
  EUR"), and the same counts as the compiled SQL run directly (``sql_*``: what the database
  costs without the service). Before the rule compiler existed the SQL was
  ``segment_sql.count_query``; the script uses whichever the code has.
- ``stream``: StreamMembers of the segment closest to 200,000 members, contacts/s.
- ``shop``: ``--events`` OrderPlaced events published to ``shop.events.v1`` for existing
  contacts, the rate at which the read model applies them (first applied to last), and the
  membership events seen on ``segments.membership.v1`` meanwhile.
- ``sweep``: a day's worth of time transitions: the profiles whose ``next_transition_at``
  falls within the next 24 h, re-evaluated by the service's sweep (when the code has one).

A figure the code cannot give yet (an RPC still unimplemented) is ``null`` with the reason
in ``notes``. The last line is one JSON object with the figures. ``BENCH_DATABASE_URL`` set:
use that PostgreSQL instead of starting one (already loaded: ``--no-load``), so that a
million contacts are loaded once for several runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402
import grpc  # noqa: E402
import segments_data  # noqa: E402
from nudge.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc  # noqa: E402

from services.common.auth import internal_metadata  # noqa: E402

BUILT_INS = (
    "activation",
    "reactivation",
    "vip",
    "new_customer",
    "promising",
    "loyal",
    "passive",
    "lost",
    "passive_loyal",
    "lost_loyal",
    "first_time_buyer",
    "repeat_buyer",
)
AS_OF = datetime.now(UTC)  # one evaluation time for every SQL count of a run
CUSTOM_RULE = {
    "all": [
        {"events": "order", "within": {"days": 60}, "count": {"op": "gte", "value": 2}},
        {"tag": "newsletter"},
        {"field": "total_spent", "currency": "EUR", "op": "gte", "value": 10000},
    ]
}


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


async def timed(runs: int, call: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    """``runs`` timed calls after one untimed warm-up; the durations and the last answer."""
    answer = await call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        answer = await call()
        samples.append(time.perf_counter() - started)
    return samples, answer


# --- SQL, straight to PostgreSQL ------------------------------------------------------------


def compiled_count(rule: object) -> tuple[str, list[object]] | None:
    """The count of ``rule`` as the rule compiler writes it ($1 workspace, $2 as_of, then the
    rule's own parameters), the arguments after the workspace; None before the compiler
    exists. A rule that never reads the time (vip) gets no $2: PostgreSQL cannot type a
    parameter that is not used."""
    try:
        from services.segmentation.adapters import rule_sql
        from services.segmentation.domain import rules
    except ImportError:
        return None
    node = rules.parse_rule(rule)
    params = rule_sql.Params(first=3)
    predicate = rule_sql.predicate_sql(node, params, as_of="$2::timestamptz", alias="p")
    args: list[object] = [AS_OF]
    if "$2::timestamptz" not in predicate:
        params = rule_sql.Params(first=2)
        predicate = rule_sql.predicate_sql(node, params, as_of="$0::timestamptz", alias="p")
        args = []
    sql = (
        f"SELECT count(*) FROM segmentation.profiles p WHERE p.workspace_id = $1 AND ({predicate})"
    )
    return sql, args + list(params.values)


def builtin_count(segment_id: str) -> tuple[str, list[object]]:
    try:
        from services.segmentation.domain import builtins
    except ImportError:
        from services.segmentation.adapters import segment_sql

        return segment_sql.count_query(segment_id), [AS_OF]
    compiled = compiled_count(builtins.BY_ID[segment_id].rule)
    assert compiled is not None
    return compiled


async def measure_sql(
    database_url: str, workspace_id: str, runs: int, explain_dir: Path | None
) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "segmentation"})
    ws = uuid.UUID(workspace_id)
    out: dict[str, Any] = {"sql_count_ms": {}, "sql_count": {}}
    try:
        targets: list[tuple[str, tuple[str, list[object]] | None]] = [
            (s, builtin_count(s)) for s in BUILT_INS
        ]
        targets.append(("custom", compiled_count(CUSTOM_RULE)))
        for name, compiled in targets:
            if compiled is None:
                out["sql_count_ms"][name] = None
                continue
            sql, extra = compiled
            samples, count = await timed(
                runs, lambda sql=sql, extra=extra: conn.fetchval(sql, ws, *extra)
            )
            out["sql_count_ms"][name] = median_ms(samples)
            out["sql_count"][name] = count
            if explain_dir is not None:
                plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", ws, *extra)
                (explain_dir / f"{name}.txt").write_text(
                    sql + "\n\n" + "\n".join(r[0] for r in plan) + "\n"
                )
    finally:
        await conn.close()
    builtin = [v for k, v in out["sql_count_ms"].items() if k != "custom" and v is not None]
    out["sql_count_builtin_p50_ms"] = max(builtin) if builtin else None
    out["sql_count_custom_p50_ms"] = out["sql_count_ms"]["custom"]
    return out


# --- gRPC, through the running service --------------------------------------------------------


async def measure_grpc(
    address: str, metadata: tuple[tuple[str, str], ...], runs: int, notes: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {"count_ms": {}, "count": {}}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = segmentation_pb2_grpc.SegmentServiceStub(channel)
        for segment_id in BUILT_INS:
            request = segmentation_pb2.CountSegmentRequest(
                target=segmentation_pb2.SegmentTarget(segment_id=segment_id)
            )
            request.segment_id = segment_id  # older servicers read this field only
            samples, answer = await timed(
                runs, lambda r=request: stub.CountSegment(r, metadata=metadata, timeout=120)
            )
            out["count_ms"][segment_id] = median_ms(samples)
            out["count"][segment_id] = answer.count
        out["count_builtin_p50_ms"] = max(out["count_ms"].values())
        custom = segmentation_pb2.CountSegmentRequest(
            target=segmentation_pb2.SegmentTarget(rule=json.dumps(CUSTOM_RULE))
        )
        try:
            samples, answer = await timed(
                runs, lambda: stub.CountSegment(custom, metadata=metadata, timeout=120)
            )
            out["count_custom_p50_ms"] = median_ms(samples)
            out["count"]["custom"] = answer.count
        except grpc.aio.AioRpcError as err:
            out["count_custom_p50_ms"] = None
            notes.append(f"CountSegment of a rule: {err.code().name} {err.details()}")
        # The stream: the built-in closest to 200,000 members, whole, ascending.
        sizes = {k: v for k, v in out["count"].items() if k != "custom"}
        chosen = min(sizes, key=lambda k: abs(sizes[k] - 200_000))
        out["stream_segment"] = chosen
        try:
            rates = []
            for _ in range(runs):
                started = time.perf_counter()
                members = 0
                async for message in stub.StreamMembers(
                    segmentation_pb2.StreamMembersRequest(
                        target=segmentation_pb2.SegmentTarget(segment_id=chosen),
                        batch_size=5000,
                    ),
                    metadata=metadata,
                    timeout=600,
                ):
                    members += len(message.members)
                rates.append(members / (time.perf_counter() - started))
            out["stream_members"] = members
            out["stream_contacts_per_s"] = round(statistics.median(rates))
        except grpc.aio.AioRpcError as err:
            out["stream_contacts_per_s"] = None
            notes.append(f"StreamMembers: {err.code().name} {err.details()}")
    return out


async def wait_serving(address: str, metadata: tuple[tuple[str, str], ...], proc: Any) -> None:
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the segmentation service exited with {proc.returncode}")
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                await segmentation_pb2_grpc.SegmentServiceStub(channel).ListSegments(
                    segmentation_pb2.ListSegmentsRequest(), metadata=metadata, timeout=5
                )
            return
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


# --- incremental updates: shop events in, membership events out -------------------------------


async def measure_shop(
    infra: dict[str, str], workspace_id: str, events: int, notes: list[str]
) -> dict[str, Any]:
    """Publish ``events`` OrderPlaced for random existing contacts (keyed by contact, as
    ingestion does) and wait until the read model holds every one of their orders."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from nudge.shop.v1 import shop_pb2

    from services.common.events import new_envelope
    from services.common.topics import SEGMENT_MEMBERSHIP, SHOP_EVENTS

    conn = await asyncpg.connect(infra["DATABASE_URL"])
    ws = uuid.UUID(workspace_id)
    contacts = [
        str(r[0])
        for r in await conn.fetch(
            "SELECT contact_id FROM segmentation.profiles WHERE workspace_id = $1"
            " ORDER BY md5(contact_id::text) LIMIT $2",
            ws,
            events,
        )
    ]
    before = await conn.fetchval(
        "SELECT count(*) FROM segmentation.orders WHERE workspace_id = $1", ws
    )
    consumer = AIOKafkaConsumer(
        SEGMENT_MEMBERSHIP,
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"],
        auto_offset_reset="latest",
        enable_auto_commit=False,
    )
    await consumer.start()
    await consumer.seek_to_end()
    for tp in consumer.assignment():
        await consumer.position(tp)
    producer = AIOKafkaProducer(
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"], acks="all", linger_ms=5
    )
    await producer.start()
    now = datetime.now(UTC) - timedelta(seconds=5)
    started = time.perf_counter()
    try:
        sends = []
        for n in range(events):
            contact_id = contacts[n % len(contacts)]
            event = shop_pb2.ShopEvent(
                contact_id=contact_id,
                order_placed=shop_pb2.OrderPlaced(
                    order_id=f"bench-{n}",
                    total=shop_pb2.Money(amount_minor=4500, currency="EUR"),
                ),
            )
            event.occurred_at.FromDatetime(now)
            value = new_envelope(workspace_id, event).SerializeToString()
            sends.append(await producer.send(SHOP_EVENTS, value, key=contact_id.encode()))
        await asyncio.gather(*sends)
        produced_s = time.perf_counter() - started
        first_at = last_at = 0.0
        applied = 0
        deadline = time.monotonic() + 600
        membership = 0
        while applied < events and time.monotonic() < deadline:
            applied = (
                await conn.fetchval(
                    "SELECT count(*) FROM segmentation.orders WHERE workspace_id = $1", ws
                )
                - before
            )
            t = time.perf_counter()
            if applied and not first_at:
                first_at = t
            last_at = t
            batch = await consumer.getmany(timeout_ms=200, max_records=100_000)
            membership += sum(len(v) for v in batch.values())
        # Membership events trail the applies a little: collect for up to 5 s more.
        quiet_until = time.monotonic() + 5
        while time.monotonic() < quiet_until:
            batch = await consumer.getmany(timeout_ms=500, max_records=100_000)
            got = sum(len(v) for v in batch.values())
            membership += got
            if got:
                quiet_until = time.monotonic() + 2
    finally:
        await producer.stop()
        await consumer.stop()
        await conn.close()
    if applied < events:
        notes.append(f"shop: only {applied} of {events} orders applied within 600 s")
    span = last_at - first_at
    if not membership:
        notes.append("shop: no membership events on segments.membership.v1 (not implemented?)")
    return {
        "shop_events": events,
        "shop_produce_s": round(produced_s, 1),
        "shop_apply_s": round(last_at - started, 1),
        "shop_events_per_s": round(applied / span) if span > 0 else None,
        "shop_membership_events": membership,
    }


async def due_in_a_day(database_url: str, workspace_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM segmentation.profiles WHERE workspace_id = $1"
                " AND next_transition_at > now()"
                " AND next_transition_at <= now() + interval '1 day'",
                uuid.UUID(workspace_id),
            )
        )
    finally:
        await conn.close()


async def measure_sweep(
    infra: dict[str, str], workspace_id: str, notes: list[str]
) -> dict[str, Any]:
    """A day's worth of time transitions: the service's Sweeper run as if 24 h had passed
    (the clock frozen a day ahead), until nothing is due; with the service stopped, so the
    sweep has the machine's database to itself."""
    due = await due_in_a_day(infra["DATABASE_URL"], workspace_id)
    try:
        from services.common import clock
        from services.common.db import create_pool
        from services.segmentation.sweeper import Sweeper
    except ImportError:
        notes.append("sweep: no services.segmentation.sweeper yet")
        return {"sweep_due_contacts": due, "sweep_day_s": None}
    pool = await create_pool(infra["DATABASE_URL"], "segmentation", max_size=4)
    clock.set_clock(clock.FrozenClock(datetime.now(UTC) + timedelta(days=1)))
    try:
        sweeper = Sweeper(pool)
        started = time.perf_counter()
        while await sweeper.sweep_once():
            pass
        span = time.perf_counter() - started
    finally:
        clock.set_clock(clock.SystemClock())
        await pool.close()
    return {
        "sweep_due_contacts": due,
        "sweep_swept": sweeper.swept,
        "sweep_transitions": sweeper.published,
        "sweep_day_s": round(span, 1),
        "sweep_contacts_per_s": round(sweeper.swept / span) if span > 0 else None,
    }


# --- the run -----------------------------------------------------------------------------------


def start_service(infra: dict[str, str], tmp: Path, token: str) -> tuple[Any, str, Any]:
    from tests.support import free_port

    port = free_port()
    env = {
        **os.environ,
        **infra,
        "NUDGE_LOG_LEVEL": "WARNING",
        "SEGMENTATION_GRPC_PORT": str(port),
        "NUDGE_CONTACTS_ADDR": f"127.0.0.1:{free_port()}",  # not called: internal token
        "NUDGE_INTERNAL_TOKEN": token,
    }
    log = (tmp / "segmentation.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.segmentation"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, f"127.0.0.1:{port}", log


def stop_service(proc: Any, log: Any) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from deploy.local import paths
    from deploy.local.stack import LocalStack
    from deploy.local.topics import ensure_topics
    from services.common.topics import TOPICS

    notes: list[str] = []
    result: dict[str, Any] = {"scale": args.scale, "runs": args.runs, "notes": notes}
    explain_dir = Path(args.explain) if args.explain else None
    if explain_dir is not None:
        explain_dir.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    workspace_id = segments_data.WORKSPACE
    database_url = os.environ.get("BENCH_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="nudge-bench-") as tmpdir:
        tmp = Path(tmpdir)
        stack = LocalStack(
            state_dir=tmp / "state",
            ports="free",
            persistent=False,
            cache_dir=paths.cache_dir(),
            environ=os.environ,
            parts=("redis", "kafka") if database_url else ("postgres", "redis", "kafka"),
        )
        try:
            infra = stack.start()
            if database_url:
                infra["DATABASE_URL"] = database_url
            asyncio.run(ensure_topics(infra["KAFKA_BOOTSTRAP_SERVERS"], TOPICS))
            if not args.no_load:
                result["load"] = segments_data.load(
                    infra["DATABASE_URL"], scale=args.scale, seed=args.seed
                )
            else:  # migrations since the load, and the memberships if they are missing
                asyncio.run(segments_data.prepare(infra["DATABASE_URL"]))
                result["memberships"] = asyncio.run(
                    segments_data.baseline(infra["DATABASE_URL"], workspace_id, only_if_empty=True)
                )
            if "count" in only:
                result.update(
                    asyncio.run(
                        measure_sql(infra["DATABASE_URL"], workspace_id, args.runs, explain_dir)
                    )
                )
            token = secrets.token_urlsafe(32)
            metadata = internal_metadata(token, workspace_id)
            proc, address, log = start_service(infra, tmp, token)
            try:
                asyncio.run(wait_serving(address, metadata, proc))
                if only & {"count", "stream"}:
                    result.update(asyncio.run(measure_grpc(address, metadata, args.runs, notes)))
                if "shop" in only:
                    result.update(
                        asyncio.run(measure_shop(infra, workspace_id, args.events, notes))
                    )
            except BaseException:
                sys.stderr.write((tmp / "segmentation.log").read_text()[-5000:])
                raise
            finally:
                stop_service(proc, log)
            if "sweep" in only:
                result.update(asyncio.run(measure_sweep(infra, workspace_id, notes)))
        finally:
            stack.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=1_000_000, help="contacts")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (>= 5)")
    parser.add_argument("--events", type=int, default=50_000, help="shop events to apply")
    parser.add_argument("--only", default="count,stream,shop,sweep")
    parser.add_argument("--explain", help="write EXPLAIN (ANALYZE, BUFFERS) of each count here")
    parser.add_argument("--no-load", action="store_true", help="with BENCH_DATABASE_URL")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs: at least 5")
    result = run(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
