"""PostgreSQL 16 from the ``pgserver`` wheel, run as a plain child process.

We use the binaries inside the wheel (``pgserver/pginstall/bin``) and not pgserver's Python
API, which registers atexit handlers and reference-counts servers shared between
processes: the stack needs one lifecycle it controls.

PostgreSQL refuses to run as root, so as root we run it as a system user ``nudge-pg`` made
for this (the containers this project is built in run everything as root). That user must
reach its binaries and its data, and a clone under ``/root`` or a ``mktemp -d`` directory
(both 0700) is out of its reach: so is anything inside it, ``.venv`` and ``.nudge``
included. Neither making the user's directories searchable by others (what this module
once did: a dev tool must not change the modes of a user's home) nor giving ``nudge-pg`` a
capability such as ``CAP_DAC_READ_SEARCH`` (absent from Docker's default set, and it would
let anyone who connects as the superuser, which the trust authentication lets every local
user do, read every file of the machine) is acceptable. So, as root, PostgreSQL gets a
home of its own outside the clone, ``/var/lib/nudge-pg/<random id>/`` (``nudge-pg`` owns
it, mode 0700), holding what it needs to reach:

- ``pginstall/``: the wheel's ``pginstall`` tree, hard-linked (copied across file systems):
  PostgreSQL finds its ``lib/`` and ``share/`` beside the binary it was started from;
- ``data/`` (the cluster) and ``pgsock/`` (its unix socket).

The logical data directory (``.nudge/data/postgres``, or a test's temporary one) stays
where it was; beside it, ``postgres.home`` names that home. ``make run``'s cluster thus
survives restarts; ``make clean`` removes the home named there, and a temporary stack
removes its home when it stops (or, if it was SIGKILLed, the next start does). Not as
root, PostgreSQL runs as the user, from the wheel, with its data under ``.nudge/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import secrets
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
# Where PostgreSQL lives when it runs as PG_USER (see the module's doc).
PG_HOMES = Path("/var/lib/nudge-pg")
# Beside the logical data directory: the path of its home under PG_HOMES.
HOME_POINTER_SUFFIX = ".home"


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


# -- PostgreSQL's own home, when it runs as PG_USER ---------------------------------------


def home_pointer(data_dir: Path) -> Path:
    """``<data_dir>.home``: the file naming the home of ``data_dir``'s cluster."""
    return data_dir.with_name(data_dir.name + HOME_POINTER_SUFFIX)


def _is_a_home(path: Path) -> bool:
    """A directory this module made under :data:`PG_HOMES` (never remove anything else,
    whatever a pointer file says)."""
    return path.parent == PG_HOMES and path.name.isalnum()


def read_home(data_dir: Path) -> Path | None:
    try:
        home = Path(home_pointer(data_dir).read_text().strip())
    except OSError:
        return None
    return home if _is_a_home(home) else None


def postgres_home(data_dir: Path, user: tuple[int, int]) -> Path:
    """The home of ``data_dir``'s cluster (made on first use, owned by ``user``, 0700).
    :data:`PG_HOMES` is made if missing, owned by ``user``; an existing one is left as
    it is (no mode of a directory we did not make is ever changed)."""
    if not PG_HOMES.exists():
        with contextlib.suppress(FileExistsError):
            PG_HOMES.mkdir(mode=0o700)
            os.chown(PG_HOMES, *user)
    home = read_home(data_dir)
    if home is None:
        home = PG_HOMES / secrets.token_hex(8)
        pointer = home_pointer(data_dir)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(f"{home}\n")
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, *user)
    return home


def remove_home(data_dir: Path) -> None:
    """Remove the home of ``data_dir``'s cluster (its data with it) and the pointer."""
    home = read_home(data_dir)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)
    home_pointer(data_dir).unlink(missing_ok=True)


def _link_or_copy(source: str, target: str) -> None:
    """Hard-link a file of the wheel (instant, no space), or copy it across file systems
    or when 'others' may not read it (a umask of 077 when pip ran): a link shares the
    mode of the wheel's file, which must not change."""
    mode = os.stat(source).st_mode
    if mode & stat.S_IROTH:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copy2(source, target)
    readable = stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
    os.chmod(target, stat.S_IMODE(mode) | readable)


