"""Membership survives segmentation dying under load: the service (a real child process,
``python -m services.segmentation``) is killed with SIGKILL while it works through a stream of
contact changes; a new process resumes. Every transition appears on the topic under exactly
one event id (a copy may be republished by the at-least-once relay, never a second event), in
order per contact, and the stored memberships equal a fresh evaluation.

The child has its own schema, consumer group (positioned at the end of the input topics, so
it reads only this test's events) and membership topic, so that the session's in-process
segmentation service and other tests do not mix with it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from services.common.db import create_pool
from services.common.healthcheck import check_grpc
from services.common.topics import CONTACTS_EVENTS, SHOP_EVENTS, TRACKING_EVENTS
from services.segmentation import membership
from services.segmentation.adapters import membership_sql
from tests.integration.segmentation.test_membership_kafka import MembershipLog, membership_log
from tests.integration.segmentation.test_read_model import Topic
from tests.support import eventually, free_port, unique, wait_until

CONTACTS = 400
VERSIONS = 6  # vip off, on, off, on, off, on: five transitions each


class Segmentation:
    """``python -m services.segmentation`` as a child process."""

    def __init__(self, tmp_path: Path, schema: str, group: str, topic: str) -> None:
        self.port = free_port()
        self.log = tmp_path / f"segmentation-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if k != "NUDGE_BIND_HOST"}
        env.update(
            SEGMENTATION_GRPC_PORT=str(self.port),
            SEGMENTATION_DATABASE_SCHEMA=schema,
            SEGMENTATION_CONSUMER_GROUP=group,
            SEGMENTATION_MEMBERSHIP_TOPIC=topic,
            NUDGE_INTERNAL_TOKEN=os.environ.get("NUDGE_INTERNAL_TOKEN", secrets.token_urlsafe(32)),
            NUDGE_LOG_FORMAT="text",
        )
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.segmentation"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.serving, timeout=90)

    def serving(self) -> bool:
        assert self.process.poll() is None, self.log.read_text(errors="replace")[-3000:]
        return check_grpc(f"127.0.0.1:{self.port}", "", timeout=1) is None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL: no clean-up of any kind
        self.process.wait(timeout=30)


@pytest.fixture
def children() -> Iterator[list[Segmentation]]:
    started: list[Segmentation] = []
    yield started
    for child in started:
        child.kill()


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"], acks="all")
    await p.start()
    yield p
    await p.stop()


async def new_topic(bootstrap: str) -> str:
    name = unique("test.membership")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 4, 1)])
    finally:
        await admin.close()
    return name


async def group_at_the_end(producer: AIOKafkaProducer, bootstrap: str, group: str) -> None:
    """Commit the group's offsets at the end of every input topic: it reads only what
    comes next (not the whole session's history)."""
    partitions = [
        TopicPartition(topic, p)
        for topic in (CONTACTS_EVENTS, SHOP_EVENTS, TRACKING_EVENTS)
        for p in await producer.partitions_for(topic)
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        await consumer.commit({tp: await consumer.position(tp) for tp in partitions})
    finally:
        await consumer.stop()


def distinct(log: MembershipLog, contact_id: str) -> list[tuple[str, str]]:
    """The contact's (event id, transition) in the order first read, copies left out."""
    seen: dict[str, str] = {}
    for e in log.of(contact_id):
        seen.setdefault(e.event_id, e.name)
    return list(seen.items())


async def test_killed_mid_stream_every_transition_once_and_memberships_exact(
    infra: dict[str, str],
    producer: AIOKafkaProducer,
    children: list[Segmentation],
    tmp_path: Path,
) -> None:
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    schema = f"seg_kill_{uuid.uuid4().hex[:8]}"
    group = unique("seg-kill")
    topic = await new_topic(bootstrap)
    await group_at_the_end(producer, bootstrap, group)
    ws = str(uuid.uuid4())
    source = Topic(producer, ws)
    people = [str(uuid.uuid4()) for _ in range(CONTACTS)]
    expected = ["vip:ENTERED/EVENT", "vip:EXITED/EVENT"] * 2 + ["vip:ENTERED/EVENT"]

    async def wave(versions: range) -> None:
        for version in versions:
            sends = [
                source.updated(p, version, vip=version % 2 == 0)
                if version > 1
                else source.created(p, version, vip=False)
                for p in people
            ]
            await asyncio.gather(*sends)

    async with membership_log(bootstrap, ws, topic) as log:
        children.append(Segmentation(tmp_path, schema, group, topic))
        await wave(range(1, 3))

        def total() -> int:
            return sum(len(distinct(log, p)) for p in people)

        await eventually(lambda: total() >= CONTACTS // 3, timeout=120, interval=0.05)
        # Everything else is on the input topics before the kill: the child is working
        # through it (its consumer, batches, relay busy) when it dies.
        before = total()
        await wave(range(3, VERSIONS + 1))
        await eventually(lambda: total() > before, timeout=120, interval=0.01)
        children[0].kill()
        at_kill = total()
        assert at_kill < CONTACTS * len(expected), "killed too late to test anything"

        children.append(Segmentation(tmp_path, schema, group, topic))

        def all_read() -> bool:
            return total() >= CONTACTS * len(expected)

        await eventually(all_read, timeout=180, interval=0.2)
        for p in people:
            names = [name for _, name in distinct(log, p) if name.startswith("vip:")]
            assert names == expected, (p, names)

    pool = await create_pool(os.environ["DATABASE_URL"], schema)
    try:
        assert await stored(pool, ws) == await fresh(pool, ws)
        assert {s for s, _ in await stored(pool, ws)} == {"vip"}
    finally:
        await pool.close()


async def stored(pool: asyncpg.Pool, ws: str) -> set[tuple[str, str]]:
    rows = await pool.fetch(
        "SELECT segment_id, contact_id FROM memberships WHERE workspace_id = $1", uuid.UUID(ws)
    )
    return {(r["segment_id"], str(r["contact_id"])) for r in rows}


async def fresh(pool: asyncpg.Pool, ws: str) -> set[tuple[str, str]]:
    """Every segment evaluated now for every profile of the workspace."""
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        contacts = [
            str(r["contact_id"])
            for r in await conn.fetch(
                "SELECT contact_id FROM profiles WHERE workspace_id = $1", uuid.UUID(ws)
            )
        ]
        compiled = membership_sql.compile_workspace(await membership.workspace_segments(conn, ws))
        result = await membership_sql.evaluate(conn, compiled, ws, [(c, now) for c in contacts])
    return {
        (segment_id, contact)
        for contact, (members, _) in result.items()
        for segment_id, member in zip(compiled.segment_ids, members, strict=True)
        if member
    }
