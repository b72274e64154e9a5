"""The trigger engine's speed (issue 16, "Speed"): events, timers, a crash, and a mail.

    .venv/bin/python bench/triggers.py [--scale N] [--only events,timers,mail]

Starts the local stack on free ports (bench/_system.py), applies every migration, publishes
the abandoned-cart and post-purchase workflows (rows in ``workflows`` and
``workflow_versions``, as the API does on publish) and measures, each part against the
triggers service as a process (``python -m services.triggers``, one worker):

1. ``events``: ``N / 10`` shop events (cart changes and orders of ``N / 50`` contacts,
   keyed by contact, protobuf envelopes as the outbox relay sends them) are produced to
   shop.events.v1 BEFORE any consumer runs. Then, in the same run, a bare faust-streaming
   agent that does nothing (a process of its own, same Faust settings as the engine's app,
   its own group) reads them all, and then the triggers worker handles them all. Rates run
   from the first event handled to the last (the engine's from its ``processed_events``
   claims, polled), so start-up and the group join do not count. The contacts service
   runs beside the worker with the shop's contacts in its tables, so that the
   post-purchase workflow's tag commands are carried out (ModifyTags, then contacts'
   TagsChanged back to the engine), as in production; ``tagged_when_events_handled`` and
   ``tags_done_s_after_events`` say how far the command relay trailed the events.
   ``--no-contacts`` runs without it (every tag call then fails and is retried: the
   figures of stops before 2026-12-04 night).
2. ``timers``: ``N`` pending timers of abandoned-cart runs waiting for their reminder, with
   their ``runs`` rows, written with COPY; all but a stream of ``--due-rate`` per second
   over ``--due-seconds`` are due days ahead. Lateness is ``run_steps.at`` of the
   reminder (the step after the wake) minus the timer's ``due_at``, both on the same
   clock. The worker's RSS is sampled meanwhile.
3. ``recovery``: in the middle of that stream the worker is SIGKILLed and restarted after
   ``--down-s`` seconds; from the restart: until the first due timer fires, and until
   every later timer fires less than 1 s late.
4. ``mail``: contacts, delivery and triggers with the SMTP sink; ``--mails`` abandoned-cart
   runs whose reminder falls due at a steady pace, each to a consenting contact: from the
   due time to the sink's receipt of the mail.

The workflows used carry a send window of the whole day, so that the hour the benchmark
runs at does not hold the reminders back (a real workflow's 08:00-21:00 window would).
Figures are printed as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mailbox
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import asyncpg  # noqa: E402
from _system import RunningSystem, percentile, running_system  # noqa: E402
from campaign_fanout import cpu_s  # noqa: E402
from nudge.shop.v1 import shop_pb2  # noqa: E402

from deploy.local.supervisor import migrate  # noqa: E402
from services.common.events import new_envelope  # noqa: E402
from services.common.topics import SHOP_EVENTS  # noqa: E402
from services.triggers.domain.model import Definition  # noqa: E402
from services.triggers.handlers import CONSUMER  # noqa: E402

SCHEMA = "triggers"
WHOLE_DAY = {"start": "00:00:00", "end": "23:59:59"}

# The abandoned cart of issue 16: 3 hours after the last cart change a reminder with the
# cart's items and link; still no order the next day, a second one; an order or an emptied
# cart ends it. One run per cart, restarted by every change of that cart.
ABANDONED_CART: dict[str, Any] = {
    "format": "nudge.workflow/v1",
    "name": "Abandoned cart",
    "trigger": {"event": "cart_updated", "filter": {"min_items": 1}},
    "entry": {"concurrency": "per_key", "key": "cart_id", "on_retrigger": "restart"},
    "exit_on": [
        {"event": "order_placed"},
        {"event": "cart_updated", "filter": {"max_items": 0}, "same_key": True},
    ],
    "send_window": WHOLE_DAY,
    "steps": [
        {"id": "wait_3h", "type": "wait", "duration": "PT3H"},
        {
            "id": "reminder",
            "type": "send",
            "message": {
                "subject": "You left something in your cart",
                "body_text": "Still thinking?\n{{ vars.cart_items }}\n{{ vars.cart_url }}",
            },
        },
        {"id": "next_day", "type": "wait_until", "at": "10:00:00", "day_offset": 1},
        {
            "id": "offer",
            "type": "send",
            "message": {
                "subject": "10 % off your cart, today only",
                "body_text": "{{ vars.cart_items }}\nCode CART10: {{ vars.cart_url }}",
            },
        },
    ],
}

# Seed 002's post-purchase: first order, tag and thanks; second, swap the tags and thanks for
# coming back; every later one, thanks and score +10.
POST_PURCHASE: dict[str, Any] = {
    "format": "nudge.workflow/v1",
    "name": "Post-purchase",
    "trigger": {"event": "order_placed"},
    "entry": {"concurrency": "unlimited"},
    "send_window": WHOLE_DAY,
    "steps": [
        {
            "id": "repeat_customer",
            "type": "branch",
            "condition": {"type": "has_tag", "tag": "repeat_customer"},
            "then": [
                {
                    "id": "thanks_again",
                    "type": "send",
                    "message": {
                        "subject": "Thank you again",
                        "body_text": "{{ vars.order_items }}",
                    },
                },
                {"id": "score", "type": "score", "delta": 10},
            ],
            "else": [
                {
                    "id": "first_purchase",
                    "type": "branch",
                    "condition": {"type": "has_tag", "tag": "first_purchase"},
                    "then": [
                        {"id": "untag_first", "type": "tag", "remove": ["first_purchase"]},
                        {
                            "id": "thanks_back",
                            "type": "send",
                            "message": {"subject": "Welcome back", "body_text": "Thanks!"},
                        },
                        {"id": "tag_repeat", "type": "tag", "add": ["repeat_customer"]},
                    ],
                    "else": [
                        {"id": "tag_first", "type": "tag", "add": ["first_purchase"]},
                        {
                            "id": "thanks_first",
                            "type": "send",
                            "message": {"subject": "Thank you", "body_text": "Thanks!"},
                        },
                    ],
                },
            ],
        },
    ],
}


TEMPLATES = ROOT / "services" / "triggers" / "templates"


def workflow(template: str, inline: dict[str, Any]) -> dict[str, Any]:
    """The product's template of that name where it exists (services/triggers/templates),
    else the inline definition above; either way sending all day."""
    path = TEMPLATES / f"{template}.json"
    doc = json.loads(path.read_text()) if path.exists() else dict(inline)
    return {**doc, "send_window": WHOLE_DAY}


def definitions_source() -> str:
    return "templates" if (TEMPLATES / "abandoned_cart.json").exists() else "inline"


# -- set-up -------------------------------------------------------------------------------


async def connect(env: dict[str, str], schema: str = SCHEMA) -> asyncpg.Connection:
    return await asyncpg.connect(env["DATABASE_URL"], server_settings={"search_path": schema})


async def publish(
    conn: asyncpg.Connection, workspace_id: uuid.UUID, doc: dict[str, Any]
) -> uuid.UUID:
    """A live workflow, version 1, as the API's publish leaves it."""
    definition = Definition.model_validate(doc)  # the bench's definitions must stay valid
    stored = json.dumps(definition.model_dump(mode="json", by_alias=True))
    workflow_id = uuid.uuid4()
    now = datetime.now(UTC)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO workflows (workspace_id, id, name, status, draft, published_version,"
            " trigger_event, created_at, updated_at, published_at)"
            " VALUES ($1, $2, $3, 'active', $4::jsonb, 1, $5, $6, $6, $6)",
            workspace_id,
            workflow_id,
            definition.name,
            stored,
            definition.trigger.event,
            now,
        )
        await conn.execute(
            "INSERT INTO workflow_versions (workspace_id, workflow_id, version, definition,"
            " published_at, published_by) VALUES ($1, $2, 1, $3::jsonb, $4, 'bench')",
            workspace_id,
            workflow_id,
            stored,
            now,
        )
    return workflow_id


