"""The local stack starts real PostgreSQL, Redis, Kafka (Apache or Tansu) and the SMTP sink,
and stops every process it started: one stack per state directory, interruptible start-up,
another port when a picked one was taken, and what a SIGKILLed owner left stopped.

These tests start stacks of their own (not the session's ``infra``), on free ports,
ignoring any ``DATABASE_URL``... in the environment, so they test ``deploy/local`` itself.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import cast

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from deploy.local import postgres
from deploy.local import redis as local_redis
from deploy.local.kafka import choose_kafka, resolve_kafka_jars, start_tansu
from deploy.local.paths import REPO_ROOT
from deploy.local.procs import PortInUse, ProcessRegistry, pick_free_ports, pid_alive
from deploy.local.smtp_sink import ENVELOPE_TO, MaildirReader
from deploy.local.stack import PART_VARIABLE, LocalStack
from deploy.local.topics import ensure_topics
from services.common.topics import TOPICS
from tests.conftest import SESSION_KAFKA
from tests.support import unique, wait_until

OUTSIDE_VARIABLES = {*PART_VARIABLE.values(), "NUDGE_KAFKA_KIND", "MAILPIT_URL"}


def own_environ() -> dict[str, str]:
    """The environment without the session's infrastructure, so every part starts here
    (``NUDGE_KAFKA`` stays: ``NUDGE_KAFKA=tansu pytest`` tests the stack on Tansu)."""
    return {k: v for k, v in os.environ.items() if k not in OUTSIDE_VARIABLES}


def new_stack(state_dir: Path, **options: object) -> LocalStack:
    return LocalStack(
        state_dir=state_dir,
        ports="free",
        fast=True,
        persistent=False,
        environ=own_environ(),
        **options,  # type: ignore[arg-type]
    )


def assert_all_gone(pids: list[int]) -> None:
    """Neither the processes nor anything left in their process groups."""
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    running = new_stack(tmp_path_factory.mktemp("stack"))
    running.start()
    yield running
    running.stop()


async def kafka_round_trip(bootstrap: str) -> None:
    """Create a topic, produce a record with a header, consume it back."""
    topic = unique("infra-test")
    await ensure_topics(bootstrap, {topic: 2})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, b"hello", key=b"contact-1", headers=[("traceparent", b"00-abc-01")]
        )
    finally:
        await producer.stop()
    # No consumer group: Tansu holds a JoinGroup for half the session timeout (DESIGN.md).
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",  # Tansu's "latest" is unreliable (DESIGN.md)
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=60)
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"contact-1", b"hello")
    assert list(record.headers) == [("traceparent", b"00-abc-01")]


async def test_postgres_is_16_and_has_the_nudge_database(stack: LocalStack) -> None:
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        assert (await conn.fetchval("SELECT version()")).startswith("PostgreSQL 16.")
        assert await conn.fetchval("SELECT current_database()") == "nudge"
        assert await conn.fetchval("SHOW max_connections") == "200"
    finally:
        await conn.close()


async def test_redis_answers_ping(stack: LocalStack) -> None:
    client = aioredis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        assert await cast(Awaitable[bool], client.ping())
    finally:
        await client.aclose()


async def test_kafka_carries_a_record_with_its_header(stack: LocalStack) -> None:
    assert stack.env["NUDGE_KAFKA_KIND"].startswith(("apache-kafka 4.1.1", "tansu"))
    await kafka_round_trip(stack.env["KAFKA_BOOTSTRAP_SERVERS"])


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    """The partitions of each of ``names`` that exists. Listed first: describing a topic
    that does not exist would create it (auto.create.topics.enable)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = [name for name in names if name in set(await admin.list_topics())]
        described = await admin.describe_topics(existing) if existing else []
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}


