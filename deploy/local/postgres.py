"""PostgreSQL 16 from the ``pgserver`` wheel, run as a plain child process.

We use the binaries inside the wheel (``pgserver/pginstall/bin``) and not pgserver's Python
API, which registers atexit handlers and reference-counts servers shared between
processes: the stack needs one lifecycle it controls. PostgreSQL refuses to run as root, so
as root we run it as a system user ``nudge-pg`` made for this (the containers this project
is built in run everything as root). That user must reach the data directory, which stays
under ``.nudge/`` like everything else: the directories on the way that 'others' cannot
search get the search bit (only that bit, never read), and one line says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg

from deploy.local.procs import (
    Child,
    ProcessRegistry,
    check_stop,
    require_free_port,
    run_command,
    startup_failure,
)

PG_USER = "nudge-pg"
DB_USER = "nudge"
DB_NAME = "nudge"
# A unix socket path holds at most 107 bytes; leave room for "/.s.PGSQL.NNNNN".
_MAX_SOCKET_DIR = 90


def pg_bin_dir() -> Path:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise RuntimeError("the pgserver wheel is not installed (pip install -e '.[dev]')")
    return Path(spec.origin).parent / "pginstall" / "bin"


def ensure_pg_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as, or None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        try:
            made = subprocess.run(
                ["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", PG_USER],
                capture_output=True,
                text=True,
            )
            why = made.stderr.strip() or f"exit status {made.returncode}"
        except OSError as err:  # no useradd on this system (Alpine, a distroless image)
            why = str(err)
        try:
            entry = pwd.getpwnam(PG_USER)
        except KeyError:
            raise RuntimeError(
                f"PostgreSQL cannot run as root, and the user {PG_USER} to run it as could not "
                f"be made (useradd: {why}). Create that user yourself, run as another user "
                "than root, or point DATABASE_URL at a running PostgreSQL"
            ) from None
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> list[Path]:
    """Give 'others' the search bit (o+x: pass through, not list) on ``path`` and its
    parents, so that the PostgreSQL user can reach its data directory (pytest's temporary
    directories and /root are 0700). Says which directories it changed; returns them."""
    changed = []
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)
            changed.append(directory)
    if changed:
        print(
            f"nudge: PostgreSQL runs as {PG_USER} (not as root): made searchable by others "
            f"(o+x) so that it reaches {path}: {', '.join(map(str, changed))}",
            file=sys.stderr,
        )
    return changed


def _owned_dir(path: Path, user: tuple[int, int] | None, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if user is not None:
        os.chown(path, *user)
    return path


def socket_dir_for(data_dir: Path, port: int) -> Path:
    """Beside the data directory when the path is short enough, else under /tmp."""
    near = data_dir.parent / "pgsock"
    if len(str(near)) <= _MAX_SOCKET_DIR:
        return near
    return Path("/tmp") / f"nudge-pgsock-{port}"


def has_cluster(data_dir: Path) -> bool:
    try:
        return (data_dir / "PG_VERSION").exists()
    except PermissionError:
        owner: int | str = "unknown"
        with contextlib.suppress(OSError):
            owner = data_dir.stat().st_uid
        raise RuntimeError(
            f"{data_dir} is not readable by this user (uid {os.geteuid()}, the directory's "
            f"is {owner}): it was made by another user, e.g. by `make run` as root, which runs "
            f"PostgreSQL as {PG_USER}. Run as that user again, or remove the directory (its "
            "data is lost) or give it to yourself (chown -R)"
        ) from None


def initdb(
    data_dir: Path,
    user: tuple[int, int] | None,
    log_path: Path,
    *,
    fast: bool = False,
    stop: threading.Event | None = None,
) -> bool:
    """Create the cluster unless ``data_dir`` holds one. initdb writes into a side
    directory that is renamed when it succeeded, so a half-made cluster is never used."""
    if has_cluster(data_dir):
        return False
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _make_traversable(data_dir.parent)
    work = data_dir.with_name(data_dir.name + ".initdb")
    shutil.rmtree(work, ignore_errors=True)
    _owned_dir(work, user)
    done = run_command(
        [
            pg_bin_dir() / "initdb",
            "-D",
            work,
            "-U",
            DB_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            *(["--no-sync"] if fast else []),
        ],
        stop=stop,
        timeout=300,
        cwd=work,
        user=user[0] if user else None,
        group=user[1] if user else None,
        extra_groups=[] if user else None,
        env={**os.environ, "LC_ALL": "C"},
    )
    with log_path.open("a") as log:
        log.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.strip()}")
    if data_dir.exists():
        data_dir.rmdir()  # empty, or the rename fails loudly, which is right
    work.rename(data_dir)
    return True


async def _wait_ready(
    port: int, child: Child, timeout: float, stop: threading.Event | None = None
) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        check_stop(stop)
        if not child.alive():
            raise startup_failure(child, "postgres", port)
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=port, user=DB_USER, database="postgres", timeout=2
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as err:
            last = err
            await asyncio.sleep(0.1)
            continue
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DB_NAME):
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        finally:
            await conn.close()
        return
    raise RuntimeError(f"postgres not ready after {timeout}s ({last}):\n{child.output()}")


async def start_postgres(
    registry: ProcessRegistry,
    *,
    data_dir: Path,
    port: int,
    log_dir: Path,
    fast: bool = False,
    timeout: float = 60.0,
) -> dict[str, str]:
    """Start PostgreSQL on 127.0.0.1:``port`` (initdb first if needed) and return
    ``{"DATABASE_URL": ...}`` once the ``nudge`` database exists."""
    require_free_port(port, "PostgreSQL")
    log_path = log_dir / "postgres.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    user = await asyncio.to_thread(ensure_pg_user)
    await asyncio.to_thread(initdb, data_dir, user, log_path, fast=fast, stop=registry.stopping)
    sockets = _owned_dir(socket_dir_for(data_dir, port), user, 0o755)
    if user is not None:
        _make_traversable(sockets)
    argv: list[str | Path] = [
        pg_bin_dir() / "postgres",
        "-D",
        data_dir,
        "-p",
        str(port),
        "-k",
        sockets,
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "max_connections=200",
    ]
    if fast:
        # Tests throw their data away: durability only costs time there.
        for option in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
            argv += ["-c", option]
    child = registry.spawn(
        "postgres",
        argv,
        output=log_path,
        cwd=data_dir,
        user=user,
        env={**os.environ, "LC_ALL": "C"},
        stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, checkpoint
        stop_timeout=30.0,
    )
    try:
        await _wait_ready(port, child, timeout, registry.stopping)
    except BaseException:
        registry.stop(child, timeout=10)
        raise
    return {"DATABASE_URL": f"postgresql://{DB_USER}@127.0.0.1:{port}/{DB_NAME}"}