def ready_grpc(*names: str) -> Any:
    def ready(env: dict[str, str]) -> None:
        from services.common.healthcheck import check_grpc

        deadline = time.monotonic() + 180
        for name in names:
            address = env[f"NUDGE_{name.upper()}_ADDR"]
            while check_grpc(address, "", timeout=1) is not None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not become healthy")
                time.sleep(0.2)

    return ready


def start_triggers(system: RunningSystem) -> float:
    """Start (or restart) the triggers worker; seconds until it answers its health check."""
    started = time.monotonic()
    if "triggers" in system.group._services:
        system.group.restart("triggers")
    else:
        system.group.start(["triggers"], system.env)
    ready_grpc("triggers")(system.env)
    return time.monotonic() - started


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of every core since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@contextlib.contextmanager
def machine_load() -> Iterator[dict[str, float]]:
    """How busy the machine's cores were while the block ran (0-1), and the load average
    at its end: the figures of a shared 2-core machine mean little without them."""
    figures: dict[str, float] = {}
    busy_before, total_before = machine_jiffies()
    try:
        yield figures
    finally:
        busy_after, total_after = machine_jiffies()
        figures["machine_busy"] = round(
            (busy_after - busy_before) / max(1, total_after - total_before), 2
        )
        figures["load_average_1m"] = os.getloadavg()[0]


