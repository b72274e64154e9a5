"""The clock file: every process reads the offset a test writes, the latest one at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from services.common.clock import FileOffsetClock, write_offset


def close_to(value: datetime, expected: datetime) -> bool:
    return abs(value - expected) < timedelta(seconds=5)


def test_a_missing_file_is_no_offset(tmp_path: Path) -> None:
    clock = FileOffsetClock(tmp_path / "absent")
    assert close_to(clock.now(), datetime.now(UTC))


def test_every_new_offset_is_seen_even_written_in_quick_succession(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    clock = FileOffsetClock(path)
    write_offset(path, 3 * 3600)
    assert close_to(clock.now(), datetime.now(UTC) + timedelta(hours=3))
    for hours in range(4, 10):  # faster than the file system's mtime resolution
        write_offset(path, hours * 3600)
        assert close_to(clock.now(), datetime.now(UTC) + timedelta(hours=hours))


def test_an_unreadable_offset_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    clock = FileOffsetClock(path)
    write_offset(path, 3600)
    assert close_to(clock.now(), datetime.now(UTC) + timedelta(hours=1))
    path.write_text("not a number")
    assert close_to(clock.now(), datetime.now(UTC) + timedelta(hours=1))
