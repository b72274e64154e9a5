"""``make run`` (``python -m deploy.local run``) as a user runs it: started in a terminal,
stopped with Ctrl-C. SIGINT goes to that process alone (every child it starts is in a
session of its own, out of the terminal's reach), and it must stop every one of them and
keep the data.

On free ports and a state directory of its own (``NUDGE_HOME``), with the Kafka jars of
this session's cache, so it collides with nothing and downloads nothing.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import asyncpg

from deploy.local import paths, postgres
from deploy.local.procs import pick_free_ports, reap_stale
from deploy.local.stack import PORT_VARIABLES, LocalStack, run_sync
from deploy.local.supervisor import DEFAULT_PORTS, SECRETS, SERVICES
from tests.integration.infra.test_stack import OUTSIDE_VARIABLES, assert_all_gone, own_environ
from tests.support import wait_until

START_TIMEOUT = 300.0  # the whole system on a loaded 2-core machine
STOP_TIMEOUT = 120.0


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            # 32-bit words in host (little-endian) order.
            raw = b"".join(
                bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)
            )
            ip = ipaddress.ip_address(raw)
            # A JVM listens on IPv6 sockets: 127.0.0.1 is then ::ffff:127.0.0.1.
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            found.add((str(ip), int(port, 16)))
    return found


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def recorded(record: Path) -> dict[str, int]:
    """name -> pid of the children in a record of deploy.local.procs."""
    return {entry["name"]: entry["pid"] for entry in json.loads(record.read_text())["children"]}


def test_sigint_stops_everything_make_run_started_and_the_data_survives(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    try:
        assert_sigint_stops_make_run(tmp_path, home)
    finally:
        postgres.remove_home(home / "data" / "postgres")  # as root: outside the state dir


def assert_sigint_stops_make_run(tmp_path: Path, home: Path) -> None:
    cache = paths.cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(cache, target_is_directory=True)  # the jars, resolved once
    ports = pick_free_ports([*PORT_VARIABLES.values(), *DEFAULT_PORTS])
    env = {
        **{k: v for k, v in os.environ.items() if k not in OUTSIDE_VARIABLES},
        "NUDGE_HOME": str(home),
        **{name: str(port) for name, port in ports.items()},
        "NO_COLOR": "1",
    }
    # The session's own (TRIGGERS_DATA_DIR, secrets of other tests' services): make run
    # makes them, as it does from a developer's shell.
    for name in ("TRIGGERS_DATA_DIR", "NUDGE_BIND_HOST", "NUDGE_DEV_MODE", *SECRETS):
        env.pop(name, None)
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "deploy.local", "run"],
            cwd=paths.REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # nothing else of ours gets the signal
        )
    database_url = f"postgresql://nudge@127.0.0.1:{ports['NUDGE_POSTGRES_PORT']}/nudge"
    try:
        wait_until(
            lambda: run.poll() is not None or "Nudge is running" in log.read_text(),
            timeout=START_TIMEOUT,
        )
        assert run.poll() is None, f"make run exited:\n{log.read_text()[-3000:]}"
        infra = recorded(home / "run" / "stack.json")
        services = recorded(home / "run" / "services.json")
        assert {"postgres", "redis", "smtp-sink"} <= set(infra) and {"kafka", "tansu"} & set(infra)
        assert set(services) == set(SERVICES)

        # The infrastructure listens on the loopback only.
        for name, pid in infra.items():
            addresses = listening_addresses(pid)
            assert addresses, f"{name} listens nowhere"
            assert {host for host, _ in addresses} == {"127.0.0.1"}, f"{name}: {addresses}"
        # Every service runs in development mode on the loopback, with the secrets kept
        # (once, readable by the owner only) in the state directory.
        kept = json.loads((home / "secrets.json").read_text())
        assert stat.S_IMODE((home / "secrets.json").stat().st_mode) == 0o600
        assert set(kept) == set(SECRETS) and all(len(value) >= 32 for value in kept.values())
        for name, pid in services.items():
            seen = environ_of(pid)
            assert seen["NUDGE_DEV_MODE"] == "1", name
            assert seen["NUDGE_BIND_HOST"] == "127.0.0.1", name
            assert {secret: seen[secret] for secret in SECRETS} == kept, name

        async def write() -> None:
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute("CREATE TABLE kept_across_runs (id int)")
            finally:
                await conn.close()

        run_sync(write())

        os.kill(run.pid, signal.SIGINT)  # Ctrl-C, to make run alone
        code = run.wait(timeout=STOP_TIMEOUT)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        # Should the test fail midway: what the run left, stopped as its next start would.
        for record in ("services.json", "stack.json"):
            reap_stale(home / "run" / record)
    output = log.read_text()
    assert code == 0, output[-3000:]
    assert "nudge: stopped" in output
    assert_all_gone([*infra.values(), *services.values()])

    async def read() -> bool:
        conn = await asyncpg.connect(database_url)
        try:
            return bool(await conn.fetchval("SELECT to_regclass('kept_across_runs') IS NOT NULL"))
        finally:
            await conn.close()

    again = LocalStack(
        state_dir=home,
        ports={"postgres": ports["NUDGE_POSTGRES_PORT"]},
        persistent=True,
        environ=own_environ(),
        parts=("postgres",),
        record=tmp_path / "again.json",
    )
    try:
        again.start()
        assert run_sync(read()), "the table made during make run is gone"
    finally:
        again.stop()
