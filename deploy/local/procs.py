"""Child processes of the local stack, and the ports they listen on.

Every child runs in its own process group (its own session, in fact), so a Ctrl-C in the
terminal reaches only the parent, which then stops the children in order: services first,
PostgreSQL last. Every child is recorded twice: in memory, so that ``atexit`` and SIGTERM
stop it even when the caller crashes; and in a small JSON file naming its owner, so that a
run killed with SIGKILL (nothing runs then) is cleaned up by the next start instead of
leaving a JVM that holds port 19092, or a gateway that answers on 8080, forever.

Where the records live: ``make run`` keeps them in its state directory (``run/stack.json``,
``run/services.json``), reaped at its next start. Tests and benchmarks get a new temporary
state directory each time, which no later start would look into, so theirs go to one fixed
folder, ``<state dir>/run/sessions/`` (``.nudge`` or ``$NUDGE_HOME``); every start reaps the
records there whose owner is dead.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from deploy.local import paths


class StartInterrupted(BaseException):
    """Start-up was asked to stop (Ctrl-C, SIGTERM, :meth:`LocalStack.stop`). A
    BaseException, so that no ``except Exception`` on the way (the fallback from Apache
    Kafka to Tansu) mistakes it for a failure to work around."""


class PortInUse(RuntimeError):
    """A part could not listen on its port: somebody else holds it."""

    def __init__(self, port: int, message: str) -> None:
        super().__init__(message)
        self.port = port


# -- ports --------------------------------------------------------------------------------

# Ports for "free" stacks and services are picked at random in this range, below the
# kernel's ephemeral range (where it picks the local port of every outgoing connection and
# of bind(0)): a port we chose is then not taken by some client between the choice and the
# moment the part binds it, which can be seconds later (Maven runs in between).
PICK_RANGE = (20000, 32000)
_ADDRESS_IN_USE = re.compile(r"address already in use|addrinuse|address in use", re.IGNORECASE)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_port_range() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(value) for value in text.split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def pick_range() -> tuple[int, int]:
    """Where :func:`pick_free_ports` picks: :data:`PICK_RANGE`, cut at the start of the
    ephemeral range; above that range when a machine's starts too low to leave room."""
    low, high = ephemeral_port_range()
    start, end = PICK_RANGE
    if low - 1 - start >= 1000:
        return start, min(end, low - 1)
    if 65535 - high >= 1000:
        return high + 1, 65535
    return start, end


def pick_free_ports(
    names: Iterable[str], host: str = "127.0.0.1", *, avoid: Iterable[int] = ()
) -> dict[str, int]:
    """One free port per name, all different (and none in ``avoid``), chosen at random in
    :func:`pick_range` and checked by binding it."""
    low, high = pick_range()
    chooser = random.SystemRandom()
    taken = set(avoid)
    chosen: dict[str, int] = {}
    for name in names:
        for _ in range(500):
            port = chooser.randint(low, high)
            if port not in taken and port_is_free(port, host):
                break
        else:
            raise RuntimeError(f"no free port found between {low} and {high}")
        chosen[name] = port
        taken.add(port)
    return chosen


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def port_owner(port: int) -> int | None:
    """The pid of a process listening on ``port`` (TCP), when /proc tells; best effort."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(proc.name)
    return None


def describe_process(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    command = " ".join(" ".join(arg.decode(errors="replace").split()) for arg in argv if arg)
    if len(command) > 100:
        command = command[:97] + "..."
    return f"pid {pid}: {command}" if command else f"pid {pid}"


def port_in_use(port: int, what: str, remedy: str | None = None) -> PortInUse:
    """The error for a port somebody holds, naming the holder when /proc tells.
    ``remedy``: what else to do than stopping the holder."""
    owner = port_owner(port)
    held = f" by {describe_process(owner)}" if owner is not None else ""
    stop = f"stop it (kill {owner})" if owner is not None else "stop what holds it"
    remedy = remedy or f"point Nudge at a running {what} with its URL variable (see README)"
    return PortInUse(
        port,
        f"port {port} for {what} is already in use{held}. Is another `make run` or `make infra` "
        f"running, or one that was killed without stopping its processes? Either {stop}, or "
        f"{remedy}",
    )


def require_free_port(port: int, what: str) -> None:
    if not port_is_free(port):
        raise port_in_use(port, what)


# -- logs and processes -------------------------------------------------------------------


def tail(path: Path, lines: int = 30, since: int = 0) -> str:
    """The end of a log file (from byte ``since`` on), for error messages that explain
    themselves."""
    try:
        with path.open("rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot: with the pid, an identity that
    survives pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purpose (it holds no port and no file).
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def check_stop(stop: threading.Event | None, what: str = "start-up") -> None:
    if stop is not None and stop.is_set():
        raise StartInterrupted(f"{what} interrupted")


def run_command(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stop: threading.Event | None = None,
    timeout: float,
    **popen: Any,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, capture_output=True, text=True)`` for a step of start-up
    (Maven, initdb), in a session of its own so that the terminal's Ctrl-C does not kill
    it behind our back; killed with its group when ``stop`` is set or time runs out."""
    command = [os.fspath(arg) for arg in argv]
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **popen,
    ) as process:
        deadline = time.monotonic() + timeout
        while True:
            try:
                out, err = process.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                interrupted = stop is not None and stop.is_set()
                if not interrupted and time.monotonic() < deadline:
                    continue
                _kill_group(process.pid, signal.SIGKILL)
                process.communicate()
                if interrupted:
                    raise StartInterrupted(f"{command[0]} interrupted") from None
                raise subprocess.TimeoutExpired(command, timeout) from None
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@dataclass
class Child:
    """A process we started, and how it likes to be stopped."""

    name: str
    process: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0
    log_path: Path | None = None
    log_offset: int = 0  # where this run's output starts in log_path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self, lines: int = 30) -> str:
        return tail(self.log_path, lines, self.log_offset) if self.log_path else ""


