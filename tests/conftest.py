"""Fixtures shared by every test suite: the infrastructure.

``infra`` (session) provides PostgreSQL, Redis, Kafka and SMTP, choosing for each part in
the order of DESIGN.md: the URL already in the environment (``DATABASE_URL``,
``REDIS_URL``, ``KAFKA_BOOTSTRAP_SERVERS``, ``SMTP_URL``); else a container, when a Docker
engine answers; else the local stack of ``deploy/local`` on free ports, with PostgreSQL
tuned for speed and data in a temporary directory (only Kafka's jars are cached, in
``.nudge/cache``). Kafka is never a container when ``NUDGE_KAFKA`` names the broker to test
on (``make test-tansu``, CI's ``NUDGE_KAFKA=apache``): the local stack starts that one.
Where Java 17+ and Maven are, a session without ``NUDGE_KAFKA`` runs as if it said
``apache`` (:func:`pin_kafka`): a failure to start Apache Kafka fails it, instead of the
whole suite passing on Tansu.
The variables are exported into ``os.environ`` for the session, so the service code under
test finds them like it would in production, with a ``TRIGGERS_DATA_DIR`` of the session's
own (Faust's data directory, which two sessions must not share). Nothing here imports
testcontainers unless Docker answers.
"""

from __future__ import annotations

import os

# The tests run gRPC servers and clients in this process and also start servers as children
# (PostgreSQL as another user, Kafka, services). gRPC's fork handlers, run while its threads
# are busy, crashed a child between fork and exec (SIGSEGV); the children exec at once and
# need none of gRPC's state, so the handlers are turned off before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("NUDGE_DEV_MODE", "1")

import contextlib
from collections.abc import Callable, Iterator, Mapping

import pytest

from deploy.local import paths
from deploy.local.kafka import choose_kafka, detect_java_major, has_maven
from deploy.local.procs import pick_free_ports
from deploy.local.stack import PART_VARIABLE, LocalStack, run_sync
from deploy.local.topics import ensure_topics

KAFKA_IMAGE = "apache/kafka:4.1.1"


def pin_kafka(
    environ: dict[str, str] | os._Environ[str],
    java: Callable[[], int | None] = detect_java_major,
    maven: Callable[[], bool] = has_maven,
) -> str | None:
    """Set ``NUDGE_KAFKA=apache`` when nothing chose a broker and Apache Kafka is what
    the machine would run: the stack then fails instead of falling back to Tansu, which
    lacks transactions and compaction, so a run meant for Apache Kafka cannot pass on
    Tansu. Returns what it set."""
    if environ.get("KAFKA_BOOTSTRAP_SERVERS") or environ.get("NUDGE_KAFKA", "").strip():
        return None
    if choose_kafka(environ, java, maven) != "apache":
        return None
    environ["NUDGE_KAFKA"] = "apache"
    return "apache"


# What this session was given: a broker of its own (KAFKA_BOOTSTRAP_SERVERS), and the
# NUDGE_KAFKA it runs with (pinned by pin_kafka, or as given).
SESSION_KAFKA: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    pin_kafka(os.environ)
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "NUDGE_KAFKA"):
        SESSION_KAFKA[name] = os.environ.get(name, "")


def docker_available() -> bool:
    """A Docker engine answers (``NUDGE_DOCKER=0`` says not to ask)."""
    if os.environ.get("NUDGE_DOCKER") == "0":
        return False
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def containerizable(parts: list[str], environ: Mapping[str, str]) -> list[str]:
    """The parts a container may provide: not Kafka when ``NUDGE_KAFKA`` asks for a
    broker of the local stack."""
    return [p for p in parts if not (p == "kafka" and environ.get("NUDGE_KAFKA", "").strip())]


