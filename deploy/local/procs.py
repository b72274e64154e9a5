"""Child processes of the local stack, and the ports they listen on.

Every child runs in its own process group (its own session, in fact), so a Ctrl-C in the
terminal reaches only the parent, which then stops the children in order: services first,
PostgreSQL last. Every child is recorded twice: in memory, so that ``atexit`` and SIGTERM
stop it even when the caller crashes; and in a small JSON file, so that a run killed with
SIGKILL (nothing runs then) is cleaned up by the next start instead of leaving a JVM that
holds port 19092 forever.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
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
from typing import IO


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def pick_free_ports(names: Iterable[str], host: str = "127.0.0.1") -> dict[str, int]:
    """One free port per name, all different: every socket stays bound until all are
    chosen, so the kernel cannot hand out the same port twice."""
    sockets: dict[str, socket.socket] = {}
    try:
        for name in names:
            sock = socket.socket()
            sockets[name] = sock
            sock.bind((host, 0))
        return {name: int(sock.getsockname()[1]) for name, sock in sockets.items()}
    finally:
        for sock in sockets.values():
            sock.close()


def require_free_port(port: int, what: str) -> None:
    if not port_is_free(port):
        raise RuntimeError(
            f"port {port} for {what} is already in use: is another `make run` or "
            f"`make infra` running? Stop it, or point Nudge at a running {what} with its URL "
            "variable (see README)"
        )


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log file, for error messages that explain themselves."""
    try:
        text = path.read_text(errors="replace")
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


@dataclass
class Child:
    """A process we started, and how it likes to be stopped."""

    name: str
    process: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0
    log_path: Path | None = None
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


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


class ProcessRegistry:
    """The children one owner started; :meth:`stop_all` stops them in reverse order.

    ``record``: a JSON file listing the live children, read by :func:`reap_stale`.
    """

    def __init__(self, record: Path | None = None) -> None:
        self._children: list[Child] = []
        self._lock = threading.RLock()
        self._record = record
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
        if isinstance(output, Path):
            output.parent.mkdir(parents=True, exist_ok=True)
            stdout = log = output.open("ab")
        else:
            stdout = output
        try:
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
        )
        with self._lock:
            self._children.append(child)
            self._write_record()
        return child

    @property
    def children(self) -> list[Child]:
        with self._lock:
            return list(self._children)

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
        if self._record is None:
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
        self._record.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._record.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        tmp.replace(self._record)


def reap_stale(record: Path) -> list[str]:
    """Stop the children a previous owner of ``record`` left running (it was SIGKILLed).
    A pid counts only if its start time matches, so a reused pid is never touched."""
    try:
        entries = json.loads(record.read_text())
    except (OSError, ValueError):
        return []
    reaped = []
    for entry in reversed(entries):
        pid = int(entry["pid"])
        if entry.get("start") is None or start_ticks(pid) != entry["start"]:
            continue
        name = entry["name"]
        print(f"nudge: stopping {name} (pid {pid}) left from an earlier run", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, int(entry.get("signal", signal.SIGTERM)))
        deadline = time.monotonic() + float(entry.get("timeout", 10.0))
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        _kill_group(pid, signal.SIGKILL)
        reaped.append(str(entry["name"]))
    record.unlink(missing_ok=True)
    return reaped


_LIVE: set[ProcessRegistry] = set()


def stop_everything() -> None:
    """Stop every child of every registry of this process (atexit, signal handlers)."""
    for registry in list(_LIVE):
        registry.stop_all()


atexit.register(stop_everything)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds the caller's ``finally`` blocks, then atexit stops the rest.
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Make SIGTERM and SIGHUP exit through ``atexit`` (by default they kill Python without
    running it). Only from the main thread, and only where nobody installed a handler."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _exit_on_signal)
