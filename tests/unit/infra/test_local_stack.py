"""The pure parts of ``deploy/local``: port picking, which Kafka to run, the services'
environment, the restart backoff, the mail store, who owns a record, the signal handler,
interrupting run_sync; no process is started here."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.smtp import Envelope

from deploy.local import paths, postgres, procs
from deploy.local import topics as local_topics
from deploy.local.kafka import choose_kafka, java_major, new_cluster_id, server_properties
from deploy.local.postgres import socket_dir_for
from deploy.local.procs import (
    ephemeral_port_range,
    owner_state,
    pick_free_ports,
    pick_range,
    port_is_free,
    this_process,
)
from deploy.local.smtp_sink import ENVELOPE_TO, RECEIVED_AT, MaildirHandler, MaildirReader
from deploy.local.stack import LocalStack, parts_to_start, run_sync
from deploy.local.supervisor import (
    DEFAULT_PORTS,
    SECRETS,
    SERVICES,
    banner,
    load_secrets,
    restart_delay,
    service_env,
    service_port,
    service_ports,
    write_private,
)
from services.common.topics import TOPICS
from tests.conftest import pin_kafka
from tests.unit.deploy.test_compose import _alias_names, settings_class


def never() -> object:
    raise AssertionError("this probe must not run")


# -- ports -------------------------------------------------------------------------------


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = pick_free_ports(["a", "b", "c", "d", "e"])
    assert sorted(ports) == ["a", "b", "c", "d", "e"]
    assert len(set(ports.values())) == 5
    assert all(port_is_free(port) for port in ports.values())


def test_free_ports_are_picked_below_the_ephemeral_range() -> None:
    """The kernel hands out ephemeral ports to every outgoing connection: a port picked
    there may be some client's by the time the part binds it."""
    ephemeral_low, _ = ephemeral_port_range()
    low, high = pick_range()
    ports = pick_free_ports([str(n) for n in range(50)])
    assert all(low <= port <= high < ephemeral_low for port in ports.values())
    assert len(set(ports.values())) == 50


def test_ports_to_avoid_are_not_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procs, "pick_range", lambda: (20000, 20002))
    assert pick_free_ports(["a"], avoid={20000, 20001}) == {"a": 20002}


@pytest.mark.parametrize(
    ("ephemeral", "expected"),
    [
        ((32768, 60999), (20000, 32000)),  # Linux's default
        ((25000, 60999), (20000, 24999)),  # cut at the ephemeral range
        ((1024, 40000), (40001, 65535)),  # no room below: above it
    ],
)
def test_the_pick_range_stays_out_of_the_ephemeral_range(
    ephemeral: tuple[int, int], expected: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(procs, "ephemeral_port_range", lambda: ephemeral)
    assert pick_range() == expected


def test_a_bound_port_is_not_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])


# -- which Kafka -------------------------------------------------------------------------


def test_an_external_broker_wins_over_everything() -> None:
    environ = {"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", "NUDGE_KAFKA": "tansu"}
    assert choose_kafka(environ, java=never, maven=never) == "external"  # type: ignore[arg-type]


@pytest.mark.parametrize("forced", ["apache", "tansu", "TANSU"])
def test_nudge_kafka_forces_a_choice_without_probing(forced: str) -> None:
    choice = choose_kafka({"NUDGE_KAFKA": forced}, java=never, maven=never)  # type: ignore[arg-type]
    assert choice == forced.lower()


def test_an_unknown_forced_kafka_is_refused() -> None:
    with pytest.raises(ValueError, match="NUDGE_KAFKA"):
        choose_kafka({"NUDGE_KAFKA": "redpanda"})


@pytest.mark.parametrize(
    ("java", "maven", "expected"),
    [(17, True, "apache"), (21, True, "apache"), (11, True, "tansu"), (17, False, "tansu")],
)
def test_apache_kafka_needs_java_17_and_maven(java: int, maven: bool, expected: str) -> None:
    assert choose_kafka({}, java=lambda: java, maven=lambda: maven) == expected


def test_no_java_means_tansu() -> None:
    assert choose_kafka({}, java=lambda: None, maven=lambda: True) == "tansu"


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ("no java here", None),
    ],
)
def test_java_major_version_is_read_from_java_version(text: str, major: int | None) -> None:
    assert java_major(text) == major


def test_cluster_ids_look_like_kafkas() -> None:
    ids = {new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 22 and not i.startswith("-") and "=" not in i for i in ids)