def start_containers(parts: list[str], cleanup: contextlib.ExitStack) -> dict[str, str]:
    """One container per part in ``parts``; each is removed when ``cleanup`` closes."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient
    from testcontainers.core.waiting_utils import wait_for_logs

    env: dict[str, str] = {}
    if "postgres" in parts:
        from testcontainers.postgres import PostgresContainer

        postgres = PostgresContainer(
            "postgres:16", username="nudge", password="nudge", dbname="nudge", driver=None
        ).with_command("postgres -c max_connections=200 -c fsync=off -c synchronous_commit=off")
        cleanup.enter_context(postgres)
        env["DATABASE_URL"] = postgres.get_connection_url()
    if "redis" in parts:
        from testcontainers.redis import RedisContainer

        redis = cleanup.enter_context(RedisContainer("redis:7"))
        host, port = redis.get_container_host_ip(), redis.get_exposed_port(6379)
        env["REDIS_URL"] = f"redis://{host}:{port}/0"
    if "kafka" in parts:
        # The broker must advertise the address clients reach it by, which a random port
        # mapping only tells after start: map a free host port to the same port inside.
        host = DockerClient().host()
        port = pick_free_ports(["kafka"])["kafka"]
        kafka = DockerContainer(KAFKA_IMAGE).with_bind_ports(port, port)
        settings = {
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://0.0.0.0:9093",
            "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{host}:{port}",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "4",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
            "KAFKA_NUM_PARTITIONS": "4",
            "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true",
        }
        for name, value in settings.items():
            kafka = kafka.with_env(name, value)
        cleanup.enter_context(kafka)
        wait_for_logs(kafka, "Kafka Server started", timeout=120)
        env["KAFKA_BOOTSTRAP_SERVERS"] = f"{host}:{port}"
        env["NUDGE_KAFKA_KIND"] = f"apache-kafka {KAFKA_IMAGE.split(':')[1]} (container)"
    if "smtp" in parts:
        mailpit = (
            DockerContainer("axllent/mailpit")
            .with_exposed_ports(1025, 8025)
            .with_env("MP_SMTP_AUTH_ACCEPT_ANY", "1")
            .with_env("MP_SMTP_AUTH_ALLOW_INSECURE", "1")
        )
        cleanup.enter_context(mailpit)
        wait_for_logs(mailpit, "accessible via", timeout=60)
        host = mailpit.get_container_host_ip()
        env["SMTP_URL"] = f"smtp://{host}:{mailpit.get_exposed_port(1025)}"
        env["MAILPIT_URL"] = f"http://{host}:{mailpit.get_exposed_port(8025)}"
    return env


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The infrastructure's variables (``DATABASE_URL``, ``REDIS_URL``,
    ``KAFKA_BOOTSTRAP_SERVERS``, ``NUDGE_KAFKA_KIND``, ``SMTP_URL``, and ``NUDGE_MAILDIR``
    or ``MAILPIT_URL`` to read the mail; ``TRIGGERS_DATA_DIR``), also exported into
    ``os.environ``."""
    given = {name: os.environ[name] for name in PART_VARIABLE.values() if os.environ.get(name)}
    missing = [part for part, name in PART_VARIABLE.items() if name not in given]
    saved = dict(os.environ)
    state_dir = tmp_path_factory.mktemp("nudge")
    with contextlib.ExitStack() as cleanup:
        env = dict(given)
        in_containers = containerizable(missing, os.environ)
        if in_containers and docker_available():
            env.update(start_containers(in_containers, cleanup))
        stack = LocalStack(
            state_dir=state_dir,
            ports="free",
            fast=True,
            persistent=False,
            cache_dir=paths.cache_dir(),
            environ={**os.environ, **env},
        )
        cleanup.callback(stack.stop)
        env.update(stack.start())
        run_sync(ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"]))
        if not os.environ.get("TRIGGERS_DATA_DIR"):
            triggers_data = paths.data_dir("triggers", state_dir)
            triggers_data.mkdir(parents=True, exist_ok=True)  # Faust makes the last level only
            env["TRIGGERS_DATA_DIR"] = str(triggers_data)
        os.environ.update(env)
        try:
            yield env
        finally:
            os.environ.clear()
            os.environ.update(saved)
