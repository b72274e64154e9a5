"""The one clock every component reads, injectable so tests can move hours in a millisecond."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Wall-clock UTC time, optionally shifted (``NUDGE_CLOCK_OFFSET_S``)."""

    def __init__(self, offset: timedelta = timedelta()) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


class FrozenClock:
    """A clock that moves only when told to; for unit tests and replays."""

    def __init__(self, at: datetime) -> None:
        self._at = at

    def now(self) -> datetime:
        return self._at

    def advance(self, delta: timedelta) -> None:
        self._at += delta


class FileOffsetClock:
    """Wall-clock UTC time shifted by the number of seconds written in a file
    (``NUDGE_CLOCK_FILE``), so a test can move every process's clock at once (a worker in a
    child process included): write ``10800`` and three hours have passed everywhere.

    The file is re-read only when its inode or mtime changes (one ``stat`` per reading); a
    missing or unreadable file means no offset. Writers should replace the file atomically (write a
    temporary file, then ``os.replace``) so a reader never sees half a number."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int] = (-1, -1)  # (inode, mtime): os.replace makes a new inode
        self._offset = timedelta()

    def offset(self) -> timedelta:
        try:
            stat = self.path.stat()
        except OSError:
            return timedelta()
        seen = (stat.st_ino, stat.st_mtime_ns)
        if seen != self._seen:
            try:
                self._offset = timedelta(seconds=float(self.path.read_text().strip() or 0))
            except (OSError, ValueError):
                return self._offset
            self._seen = seen
        return self._offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset()


def write_offset(path: str | Path, seconds: float) -> None:
    """Set the offset :class:`FileOffsetClock` readers of ``path`` see (atomically)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(repr(float(seconds)))
    os.replace(tmp, target)


def _default() -> Clock:
    path = os.environ.get("NUDGE_CLOCK_FILE")
    return FileOffsetClock(path) if path else SystemClock()


_clock: Clock = _default()


def set_clock(clock: Clock) -> None:
    global _clock
    _clock = clock


def now() -> datetime:
    return _clock.now()