def test_broker_listens_only_on_loopback_with_a_single_node_quorum(tmp_path: Path) -> None:
    text = server_properties(tmp_path, 19092, 19093)
    assert "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093" in text
    assert "controller.quorum.voters=1@127.0.0.1:19093" in text
    assert "offsets.topic.replication.factor=1" in text


# -- the stack ---------------------------------------------------------------------------


def test_a_part_whose_variable_is_set_is_not_started() -> None:
    environ = {"DATABASE_URL": "postgresql://db/x", "SMTP_URL": "smtp://mail:25"}
    assert parts_to_start(environ) == ["redis", "kafka"]


def test_a_fully_configured_environment_starts_nothing_and_passes_through(
    tmp_path: Path,
) -> None:
    environ = {
        "DATABASE_URL": "postgresql://db/x",
        "REDIS_URL": "redis://cache:6379/0",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        "SMTP_URL": "smtp://mail:1025",
        "MAILPIT_URL": "http://mail:8025",
    }
    stack = LocalStack(state_dir=tmp_path, ports="free", persistent=False, environ=environ)
    try:
        env = stack.start()
        assert stack.pids() == []
    finally:
        stack.stop()
    assert env == {**environ, "NUDGE_KAFKA_KIND": "external"}


def test_the_postgres_socket_moves_to_tmp_when_the_path_is_too_long(tmp_path: Path) -> None:
    assert socket_dir_for(Path("/srv/n/data/postgres"), 5432) == Path("/srv/n/data/pgsock")
    deep = Path("/" + "x" * 120) / "postgres"
    assert socket_dir_for(deep, 5432) == Path("/tmp/nudge-pgsock-5432")


def test_a_postgres_home_pointer_names_only_a_home_under_var_lib_nudge_pg(
    tmp_path: Path,
) -> None:
    """remove_home removes what the pointer names: never anything but a home we made."""
    data = tmp_path / "data" / "postgres"
    data.parent.mkdir()
    pointer = postgres.home_pointer(data)
    assert pointer == tmp_path / "data" / "postgres.home"
    for elsewhere in ("/", "/root", "/var/lib/nudge-pg", "/var/lib/nudge-pg/../x", str(tmp_path)):
        pointer.write_text(elsewhere + "\n")
        assert postgres.read_home(data) is None, elsewhere
    pointer.write_text("/var/lib/nudge-pg/0123abcd\n")
    assert postgres.read_home(data) == Path("/var/lib/nudge-pg/0123abcd")


def test_a_failing_useradd_is_a_readable_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_user(name: str) -> object:
        raise KeyError(name)

    def no_useradd(*args: object, **kwargs: object) -> object:
        raise FileNotFoundError(2, "No such file or directory", "useradd")

    monkeypatch.setattr(postgres.os, "geteuid", lambda: 0)
    monkeypatch.setattr(postgres.pwd, "getpwnam", no_user)
    monkeypatch.setattr(postgres.subprocess, "run", no_useradd)
    with pytest.raises(RuntimeError, match=r"could not be made \(useradd: .*No such file"):
        postgres.ensure_pg_user()


def test_a_data_dir_of_another_user_is_a_readable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", denied)
    with pytest.raises(RuntimeError, match="not readable by this user"):
        postgres.has_cluster(tmp_path / "postgres")


def test_the_topics_are_those_of_the_services() -> None:
    assert local_topics.TOPICS is TOPICS


# -- the services' environment -----------------------------------------------------------


def test_service_env_points_every_client_at_its_server() -> None:
    ports = {**DEFAULT_PORTS, "CONTACTS_GRPC_PORT": 6001, "GATEWAY_HTTP_PORT": 6002}
    env = service_env({"DATABASE_URL": "postgresql://db/x"}, ports, base={})
    assert env["DATABASE_URL"] == "postgresql://db/x"
    assert env["CONTACTS_GRPC_PORT"] == "6001"
    assert env["NUDGE_CONTACTS_ADDR"] == "127.0.0.1:6001"
    assert env["NUDGE_GATEWAY_URL"] == "http://127.0.0.1:6002"
    assert env["NUDGE_TRACKING_URL"] == "http://127.0.0.1:8081"
    assert env["PYTHONUNBUFFERED"] == "1"