def install_into(home: Path, source: Path) -> Path:
    """The wheel's ``pginstall`` tree (``source``, i.e. ``site-packages/pgserver/pginstall``)
    in ``home/pginstall``, redone only when the wheel changed. Returns its ``bin``
    directory. The layout of site-packages is kept (``pginstall/pgserver/pginstall`` and
    ``pginstall/pgserver.libs``): the binaries find the libraries auditwheel moved out of
    the wheel's tree through ``$ORIGIN/../../../pgserver.libs``."""
    target = home / "pginstall"
    package = source.parent
    inside = Path(package.name) / source.name
    stamp = f"{source}\n{(source / 'bin' / 'postgres').stat().st_mtime_ns}\n"
    with contextlib.suppress(OSError):
        if (target / ".nudge-source").read_text() == stamp:
            return target / inside / "bin"
    work = home / "pginstall.new"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work / inside, symlinks=True, copy_function=_link_or_copy)
    libs = package.with_name(package.name + ".libs")
    if libs.is_dir():
        shutil.copytree(libs, work / libs.name, symlinks=True, copy_function=_link_or_copy)
    for directory, _, _ in os.walk(work):
        os.chmod(directory, 0o755)  # our copies: PG_USER passes through and lists them
    (work / ".nudge-source").write_text(stamp)
    shutil.rmtree(target, ignore_errors=True)
    work.rename(target)
    return target / inside / "bin"


def _adopt_old_cluster(data_dir: Path, cluster: Path) -> None:
    """A cluster that an older version made in ``data_dir`` itself (PostgreSQL reached it
    through directories it had made searchable): move it into its home, once."""
    if has_cluster(data_dir) and not cluster.exists():
        print(f"nudge: moving the PostgreSQL cluster {data_dir} to {cluster}", file=sys.stderr)
        shutil.move(data_dir, cluster)


def placement(data_dir: Path, user: tuple[int, int] | None) -> tuple[Path, Path]:
    """(bin directory, cluster directory) for ``data_dir``: the wheel's and ``data_dir``
    itself when PostgreSQL runs as us; in its home when it runs as ``user``."""
    if user is None:
        return pg_bin_dir(), data_dir
    home = postgres_home(data_dir, user)
    cluster = home / "data"
    _adopt_old_cluster(data_dir, cluster)
    return install_into(home, pg_bin_dir().parent), cluster


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
    bin_dir: Path | None = None,
    fast: bool = False,
    stop: threading.Event | None = None,
) -> bool:
    """Create the cluster unless ``data_dir`` holds one. initdb writes into a side
    directory that is renamed when it succeeded, so a half-made cluster is never used."""
    if has_cluster(data_dir):
        return False
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    work = data_dir.with_name(data_dir.name + ".initdb")
    shutil.rmtree(work, ignore_errors=True)
    _owned_dir(work, user)
    done = run_command(
        [
            (bin_dir or pg_bin_dir()) / "initdb",
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


def shared_buffers_mb(mem_total_kb: int | None = None) -> int:
    """The durable server's ``shared_buffers``: an eighth of the machine's memory, at least
    initdb's 128 MB and at most 1 GiB.

    initdb's 128 MB is sized for a server that must start anywhere. A campaign's fan-out to
    1,000,000 contacts works on ~1 GB of tables and indexes (contacts, consents, profiles,
    recipients), and pages evicted to the OS cache come back through a system call each
    (bench/RESULTS.md, issue 15). The memory is mapped when first used, so a quiet server
    does not hold it."""
    if mem_total_kb is None:
        try:
            with open("/proc/meminfo") as meminfo:
                fields = dict(line.split(":", 1) for line in meminfo)
            mem_total_kb = int(fields["MemTotal"].split()[0])
        except (OSError, KeyError, ValueError):
            return 128
    return max(128, min(1024, mem_total_kb // 1024 // 8))


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
    persistent: bool = True,
    timeout: float = 60.0,
) -> dict[str, str]:
    """Start PostgreSQL on 127.0.0.1:``port`` (initdb first if needed) and return
    ``{"DATABASE_URL": ...}`` once the ``nudge`` database exists. ``persistent``: False
    when the caller removes ``data_dir`` on stop (then it calls :func:`remove_home`)."""
    require_free_port(port, "PostgreSQL")
    log_path = log_dir / "postgres.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    user = await asyncio.to_thread(ensure_pg_user)
    bin_dir, cluster = await asyncio.to_thread(placement, data_dir, user)
    if user is not None and not persistent:
        home = read_home(data_dir)
        assert home is not None
        registry.add_leftover(home)  # removed by the next start should this one be killed
    await asyncio.to_thread(
        initdb, cluster, user, log_path, bin_dir=bin_dir, fast=fast, stop=registry.stopping
    )
    sockets = _owned_dir(socket_dir_for(cluster, port), user, 0o755)
    argv: list[str | Path] = [
        bin_dir / "postgres",
        "-D",
        cluster,
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
    else:
        argv += ["-c", f"shared_buffers={shared_buffers_mb()}MB"]
    child = registry.spawn(
        "postgres",
        argv,
        output=log_path,
        cwd=cluster,
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
