"""PostgreSQL 16 from the ``pgserver`` wheel, run as a plain child process.

We use the binaries inside the wheel (``pgserver/pginstall/bin``) and not pgserver's Python
API, which registers atexit handlers and reference-counts servers shared between
processes: the stack needs one lifecycle it controls. PostgreSQL refuses to run as root, so
as root we run it as a system user ``nudge-pg`` made for this (the containers this project
is built in run everything as root).
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
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from deploy.local.procs import ProcessRegistry, require_free_port, tail

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


def pg_version() -> str:
    out = subprocess.run(
        [pg_bin_dir() / "postgres", "--version"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def ensure_pg_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as, or None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        made = subprocess.run(
            ["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", PG_USER],
            capture_output=True,
            text=True,
        )
        try:
            entry = pwd.getpwnam(PG_USER)
        except KeyError:
            raise RuntimeError(
                f"PostgreSQL cannot run as root and `useradd {PG_USER}` failed: "
                f"{made.stderr.strip()}"
            ) from None
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Give 'others' the search bit on ``path`` and its parents, so that the PostgreSQL
    user can reach its data directory (pytest's temp dirs are 0700)."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(mode | stat.S_IXOTH)


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


def initdb(
    data_dir: Path, user: tuple[int, int] | None, log_path: Path, *, fast: bool = False
) -> bool:
    """Create the cluster unless ``data_dir`` holds one. initdb writes into a side
    directory that is renamed when it succeeded, so a half-made cluster is never used."""
    if (data_dir / "PG_VERSION").exists():
        return False
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _make_traversable(data_dir.parent)
    work = data_dir.with_name(data_dir.name + ".initdb")
    shutil.rmtree(work, ignore_errors=True)
    _owned_dir(work, user)
    done = subprocess.run(
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
        capture_output=True,
        text=True,
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
    port: int, child_alive: Callable[[], bool], log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not child_alive():
            raise RuntimeError(f"postgres exited during start-up:\n{tail(log_path)}")
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
    raise RuntimeError(f"postgres not ready after {timeout}s ({last}):\n{tail(log_path)}")


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
    await asyncio.to_thread(initdb, data_dir, user, log_path, fast=fast)
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
    await _wait_ready(port, child.alive, log_path, timeout)
    return {"DATABASE_URL": f"postgresql://{DB_USER}@127.0.0.1:{port}/{DB_NAME}"}