async def test_nudge_topics_are_created_idempotently(stack: LocalStack) -> None:
    """Every topic of the services, with its partition count; a second call succeeds and
    changes nothing (on a fresh broker of its own: the module's may hold them already)."""
    bootstrap = stack.env["KAFKA_BOOTSTRAP_SERVERS"]
    topics = {unique("ensure-a"): 3, unique("ensure-b"): 1}
    assert await partition_counts(bootstrap, list(topics)) == {}
    await ensure_topics(bootstrap, topics)
    assert await partition_counts(bootstrap, list(topics)) == topics
    await ensure_topics(bootstrap, topics)
    assert await partition_counts(bootstrap, list(topics)) == topics
    await ensure_topics(bootstrap)  # the services' own table
    assert await partition_counts(bootstrap, list(TOPICS)) == dict(TOPICS)


def test_smtp_sink_keeps_every_mail_for_the_reader(stack: LocalStack) -> None:
    message = EmailMessage()
    message["From"] = "shop@example.com"
    message["To"] = "ada@example.com"
    message["Subject"] = subject = unique("Welcome")
    message.set_content("Hello Ada")
    host, port = stack.env["SMTP_URL"].removeprefix("smtp://").split(":")
    with smtplib.SMTP(host, int(port), timeout=10) as smtp:
        smtp.send_message(message, to_addrs=["ada@example.com", "bcc@example.com"])

    reader = MaildirReader(stack.env["NUDGE_MAILDIR"])
    stored = next(m for m in reader.messages() if m["Subject"] == subject)
    assert stored[ENVELOPE_TO] == "ada@example.com, bcc@example.com"
    assert stored.get_content().strip() == "Hello Ada"


async def test_tansu_carries_a_record_with_its_header(tmp_path: Path) -> None:
    registry = ProcessRegistry()
    try:
        env = await start_tansu(
            registry, port=pick_free_ports(["tansu"])["tansu"], log_dir=tmp_path
        )
        assert env["NUDGE_KAFKA_KIND"].startswith("tansu 0.")
        await kafka_round_trip(env["KAFKA_BOOTSTRAP_SERVERS"])
        pids = [child.pid for child in registry.children]
    finally:
        registry.stop_all()
    assert_all_gone(pids)


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    stack = new_stack(tmp_path)
    try:
        stack.start()
        pids = stack.pids()
        assert len(pids) == 4
    finally:
        stack.stop()
    assert_all_gone(pids)
    assert stack.pids() == []


async def test_persistent_data_survives_a_restart(tmp_path: Path) -> None:
    def start() -> LocalStack:
        stack = LocalStack(
            state_dir=tmp_path,
            ports="free",
            persistent=True,
            environ=own_environ(),
            parts=("postgres", "kafka"),
        )
        stack.start()
        return stack

    first = await asyncio.to_thread(start)
    topic = unique("kept")
    try:
        conn = await asyncpg.connect(first.env["DATABASE_URL"])
        await conn.execute("CREATE TABLE kept (id int)")
        await conn.close()
        await ensure_topics(first.env["KAFKA_BOOTSTRAP_SERVERS"], {topic: 1})
        kind = first.env["NUDGE_KAFKA_KIND"]
    finally:
        await asyncio.to_thread(first.stop)

    second = await asyncio.to_thread(start)
    try:
        conn = await asyncpg.connect(second.env["DATABASE_URL"])
        assert await conn.fetchval("SELECT to_regclass('kept') IS NOT NULL")
        await conn.close()
        if kind.startswith("apache-kafka"):  # Tansu keeps topics in memory only
            admin = AIOKafkaAdminClient(bootstrap_servers=second.env["KAFKA_BOOTSTRAP_SERVERS"])
            await admin.start()
            try:
                assert topic in await admin.list_topics()
            finally:
                await admin.close()
    finally:
        await asyncio.to_thread(second.stop)
        postgres.remove_home(tmp_path / "data" / "postgres")  # as root: outside tmp_path