def test_triggers_keep_their_data_under_the_state_dir(tmp_path: Path) -> None:
    """Not in Faust's shared default, /tmp/nudge-triggers, which two runs would share."""
    env = service_env({}, state_dir=tmp_path, base={})
    assert env["TRIGGERS_DATA_DIR"] == str(tmp_path / "data" / "triggers")
    assert (tmp_path / "data" / "triggers").is_dir()  # Faust would make the last level only
    assert service_env({}, base={})["TRIGGERS_DATA_DIR"] == str(paths.data_dir("triggers"))
    mine = service_env({}, state_dir=tmp_path, base={"TRIGGERS_DATA_DIR": "/srv/faust"})
    assert mine["TRIGGERS_DATA_DIR"] == "/srv/faust"


def test_a_service_port_is_read_from_its_variable() -> None:
    env = service_env({}, {"GATEWAY_HTTP_PORT": 9000}, base={})
    assert service_port("gateway", env) == 9000
    assert service_port("contacts", env) == 50051
    assert service_port("fake-thing", {"FAKE_THING_HTTP_PORT": "7"}) == 7
    assert service_port("nameless", env) is None


def test_a_secret_set_in_the_environment_wins_over_the_kept_one() -> None:
    kept = {name: f"kept-{name}" for name in SECRETS}
    env = service_env({}, base={"NUDGE_LINK_SECRET": "mine"}, secrets_=kept)
    assert env["NUDGE_LINK_SECRET"] == "mine"
    assert env["NUDGE_INTERNAL_TOKEN"] == "kept-NUDGE_INTERNAL_TOKEN"


def test_the_services_of_make_run_are_in_development_mode_on_the_loopback() -> None:
    """NUDGE_DEV_MODE=1 (the services accept development values only then) and every
    server on 127.0.0.1; a developer may still ask for another address."""
    env = service_env({}, base={"NUDGE_DEV_MODE": "0"})
    assert env["NUDGE_DEV_MODE"] == "1"
    assert env["NUDGE_BIND_HOST"] == "127.0.0.1"
    assert service_env({}, base={"NUDGE_BIND_HOST": "0.0.0.0"})["NUDGE_BIND_HOST"] == "0.0.0.0"


def test_make_run_makes_every_secret_a_service_reads() -> None:
    """Each secret field (``repr=False``) of every service's Settings is one of the
    secrets ``make run`` generates and keeps, so none runs on a development default."""
    read = set()
    for name in SERVICES:
        cls = settings_class(name)
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field_name, field in cls.model_fields.items():
            if not field.repr:
                names = _alias_names(field.validation_alias) or [prefix + field_name]
                read.add(names[0].upper())
    assert read == set(SECRETS)


def test_tests_pin_apache_kafka_where_it_can_run_so_that_they_never_fall_back() -> None:
    def java() -> int:
        return 17

    def maven() -> bool:
        return True

    def none() -> None:
        return None

    environ: dict[str, str] = {}
    assert pin_kafka(environ, java, maven) == "apache"
    assert environ == {"NUDGE_KAFKA": "apache"}
    for chosen in ({"NUDGE_KAFKA": "tansu"}, {"KAFKA_BOOTSTRAP_SERVERS": "k:9092"}):
        assert pin_kafka(dict(chosen), java, maven) is None  # somebody chose: left alone
    environ = {}
    assert pin_kafka(environ, none, maven) is None and environ == {}  # no Java: Tansu only


def test_the_summary_of_make_run_shows_every_warning(tmp_path: Path) -> None:
    env = {"NUDGE_GATEWAY_URL": "http://127.0.0.1:8080", "KAFKA_BOOTSTRAP_SERVERS": "k:1"}
    assert "WARNING" not in banner(env, {"api_key": "k"}, tmp_path)
    shown = banner(env, {"api_key": "k"}, tmp_path, ["Kafka is Tansu, NOT Apache Kafka"])
    assert "  WARNING: Kafka is Tansu, NOT Apache Kafka\n" in shown