@contextlib.contextmanager
def profiling(pid: int | None, enabled: bool) -> Iterator[list[Any]]:
    """py-spy records ``pid`` while the block runs (``.venv/bin/pip install py-spy``); the
    list then holds its hottest functions, inclusive and self (bench/campaign_fanout.py)."""
    top: list[Any] = []
    if not enabled or pid is None:
        yield top
        return
    from campaign_fanout import leaves_of_profile, top_of_profile

    out = Path(tempfile.mkdtemp(prefix="nudge-triggers-")) / "worker.txt"
    print(f"py-spy: {out}", file=sys.stderr)
    py_spy = Path(sys.executable).parent / "py-spy"
    argv = [str(py_spy), "record", "--pid", str(pid), "--rate", "100", "--format", "raw"]
    recorder = subprocess.Popen(
        [*argv, "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield top
    finally:
        recorder.send_signal(2)  # SIGINT: py-spy writes what it has
        recorder.wait(timeout=60)
        if out.exists():
            top.extend([top_of_profile(out, 25), leaves_of_profile(out, 25)])


def worker_tail(system: RunningSystem, lines: int = 40) -> str:
    """The triggers worker's last lines, for a part that failed."""
    tail = system.group.lines("triggers")[-lines:] if "triggers" in system.group._services else []
    return "\n".join(["--- triggers ---", *tail])


def ms(seconds: float) -> float | None:
    """Milliseconds, rounded; None where there was nothing to measure (JSON has no NaN)."""
    return None if seconds != seconds else round(seconds * 1000, 1)


def rss_mib(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def sampling_rss(system: RunningSystem, every_s: float = 0.5) -> Iterator[list[float]]:
    """The triggers worker's RSS (MiB), sampled in a thread while the block runs (whichever
    process is the worker at the time: it may be restarted meanwhile)."""
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(every_s):
            value = rss_mib(system.group.pid("triggers"))
            if value:
                samples.append(value)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


# -- 1. events ----------------------------------------------------------------------------


def shop_events(workspace_id: str, contacts: int, count: int) -> list[tuple[bytes, bytes]]:
    """(key, envelope) pairs: each contact changes a cart four times, then orders it; the
    contacts take turns, so every partition has work all along."""
    money = shop_pb2.Money(amount_minor=1200, currency="EUR")
    people = [str(uuid.uuid4()) for _ in range(contacts)]
    out: list[tuple[bytes, bytes]] = []
    for n in range(count):
        contact = people[n % contacts]
        round_, step = divmod(n // contacts, 5)
        cart_id = f"cart-{contact[:8]}-{round_}"
        items = [
            shop_pb2.LineItem(
                product_id=f"p{i}",
                name=f"Mug {i}",
                category="kitchen",
                quantity=1,
                unit_price=money,
            )
            for i in range(step + 1 if step < 4 else 4)
        ]
        total = shop_pb2.Money(amount_minor=1200 * len(items), currency="EUR")
        if step < 4:
            kind: dict[str, Any] = {
                "cart_updated": shop_pb2.CartUpdated(
                    cart_id=cart_id, items=items, total=total, cart_url=f"https://shop/{cart_id}"
                )
            }
        else:
            kind = {
                "order_placed": shop_pb2.OrderPlaced(
                    order_id=f"order-{cart_id}", cart_id=cart_id, items=items, total=total
                )
            }
        event = shop_pb2.ShopEvent(contact_id=contact, **kind)
        event.occurred_at.FromDatetime(datetime.now(UTC))
        out.append((contact.encode(), new_envelope(workspace_id, event).SerializeToString()))
    return out


async def produce(bootstrap: str, records: list[tuple[bytes, bytes]]) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = [await producer.send(SHOP_EVENTS, value, key=key) for key, value in records]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def bare_agent(bootstrap: str, count: int, timeout: float) -> dict[str, float]:
    """A faust-streaming agent that does nothing with each event, with the engine's Faust
    settings (services/triggers/app.py) and uvloop, as the service runs; in this process."""
    import faust
    import uvloop

    class Worker(faust.Worker):
        def install_signal_handlers(self) -> None:
            pass

    async def run() -> dict[str, float]:
        app = faust.App(
            f"bench-bare-{uuid.uuid4().hex[:8]}",
            broker=[f"kafka://{server}" for server in bootstrap.split(",")],
            store="memory://",
            datadir=f"/tmp/nudge-bench-bare-{os.getpid()}",
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=False,
            topic_disable_leader=True,
            topic_allow_declare=False,
            consumer_auto_offset_reset="earliest",
            processing_guarantee="at_least_once",
            broker_session_timeout=10,
            broker_heartbeat_interval=1,
            broker_rebalance_timeout=20,
            producer_linger_ms=0,
        )
        topic = app.topic(SHOP_EVENTS, key_serializer="raw", value_serializer="raw")
        done = asyncio.Event()
        seen = {"n": 0, "first": 0.0, "last": 0.0}

        @app.agent(topic)
        async def nothing(stream: Any) -> None:
            async for _event in stream.events():
                seen["n"] += 1
                now = time.perf_counter()
                if seen["n"] == 1:
                    seen["first"] = now
                if seen["n"] >= count:
                    seen["last"] = now
                    done.set()

        worker = Worker(
            app,
            loop=asyncio.get_running_loop(),
            loglevel="WARNING",
            redirect_stdouts=False,
            override_logging=False,
            daemon=False,
            quiet=True,
        )
        await worker.start()
        try:
            await asyncio.wait_for(done.wait(), timeout)
        finally:
            await worker.stop()
        return {"events_per_s": (count - 1) / (seen["last"] - seen["first"])}

    return uvloop.run(run())


async def processed(env: dict[str, str]) -> tuple[int, float]:
    """Events the engine has claimed, and the seconds from its first claim to its last."""
    conn = await connect(env)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, EXTRACT(EPOCH FROM max(processed_at) - min(processed_at))"
            " AS span FROM processed_events WHERE consumer = $1",
            CONSUMER,
        )
    finally:
        await conn.close()
    return int(row["n"]), float(row["span"] or 0.0)


def measure_events(
    system: RunningSystem, scale: int, timeout: float, profile: bool, with_contacts: bool
) -> dict[str, Any]:
    env = system.env
    count = max(5_000, scale // 10)
    contacts = max(100, scale // 50)

    async def set_up() -> tuple[uuid.UUID, float]:
        workspace_id = (
            await create_workspace(env, "bench-triggers-events") if with_contacts else uuid.uuid4()
        )
        conn = await connect(env)
        try:
            await publish(conn, workspace_id, workflow("abandoned_cart", ABANDONED_CART))
            await publish(conn, workspace_id, workflow("post_purchase", POST_PURCHASE))
        finally:
            await conn.close()
        records = shop_events(str(workspace_id), contacts, count)
        if with_contacts:
            people = sorted({uuid.UUID(k.decode()) for k, _ in records})
            emails = [f"shopper{i}@bench.example" for i in range(len(people))]
            await add_contacts(env, workspace_id, people, emails)
        return workspace_id, await produce(env["KAFKA_BOOTSTRAP_SERVERS"], records)

    workspace_id, produce_s = asyncio.run(set_up())
    # Faust writes to stdout as it likes: the agent's figures come back in a file.
    with tempfile.NamedTemporaryFile("r", suffix=".json") as figures:
        bare = subprocess.run(
            [sys.executable, __file__, "--bare-agent", str(count)],
            env={**env, "BENCH_TIMEOUT_S": str(timeout), "BENCH_BARE_OUT": figures.name},
            capture_output=True,
            text=True,
            timeout=timeout + 120,
            check=False,
        )
        text = Path(figures.name).read_text()
    if bare.returncode != 0 or not text:
        raise RuntimeError(f"the bare agent failed ({bare.returncode}):\n{bare.stderr[-3000:]}")
    bare_rate = json.loads(text)["events_per_s"]

    sys.stderr.write(f"bare faust agent: {bare_rate:.0f} events/s\n")
    started = time.monotonic()
    start_triggers(system)
    deadline = started + timeout
    worker = system.group.pid("triggers")
    # The worker's share of one core while it works the backlog off (from the first event
    # handled, not its start-up): well under 1 means it waits, not computes.
    busy_from: tuple[float, float] | None = None
    with profiling(worker, profile) as top, machine_load() as load:
        n, span = asyncio.run(processed(env))
        while n < count and time.monotonic() < deadline:
            time.sleep(0.5)
            n, span = asyncio.run(processed(env))
            if busy_from is None and n > 0:
                busy_from = (time.monotonic(), cpu_s(worker))
    worker_share = (
        (cpu_s(worker) - busy_from[1]) / (time.monotonic() - busy_from[0])
        if busy_from is not None
        else float("nan")
    )
    if n < count:  # too slow to finish: the rate so far, and say so
        sys.stderr.write(f"the engine handled {n} of {count} events\n{worker_tail(system)}\n")
    wall_s = time.monotonic() - started
    ours = (n - 1) / span if span else float("nan")
    # The tag commands are carried out after their events, by the relay: how far behind it
    # was when the last event was handled, and how long it took to catch up.
    tag_figures: dict[str, Any] = {}
    if with_contacts:
        done_at = time.monotonic()
        tag_figures["tagged_when_events_handled"] = asyncio.run(tagged(env, workspace_id))
        while (got := asyncio.run(tagged(env, workspace_id))) < contacts:
            if time.monotonic() > done_at + timeout:
                break
            time.sleep(0.2)
        tag_figures["tagged"] = got
        tag_figures["tags_done_s_after_events"] = round(time.monotonic() - done_at, 1)
    runs = asyncio.run(count_runs(env, workspace_id))
    return {
        "events": count,
        "events_handled": n,
        "contacts": contacts,
        "produce_events_per_s": round(count / produce_s),
        "bare_faust_events_per_s": round(bare_rate),
        "engine_events_per_s": round(ours),
        "engine_to_bare_ratio": round(ours / bare_rate, 3),
        "engine_wall_s_from_start": round(wall_s, 1),
        "runs_started": runs,
        **tag_figures,
        "worker_cpu_share_of_a_core": round(worker_share, 2),
        "target_events_per_s": 5_000,
        **load,
        **({"profile_top": top[0], "profile_self": top[1]} if top else {}),
    }


async def create_workspace(env: dict[str, str], slug: str) -> uuid.UUID:
    import grpc
    from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

    async with grpc.aio.insecure_channel(env["NUDGE_CONTACTS_ADDR"]) as channel:
        created = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Bench shop", slug=slug),
            metadata=(("authorization", f"Admin {env['NUDGE_ADMIN_TOKEN']}"),),
        )
    return uuid.UUID(created.workspace_id)


async def add_contacts(
    env: dict[str, str],
    workspace_id: uuid.UUID,
    people: list[uuid.UUID],
    emails: list[str],
    *,
    consent: int | None = None,
) -> None:
    """``people`` in contacts' own tables (COPY), each granted ``consent`` (a purpose) when
    given: for tag commands contacts carries out, and mail delivery lets through."""
    from nudge.contacts.v1 import contacts_pb2

    now = datetime.now(UTC)
    conn = await connect(env, "contacts")
    try:
        await conn.copy_records_to_table(
            "contacts",
            records=[(workspace_id, c, e, now, now) for c, e in zip(people, emails, strict=True)],
            columns=("workspace_id", "id", "email", "created_at", "updated_at"),
        )
        if consent is not None:
            granted = contacts_pb2.CONSENT_STATUS_GRANTED
            await conn.copy_records_to_table(
                "consents",
                records=[(workspace_id, c, consent, granted, now) for c in people],
                columns=("workspace_id", "contact_id", "purpose", "status", "updated_at"),
            )
    finally:
        await conn.close()


async def tagged(env: dict[str, str], workspace_id: uuid.UUID) -> int:
    """Contacts whose post-purchase tag contacts has applied (each bench contact orders
    once: ``first_purchase``)."""
    conn = await connect(env, "contacts")
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM contacts WHERE workspace_id = $1"
                " AND 'first_purchase' = ANY(tags)",
                workspace_id,
            )
        )
    finally:
        await conn.close()


async def count_runs(env: dict[str, str], workspace_id: uuid.UUID) -> int:
    conn = await connect(env)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM runs WHERE workspace_id = $1", workspace_id)
        )
    finally:
        await conn.close()


# -- 2, 3 and 4. timers --------------------------------------------------------------------


async def waiting_runs(
    conn: asyncpg.Connection,
    workspace_id: uuid.UUID,
    workflow_id: uuid.UUID,
    due: list[datetime],
    contacts: list[uuid.UUID] | None = None,
    chunk: int = 100_000,
) -> list[uuid.UUID]:
    """Abandoned-cart runs asleep after their 3-hour wait, one per ``due`` time (and per
    contact), with their timers, written with COPY; their run ids, in ``due``'s order."""
    run_ids = [uuid.uuid4() for _ in due]
    now = datetime.now(UTC)
    # RUNTIME's entry_key (the cart a run is for), where the schema has it.
    with_entry_key = bool(
        await conn.fetchval(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = $1"
            " AND table_name = 'runs' AND column_name = 'entry_key'",
            SCHEMA,
        )
    )
    for start in range(0, len(due), chunk):
        runs = []
        timers = []
        for i in range(start, min(len(due), start + chunk)):
            run_id = run_ids[i]
            contact_id = contacts[i] if contacts is not None else uuid.uuid4()
            cart = f"cart-{i}"
            variables = {
                "cart_id": cart,
                "cart_url": f"https://shop.example/cart/{cart}",
                "cart_items": "2 x Blue mug (12.00 EUR)",
                "cart_total": "24.00 EUR",
                "item_count": "2",
            }
            runs.append(
                (
                    workspace_id,
                    run_id,
                    workflow_id,
                    1,
                    contact_id,
                    cart,
                    "waiting",
                    "reminder",
                    json.dumps(variables),
                    '{"wait_3h": 1}',
                    f"bench-{run_id}",
                    now - timedelta(hours=3),
                    now,
                    due[i],
                    *((cart,) if with_entry_key else ()),
                )
            )
            timers.append(
                (f"run/{run_id}", workspace_id, contact_id, workflow_id, run_id, "run", due[i])
            )
        await conn.copy_records_to_table(
            "runs",
            records=runs,
            columns=(
                "workspace_id",
                "id",
                "workflow_id",
                "version",
                "contact_id",
                "run_key",
                "state",
                "position",
                "vars",
                "executed",
                "trigger_event_id",
                "started_at",
                "updated_at",
                "next_wake_at",
                *(("entry_key",) if with_entry_key else ()),
            ),
        )
        await conn.copy_records_to_table(
            "timers",
            records=timers,
            columns=(
                "timer_key",
                "workspace_id",
                "contact_id",
                "workflow_id",
                "run_id",
                "kind",
                "due_at",
            ),
        )
    return run_ids


# A probe, not part of the engine: every reminder step written is noted, in the writer's
# transaction, so that the poller below sees it the moment that transaction commits.
PROBE = """
CREATE TABLE IF NOT EXISTS triggers.bench_fired (
    run_id uuid PRIMARY KEY, step_at timestamptz NOT NULL, seen_at timestamptz);
CREATE OR REPLACE FUNCTION triggers.bench_note_fired() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.step_id = 'reminder' THEN
        INSERT INTO triggers.bench_fired (run_id, step_at) VALUES (NEW.run_id, NEW.at)
            ON CONFLICT DO NOTHING;
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER bench_note_fired AFTER INSERT ON triggers.run_steps
    FOR EACH ROW EXECUTE FUNCTION triggers.bench_note_fired();
"""


@contextlib.contextmanager
def watching_commits(env: dict[str, str], every_s: float = 0.1) -> Iterator[None]:
    """Stamp each noted reminder with the time its transaction became visible (to within
    ``every_s``): ``run_steps.at`` is when the engine began the step (the start of its
    round), and a batch may commit long after; a mail can leave only after the commit."""
    stop = threading.Event()

    async def poll() -> None:
        conn = await connect(env)
        try:
            await conn.execute(PROBE)
            ready.set()
            while not stop.is_set():
                await conn.execute(
                    "UPDATE bench_fired SET seen_at = clock_timestamp() WHERE seen_at IS NULL"
                )
                await asyncio.sleep(every_s)
            await conn.execute(
                "UPDATE bench_fired SET seen_at = clock_timestamp() WHERE seen_at IS NULL"
            )
        finally:
            await conn.close()

    ready = threading.Event()
    thread = threading.Thread(target=lambda: asyncio.run(poll()), daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the commit probe did not start")
    try:
        yield
    finally:
        stop.set()
        thread.join()


async def fired(
    env: dict[str, str], run_ids: set[uuid.UUID]
) -> dict[uuid.UUID, tuple[datetime, datetime]]:
    """Run id -> (when its reminder step was taken, when that was seen committed)."""
    conn = await connect(env)
    try:
        rows = await conn.fetch(
            "SELECT run_id, step_at, coalesce(seen_at, clock_timestamp()) AS seen_at"
            " FROM bench_fired"
        )
    finally:
        await conn.close()
    return {r["run_id"]: (r["step_at"], r["seen_at"]) for r in rows if r["run_id"] in run_ids}


def measure_timers(system: RunningSystem, args: argparse.Namespace) -> dict[str, Any]:
    """Figures 2 and 3: steady lateness with ``args.scale`` pending, then a SIGKILL."""
    env = system.env
    workspace_id = uuid.uuid4()
    due_count = int(args.due_rate * args.due_seconds)
    pending = max(args.scale, due_count)
    result: dict[str, Any] = {"pending_timers": pending, "due_per_s": args.due_rate}

    async def load_far() -> tuple[uuid.UUID, float]:
        conn = await connect(env)
        try:
            workflow_id = await publish(
                conn, workspace_id, workflow("abandoned_cart", ABANDONED_CART)
            )
            began = time.perf_counter()
            base = datetime.now(UTC) + timedelta(days=1)
            far = pending - due_count
            # Days to weeks ahead, so none of them falls due during the benchmark.
            await waiting_runs(
                conn,
                workspace_id,
                workflow_id,
                [base + timedelta(seconds=30 * i) for i in range(far)],
            )
            await conn.execute("ANALYZE runs")
            await conn.execute("ANALYZE timers")
            return workflow_id, time.perf_counter() - began
        finally:
            await conn.close()

    workflow_id, load_s = asyncio.run(load_far())
    result["load_s"] = round(load_s, 1)
    if "triggers" not in system.group._services or not system.group.running("triggers"):
        result["worker_start_s"] = round(start_triggers(system), 1)
    idle_rss = rss_mib(system.group.pid("triggers"))

    async def load_due() -> tuple[list[uuid.UUID], list[datetime]]:
        conn = await connect(env)
        try:
            first = datetime.now(UTC) + timedelta(seconds=5)
            due = [first + timedelta(seconds=i / args.due_rate) for i in range(due_count)]
            return await waiting_runs(conn, workspace_id, workflow_id, due), due
        finally:
            await conn.close()

    with sampling_rss(system) as rss, machine_load() as load, watching_commits(env):
        run_ids, due = asyncio.run(load_due())
        due_of = dict(zip(run_ids, due, strict=True))
        wanted = set(run_ids)
        kill_at = due[0] + timedelta(seconds=args.due_seconds * args.kill_at)
        # Steady state, until the kill.
        with profiling(system.group.pid("triggers"), args.profile) as top:
            while datetime.now(UTC) < kill_at:
                time.sleep(0.2)
        killed_wall = datetime.now(UTC)
        system.group.kill("triggers")
        time.sleep(args.down_s)
        restarted_wall = datetime.now(UTC)
        restart_ready_s = start_triggers(system)
        # Until every due timer fired, or the stream's end plus the timeout: a worker that
        # cannot keep up is measured as far as it got (its lateness then a lower bound).
        deadline = time.monotonic() + (due[-1] - datetime.now(UTC)).total_seconds() + args.timeout
        while True:
            got = asyncio.run(fired(env, wanted))
            if len(got) >= due_count or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    got = asyncio.run(fired(env, wanted))  # every last one stamped
    ended = datetime.now(UTC)
    if len(got) < due_count:
        sys.stderr.write(f"{len(got)} of {due_count} due timers fired\n{worker_tail(system)}\n")
    result.update(load)
    result["due_timers"] = due_count
    result["due_timers_fired"] = len(got)
    seen_at = sorted(seen for _, seen in got.values())
    if len(seen_at) > 1:
        span = (seen_at[-1] - seen_at[0]).total_seconds()
        result["fired_per_s"] = round((len(seen_at) - 1) / span) if span else None
    result["worker_rss_idle_mib"] = round(idle_rss)
    result["worker_rss_max_mib"] = round(max(rss, default=0.0))
    if top:
        result["profile_self"] = top[1]
    result["reminders_repeated"] = asyncio.run(fired_twice(env, workspace_id))

    def lateness(run_id: uuid.UUID, committed: bool = True) -> float:
        """Seconds late, by the step's commit (default) or by its ``run_steps.at``; for a
        timer that never fired, how late it was when we stopped."""
        times = got.get(run_id)
        at = ended if times is None else times[1] if committed else times[0]
        return (at - due_of[run_id]).total_seconds()

    steady_runs = [
        r
        for r in run_ids
        # Not the first second (the stream's start), nor anything due within 1 s of the kill.
        if due[0] + timedelta(seconds=1) <= due_of[r] < killed_wall - timedelta(seconds=1)
    ]
    steady = [lateness(r) for r in steady_runs]
    by_step_at = [lateness(r, committed=False) for r in steady_runs]
    result["steady_timers"] = len(steady)
    result["lateness_is_lower_bound"] = len(got) < due_count
    result["lateness_p50_ms"] = ms(percentile(steady, 50))
    result["lateness_p99_ms"] = ms(percentile(steady, 99))
    result["lateness_max_ms"] = ms(max(steady, default=float("nan")))
    result["step_at_lateness_p50_ms"] = ms(percentile(by_step_at, 50))
    result["step_at_lateness_p99_ms"] = ms(percentile(by_step_at, 99))
    result["target_lateness_p99_ms"] = 1000

    after = sorted(
        (got[r][1], lateness(r)) for r in run_ids if r in got and got[r][1] > killed_wall
    )
    first_fire = after[0][0] if after else None
    late = [at for at, lateness in after if lateness >= 1.0]
    # Never back under 1 s while timers due before the end are still waiting.
    back_under = None if len(got) < due_count else max(late) if late else first_fire
    result["recovery"] = {
        "down_s": args.down_s,
        "due_while_down": sum(1 for d in due if killed_wall <= d < restarted_wall),
        "restart_to_healthy_s": round(restart_ready_s, 2),
        "restart_to_first_fire_s": round((first_fire - restarted_wall).total_seconds(), 2)
        if first_fire
        else None,
        "restart_to_lateness_under_1s_s": round((back_under - restarted_wall).total_seconds(), 2)
        if back_under
        else None,
    }
    return result


async def fired_twice(env: dict[str, str], workspace_id: uuid.UUID) -> int:
    """Runs whose reminder was taken more than once (a second iteration): a timer fired
    again after the kill would show here. None may."""
    conn = await connect(env)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM (SELECT run_id FROM run_steps WHERE workspace_id = $1"
                " AND step_id = 'reminder' GROUP BY run_id HAVING count(*) > 1) AS twice",
                workspace_id,
            )
        )
    finally:
        await conn.close()


RECEIVED_AT = "X-Nudge-Received-At"


def received(maildir: str) -> dict[str, float]:
    """Recipient -> when the sink received their mail (epoch seconds)."""
    return {
        str(m["X-Nudge-Envelope-To"]): datetime.fromisoformat(str(m[RECEIVED_AT])).timestamp()
        for m in mailbox.Maildir(maildir, create=True)
    }


def measure_mail(args: argparse.Namespace) -> dict[str, Any]:
    """Figure 4: due reminder -> mail in the SMTP sink, through the outbox, Kafka, delivery
    (eligibility from contacts) and SMTP."""
    from nudge.contacts.v1 import contacts_pb2

    services = ("contacts", "delivery", "triggers")
    with running_system(services=services, ready=ready_grpc(*services)) as system:
        env = system.env

        async def set_up() -> tuple[uuid.UUID, list[uuid.UUID], list[str]]:
            ws = await create_workspace(env, "bench-triggers")
            people = [uuid.uuid4() for _ in range(args.mails)]
            emails = [f"cart{i}@bench.example" for i in range(args.mails)]
            await add_contacts(
                env, ws, people, emails, consent=contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
            )
            return ws, people, emails

        workspace_id, people, emails = asyncio.run(set_up())

        async def load_due() -> list[datetime]:
            conn = await connect(env)
            try:
                workflow_id = await publish(
                    conn, workspace_id, workflow("abandoned_cart", ABANDONED_CART)
                )
                first = datetime.now(UTC) + timedelta(seconds=3)
                due = [first + timedelta(seconds=i / args.mail_rate) for i in range(args.mails)]
                await waiting_runs(conn, workspace_id, workflow_id, due, contacts=people)
                return due
            finally:
                await conn.close()

        with machine_load() as load:
            due = asyncio.run(load_due())
            deadline = time.monotonic() + args.mails / args.mail_rate + args.timeout
            got: dict[str, float] = {}
            while time.monotonic() < deadline:
                got = received(env["NUDGE_MAILDIR"])
                if all(e in got for e in emails):
                    break
                time.sleep(0.2)
        latencies = [got[e] - d.timestamp() for e, d in zip(emails, due, strict=True) if e in got]
        mails_total = len(mailbox.Maildir(env["NUDGE_MAILDIR"], create=True))
    return {
        "mails": args.mails,
        "due_per_s": args.mail_rate,
        "delivered": len(latencies),
        "duplicates": mails_total - len(latencies),
        "due_to_smtp_p50_ms": ms(percentile(latencies, 50)),
        "due_to_smtp_p99_ms": ms(percentile(latencies, 99)),
        "due_to_smtp_max_ms": ms(max(latencies, default=float("nan"))),
        "target_p99_ms": 2000,
        **load,
    }


async def commit_without_flush(env: dict[str, str]) -> None:
    """``--async-commit``: the database's sessions from now on (the worker's pool) commit
    without waiting for the WAL flush, which tells how much of the event path's time is
    its commits (one per event): a diagnosis, not a setting to run with."""
    conn = await connect(env)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit TO off')
    finally:
        await conn.close()


# -- main ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = set(args.only.split(","))
    result: dict[str, Any] = {"scale": args.scale, "definitions": definitions_source()}
    result["synchronous_commit"] = "off" if args.async_commit else "on"
    # Each part on a system of its own: a worker still working off the events' backlog would
    # compete with its own timers. The worker starts once the part's data is in place.
    for part in ("events", "timers"):
        if part not in parts:
            continue
        # The events run beside contacts (unless --no-contacts), which carries out the
        # post-purchase workflow's tag commands as it would in production.
        services = ("contacts",) if part == "events" and not args.no_contacts else ()
        with running_system(services=services, ready=ready_grpc(*services)) as system:
            migrate(system.env)
            if args.async_commit:
                asyncio.run(commit_without_flush(system.env))
            result["kafka_kind"] = system.env["NUDGE_KAFKA_KIND"]
            if part == "events":
                result["events"] = measure_events(
                    system, args.scale, args.timeout, args.profile, not args.no_contacts
                )
            else:
                result["timers"] = measure_timers(system, args)
        sys.stderr.write(json.dumps(result) + "\n")
    if "mail" in parts:
        result["mail"] = measure_mail(args)
    return result


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-agent":
        timeout = float(os.environ.get("BENCH_TIMEOUT_S", "600"))
        figures = bare_agent(os.environ["KAFKA_BOOTSTRAP_SERVERS"], int(sys.argv[2]), timeout)
        Path(os.environ["BENCH_BARE_OUT"]).write_text(json.dumps(figures))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=int, default=100_000, help="pending timers (1,000,000: the issue's figures)"
    )
    parser.add_argument("--only", default="events,timers,mail", help="parts to run")
    parser.add_argument("--due-rate", type=float, default=1000.0, help="timers falling due per s")
    parser.add_argument("--due-seconds", type=float, default=40.0, help="how long they fall due")
    parser.add_argument(
        "--kill-at", type=float, default=0.5, help="share of the stream before SIGKILL"
    )
    parser.add_argument("--down-s", type=float, default=3.0, help="seconds the worker stays dead")
    parser.add_argument("--mails", type=int, default=200, help="reminders mailed (part 4)")
    parser.add_argument(
        "--mail-rate", type=float, default=10.0, help="reminders due per s (part 4)"
    )
    parser.add_argument(
        "--async-commit", action="store_true", help="synchronous_commit off (diagnosis)"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the worker (events)")
    parser.add_argument(
        "--no-contacts",
        action="store_true",
        help="events without the contacts service: every tag command fails and is retried",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a part")
    result = run(parser.parse_args())
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