def test_cached_kafka_jars_need_neither_maven_nor_network(
    stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not stack.env["NUDGE_KAFKA_KIND"].startswith("apache-kafka"):
        pytest.skip("Kafka here is not Apache Kafka")
    monkeypatch.setenv("PATH", str(tmp_path))  # no mvn to run
    libs = resolve_kafka_jars(stack.cache_dir, tmp_path / "maven.log")
    assert (libs / "kafka_2.13-4.1.1.jar").exists()
    assert not (tmp_path / "maven.log").exists()


async def test_the_infra_fixture_exports_its_variables(infra: dict[str, str]) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "SMTP_URL"):
        assert os.environ[name] == infra[name]
    conn = await asyncpg.connect(infra["DATABASE_URL"])
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    await ensure_topics(infra["KAFKA_BOOTSTRAP_SERVERS"])  # already there: returns at once


def test_a_failing_apache_kafka_falls_back_to_tansu_with_the_error_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    if not shutil.which("java"):
        pytest.skip("no Java: Apache Kafka is never tried here")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mvn").write_text(
        "#!/bin/sh\necho 'Could not resolve dependencies (offline)'\nexit 1\n"
    )
    (fake / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    environ = {k: v for k, v in own_environ().items() if k != "NUDGE_KAFKA"}
    stack = LocalStack(
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "cache",  # empty: Maven must run, and fails
        ports="free",
        persistent=False,
        environ=environ,
        parts=("kafka",),
    )
    try:
        env = stack.start()
    finally:
        stack.stop()
    assert env["NUDGE_KAFKA_KIND"].startswith("tansu")
    assert "Could not resolve dependencies (offline)" in capfd.readouterr().err
    # Loud: the summary of make run (and make infra) carries it.
    assert len(stack.warnings) == 1
    assert "Kafka is Tansu, NOT Apache Kafka" in stack.warnings[0]
    assert "failed (1)" in stack.warnings[0]
    assert not (tmp_path / "cache" / "kafka-4.1.1" / "complete").exists()


# -- one stack per state directory ---------------------------------------------------------


def test_a_second_stack_on_the_same_state_dir_is_refused_while_the_first_runs(
    tmp_path: Path,
) -> None:
    first = new_stack(tmp_path, parts=("smtp",))
    first.start()
    try:
        second = new_stack(tmp_path, parts=("smtp",))
        with pytest.raises(RuntimeError, match=rf"another Nudge stack \(pid {os.getpid()}\)"):
            second.start()
        assert all(pid_alive(pid) for pid in first.pids()), "the refused one stops nothing"
    finally:
        first.stop()
    third = new_stack(tmp_path, parts=("smtp",))  # free again once the first stopped
    try:
        third.start()
    finally:
        third.stop()


STACK_OWNER = """
import signal, sys
from pathlib import Path
from deploy.local.stack import LocalStack

stack = LocalStack(state_dir=Path(sys.argv[1]), ports="free", persistent=False, parts=("smtp",))
stack.start()
print(stack.pids()[0], stack._data_root, flush=True)
signal.alarm(600)  # bounded, should the test fail to kill us
signal.pause()  # alive until the test kills this owner
"""


def test_a_sigkilled_stack_frees_its_state_dir_and_the_next_stops_what_it_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flock dies with its process; the parts (in sessions of their own) do not, and
    are stopped by the next start, which also removes the temporary data."""
    monkeypatch.setenv("NUDGE_HOME", str(tmp_path / "home"))  # the sessions folder
    state_dir = tmp_path / "state"
    owner = subprocess.Popen(
        [sys.executable, "-c", STACK_OWNER, str(state_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if k not in OUTSIDE_VARIABLES},
    )
    try:
        assert owner.stdout is not None
        pid_text, data_root = owner.stdout.readline().split()
    finally:
        owner.kill()
        owner.wait()
    stale = int(pid_text)
    assert pid_alive(stale) and Path(data_root).is_dir()

    stack = new_stack(state_dir, parts=("smtp",))
    try:
        stack.start()
        assert not pid_alive(stale)
        assert not Path(data_root).exists()
    finally:
        stack.stop()
    assert not list((tmp_path / "home" / "run" / "sessions").glob("*.json"))


# -- ports -----------------------------------------------------------------------------------


def test_a_picked_port_taken_before_the_start_is_replaced(tmp_path: Path) -> None:
    stack = new_stack(tmp_path, parts=("smtp",))
    taken = stack.ports["smtp"]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        try:
            env = stack.start()
        finally:
            stack.stop()
    assert stack.ports["smtp"] != taken
    assert env["SMTP_URL"] == f"smtp://127.0.0.1:{stack.ports['smtp']}"


def test_a_part_that_fails_to_bind_its_picked_port_is_started_again_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port is taken between the check and redis-server's bind: the child exits with
    "Address already in use", and the part is retried once on a new port."""
    monkeypatch.setattr(local_redis, "require_free_port", lambda port, what: None)
    stack = new_stack(tmp_path, parts=("redis",))
    taken = stack.ports["redis"]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        try:
            env = stack.start()
        finally:
            stack.stop()
    assert stack.ports["redis"] != taken
    assert env["REDIS_URL"] == f"redis://127.0.0.1:{stack.ports['redis']}/0"


def test_a_fixed_port_that_is_taken_is_an_error_naming_its_holder(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = LocalStack(
            state_dir=tmp_path, ports={"smtp": port}, environ=own_environ(), parts=("smtp",)
        )
        with pytest.raises(PortInUse, match=f"port {port} .* in use by pid {os.getpid()}"):
            stack.start()
    assert stack.pids() == []


# -- interrupting the start-up ---------------------------------------------------------------


class Interrupt(BaseException):
    """What the signal handler raises here (Ctrl-C raises KeyboardInterrupt)."""


def test_an_interrupted_start_up_stops_at_once_without_falling_back_to_tansu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while Maven resolves Kafka: Maven is killed, nothing waits for its timeout,
    and Tansu is not started in Apache Kafka's place."""
    if not shutil.which("java"):
        pytest.skip("no Java: Apache Kafka is never tried here")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mvn").write_text(f"#!/bin/sh\necho $$ > {tmp_path}/mvn.pid\nexec sleep 600\n")
    (fake / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    environ = {k: v for k, v in own_environ().items() if k != "NUDGE_KAFKA"}  # may fall back
    stack = LocalStack(
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "cache",  # empty: Maven must run
        ports="free",
        persistent=False,
        environ=environ,
        parts=("kafka", "smtp"),
    )

    mvn_pid = tmp_path / "mvn.pid"

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupt

    interrupted_at: list[float] = []

    def interrupt_once_maven_runs() -> None:
        wait_until(lambda: mvn_pid.exists() and mvn_pid.read_text().strip(), timeout=60)
        interrupted_at.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGALRM)  # handled in the main thread, like Ctrl-C

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        threading.Thread(target=interrupt_once_maven_runs, daemon=True).start()
        with pytest.raises(Interrupt):
            stack.start()
        # Both ends on the monotonic clock (a file's mtime is wall-clock time).
        took = time.monotonic() - interrupted_at[0]
    finally:
        signal.signal(signal.SIGALRM, previous)
        stack.stop()
    assert took < 10, f"start() returned {took:.1f}s after the interrupt"
    assert stack.pids() == []
    assert not pid_alive(int(mvn_pid.read_text())), "Maven was killed"
    assert "falling back to Tansu" not in capfd.readouterr().err


def test_a_session_where_apache_kafka_runs_cannot_pass_on_tansu() -> None:
    """With Java 17+ and Maven here, this session names its broker (tests/conftest.py pins
    NUDGE_KAFKA=apache when nothing did): Apache Kafka failing to start fails the run."""
    if choose_kafka({"NUDGE_KAFKA": ""}) != "apache":
        pytest.skip("no Java 17+ and Maven: Tansu is the only broker here")
    if SESSION_KAFKA["KAFKA_BOOTSTRAP_SERVERS"]:
        pytest.skip("this session was given a broker: none is started")
    assert SESSION_KAFKA["NUDGE_KAFKA"] in ("apache", "tansu")