def test_secrets_are_made_once_and_kept(tmp_path: Path) -> None:
    first = load_secrets(tmp_path)
    assert set(first) == set(SECRETS) and all(len(v) >= 32 for v in first.values())
    assert load_secrets(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600


def test_private_files_are_never_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "demo.json"
    old_umask = os.umask(0)  # the worst umask: files would be made 0666
    try:
        write_private(path, "{}")
        path.chmod(0o644)  # a kept file with loose permissions is tightened on rewrite
        write_private(path, '{"api_key": "x"}')
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == '{"api_key": "x"}'
    assert [p.name for p in tmp_path.iterdir()] == ["demo.json"]


def test_service_ports_can_be_overridden_one_by_one() -> None:
    ports = service_ports({"GATEWAY_HTTP_PORT": "9000"})
    assert ports["GATEWAY_HTTP_PORT"] == 9000
    assert ports["CONTACTS_GRPC_PORT"] == 50051


def test_restarts_back_off_and_stay_under_five_a_minute() -> None:
    assert restart_delay([], now=100.0) == 0.5
    assert restart_delay([99.0], now=100.0) == 1.0
    assert restart_delay([10.0], now=100.0) == 0.5  # older than a minute: forgotten
    assert restart_delay([95.0, 96.0, 97.0, 98.0], now=100.0) == 8.0
    # Five in the last minute: wait until the oldest of them is a minute old.
    assert restart_delay([60.0, 70.0, 80.0, 90.0, 99.0], now=100.0) == 20.0


# -- the mail store ----------------------------------------------------------------------


async def test_the_sink_stores_a_message_the_reader_returns(tmp_path: Path) -> None:
    envelope = Envelope()
    envelope.mail_from = "shop@example.com"
    envelope.rcpt_tos = ["ada@example.com"]
    envelope.original_content = (
        b"From: shop@example.com\r\nTo: ada@example.com\r\nSubject: Hi\r\n\r\nHello Ada\r\n"
    )
    handler = MaildirHandler(tmp_path / "mail")
    answer = await handler.handle_DATA(None, None, envelope)  # type: ignore[arg-type]
    assert answer.startswith("250")
    [message] = MaildirReader(tmp_path / "mail").messages()
    assert message["Subject"] == "Hi"
    assert message[ENVELOPE_TO] == "ada@example.com"
    assert message[RECEIVED_AT]
    assert message.get_content().strip() == "Hello Ada"


def test_an_empty_maildir_reads_as_no_mail(tmp_path: Path) -> None:
    assert MaildirReader(tmp_path / "nothing").messages() == []


# -- who owns a record ---------------------------------------------------------------------


def test_this_process_owns_its_records_while_it_lives() -> None:
    assert owner_state(this_process()) == "alive"


def test_an_owner_whose_pid_is_gone_or_reused_is_dead() -> None:
    me = this_process()
    assert owner_state({**me, "start": me["start"] + 1}) == "dead"  # the pid was reused
    assert owner_state({**me, "pid": 2**22 + 1}) == "dead"  # above pid_max: never alive
    assert owner_state({**me, "boot": "another-boot"}) == "dead"  # rebooted since
    assert owner_state(None) == "dead"  # the format before records named their owner


def test_an_owner_in_another_pid_namespace_is_never_judged() -> None:
    """Its pids mean nothing here: its record is left alone, not reaped."""
    assert owner_state({**this_process(), "pidns": "pid:[1]"}) == "unknown"


# -- signals and interruptions -------------------------------------------------------------


def test_sigterm_stops_like_ctrl_c() -> None:
    """KeyboardInterrupt, not SystemExit: pytest takes a SystemExit for a failed test and
    goes on; a KeyboardInterrupt stops the session and runs its teardown."""
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        procs._exit_on_signal(signal.SIGTERM, None)


class Boom(BaseException):
    pass


def test_run_sync_is_interrupted_at_once_and_cancels_its_coroutine() -> None:
    """An exception in the waiting thread (Ctrl-C) sets the stop event and cancels the
    coroutine instead of waiting for it to end by itself."""
    unwound = threading.Event()

    async def waits_long() -> None:
        try:
            await asyncio.Event().wait()  # ends only by cancellation
        finally:
            unwound.set()

    def interrupt(signum: int, frame: object) -> None:
        raise Boom

    stop = threading.Event()
    previous = signal.signal(signal.SIGALRM, interrupt)
    began = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Boom):
            run_sync(waits_long(), stop)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - began < 5
    assert stop.is_set() and unwound.is_set()


def test_run_sync_returns_the_coroutines_result() -> None:
    async def answer() -> int:
        return 42

    assert run_sync(answer()) == 42


@pytest.mark.parametrize(
    ("mem_total_kb", "expected_mb"),
    [
        (512 * 1024, 128),  # a small machine keeps initdb's default
        (4 * 1024 * 1024, 512),  # an eighth of 4 GiB
        (24 * 1024 * 1024, 1024),  # at most 1 GiB
    ],
)
def test_the_durable_servers_shared_buffers_follow_the_machines_memory(
    mem_total_kb: int, expected_mb: int
) -> None:
    assert postgres.shared_buffers_mb(mem_total_kb) == expected_mb
    assert 128 <= postgres.shared_buffers_mb() <= 1024  # this machine's /proc/meminfo