def startup_failure(child: Child, what: str, port: int | None = None) -> RuntimeError:
    """The error for a child that exited during start-up, with the end of its output; a
    :class:`PortInUse` when that output says its port was taken."""
    output = child.output()
    message = f"{what} exited during start-up:\n{output}"
    if port is not None and _ADDRESS_IN_USE.search(output):
        return PortInUse(port, message)
    return RuntimeError(message)


def stop_child(child: Child, timeout: float | None = None) -> int | None:
    """Ask the leader to stop (its own signal: SIGINT is PostgreSQL's fast shutdown), wait,
    SIGKILL the whole group when the time is up; then kill what is left of the group."""
    process = child.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, child.stop_signal)
        try:
            process.wait(child.stop_timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            print(
                f"nudge: {child.name} (pid {process.pid}) did not stop in time: SIGKILL",
                file=sys.stderr,
            )
            _kill_group(process.pid, signal.SIGKILL)
            process.wait()
    _kill_group(process.pid, signal.SIGKILL)
    return process.returncode


# -- who owns a record ---------------------------------------------------------------------


def _read_or_none(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def this_process() -> dict[str, Any]:
    """What identifies this process in a record: pid, start time, and where a pid means
    something (the boot and the pid namespace)."""
    pid = os.getpid()
    return {
        "pid": pid,
        "start": start_ticks(pid),
        "boot": _read_or_none("/proc/sys/kernel/random/boot_id"),
        "pidns": _pid_namespace(),
    }


def owner_state(owner: Mapping[str, Any] | None) -> str:
    """ "alive", "dead" or "unknown" (another pid namespace: its pids mean nothing here)."""
    if not owner:
        return "dead"  # a record from before owners were written
    here = this_process()
    if owner.get("boot") and here["boot"] and owner["boot"] != here["boot"]:
        return "dead"  # the machine rebooted since
    if owner.get("pidns") and here["pidns"] and owner["pidns"] != here["pidns"]:
        return "unknown"
    pid = int(owner["pid"])
    if not pid_alive(pid):
        return "dead"
    if owner.get("start") is not None and start_ticks(pid) != owner["start"]:
        return "dead"  # the pid was reused
    return "alive"


def sessions_dir() -> Path:
    """The fixed folder of the records of tests and benchmarks (see the module's doc)."""
    return paths.state_dir() / "run" / "sessions"


_SESSION_NUMBERS = itertools.count(1)


def session_record(kind: str) -> Path:
    """A record of this process in :func:`sessions_dir`, unique within it."""
    return sessions_dir() / f"{os.getpid()}-{kind}-{next(_SESSION_NUMBERS)}.json"


# -- the registry --------------------------------------------------------------------------


class ProcessRegistry:
    """The children one owner started; :meth:`stop_all` stops them in reverse order.

    ``record``: a JSON file naming this process and its live children (and ``leftovers``,
    directories to remove with them), read by :func:`reap_stale` after this process died.
    ``stopping``: when set, :meth:`spawn` refuses (start-up is being interrupted).
    """

    def __init__(self, record: Path | None = None) -> None:
        self._children: list[Child] = []
        self._leftovers: list[Path] = []
        self._lock = threading.RLock()
        self.record = record
        self.stopping = threading.Event()
        self._owner = this_process()
        _LIVE.add(self)

    def spawn(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        output: Path | int,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: tuple[int, int] | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10.0,
    ) -> Child:
        """Start ``argv`` in a new session. ``output``: a log file (appended to, stdout and
        stderr together) or ``subprocess.PIPE``. ``user``: (uid, gid) to run as."""
        log: IO[bytes] | None = None
        stdout: IO[bytes] | int
        offset = 0
        if isinstance(output, Path):
            output.parent.mkdir(parents=True, exist_ok=True)
            stdout = log = output.open("ab")
            offset = log.tell()
        else:
            stdout = output
        # Under the lock, so that stop_all() either sees this child or spawn sees stopping.
        with self._lock:
            try:
                check_stop(self.stopping, f"starting {name}")
                process = subprocess.Popen(
                    [os.fspath(arg) for arg in argv],
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                    user=user[0] if user else None,
                    group=user[1] if user else None,
                    extra_groups=[] if user else None,
                )
            finally:
                if log is not None:
                    log.close()
            child = Child(
                name,
                process,
                stop_signal,
                stop_timeout,
                log_path=output if isinstance(output, Path) else None,
                log_offset=offset,
            )
            self._children.append(child)
            self._write_record()
        return child

    @property
    def children(self) -> list[Child]:
        with self._lock:
            return list(self._children)

    def add_leftover(self, path: Path) -> None:
        """A directory to remove should this process die without :meth:`discard_leftover`
        (the temporary data of a stack)."""
        with self._lock:
            self._leftovers.append(path)
            self._write_record()

    def discard_leftover(self, path: Path) -> None:
        with self._lock:
            if path in self._leftovers:
                self._leftovers.remove(path)
            self._write_record()

    def stop(self, child: Child, timeout: float | None = None) -> int | None:
        code = stop_child(child, timeout)
        with self._lock:
            if child in self._children:
                self._children.remove(child)
            self._write_record()
        return code

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self.stop(child)

    def _write_record(self) -> None:
        if self.record is None:
            return
        entries = [
            {
                "name": c.name,
                "pid": c.pid,
                "start": start_ticks(c.pid),
                "signal": int(c.stop_signal),
                "timeout": c.stop_timeout,
            }
            for c in self._children
            if c.alive()
        ]
        if not entries and not self._leftovers:
            self.record.unlink(missing_ok=True)
            return
        content = {
            "owner": self._owner,
            "children": entries,
            "leftovers": [str(path) for path in self._leftovers],
        }
        self.record.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_name(f".{self.record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(content, indent=1))
        tmp.replace(self.record)


def reap_stale(record: Path) -> list[str]:
    """Stop the children a dead owner of ``record`` left running (it was SIGKILLed), remove
    its leftovers and the record. A live owner's record is left alone, and a child counts
    only if its start time matches, so a reused pid is never touched. Returns the names of
    the children stopped."""
    try:
        content = json.loads(record.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        content = []  # torn or unreadable: nothing we can act on
    if isinstance(content, list):  # the format before records named their owner
        owner, entries, leftovers = None, content, []
    else:
        owner = content.get("owner")
        entries, leftovers = content.get("children", []), content.get("leftovers", [])
    if owner_state(owner) != "dead":
        return []
    reaped = []
    for entry in reversed(entries):
        pid = int(entry["pid"])
        if entry.get("start") is None or start_ticks(pid) != entry["start"]:
            continue
        name = entry["name"]
        print(f"nudge: stopping {name} (pid {pid}) left from an earlier run", file=sys.stderr)
        try:
            os.kill(pid, int(entry.get("signal", signal.SIGTERM)))
        except ProcessLookupError:
            continue
        except PermissionError:
            print(
                f"nudge: not allowed to stop {name} (pid {pid}): stop it yourself", file=sys.stderr
            )
            continue
        deadline = time.monotonic() + float(entry.get("timeout", 10.0))
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        _kill_group(pid, signal.SIGKILL)
        reaped.append(str(name))
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True)
    record.unlink(missing_ok=True)
    return reaped


def reap_dead_sessions(folder: Path | None = None) -> list[str]:
    """:func:`reap_stale` on every record in ``folder`` (default :func:`sessions_dir`)."""
    reaped = []
    for record in sorted((folder or sessions_dir()).glob("*.json")):
        reaped += reap_stale(record)
    return reaped


_LIVE: set[ProcessRegistry] = set()


def stop_everything() -> None:
    """Stop every child of every registry of this process (atexit, signal handlers)."""
    for registry in list(_LIVE):
        registry.stopping.set()
        registry.stop_all()


atexit.register(stop_everything)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    # KeyboardInterrupt, not SystemExit: pytest takes a SystemExit raised inside a test for
    # that test's failure and goes on with the next one, while a KeyboardInterrupt stops the
    # session and runs its teardown. Either unwinds the caller's ``finally`` blocks, and
    # atexit stops the rest.
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def exit_on_sigterm() -> None:
    """Make SIGTERM and SIGHUP stop the program like Ctrl-C does, through ``finally`` and
    ``atexit`` (by default they kill Python without running either). Only from the main
    thread, and only where nobody installed a handler."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _exit_on_signal)
