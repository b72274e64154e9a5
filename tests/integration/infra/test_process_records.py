"""What a killed owner leaves behind, and who cleans it up: records of children reaped only
when their owner is dead, a SIGTERM that stops a test session like Ctrl-C (teardown runs,
nothing more is tested), and start-up steps that the stop event kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from deploy.local.procs import (
    ProcessRegistry,
    StartInterrupted,
    pid_alive,
    reap_dead_sessions,
    reap_stale,
    run_command,
    start_ticks,
    this_process,
)
from tests.support import wait_until


def dead_owner() -> dict[str, object]:
    """The identity of a process that has exited."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return {**this_process(), "pid": gone.pid, "start": 1}


def test_a_dead_owners_children_and_leftovers_are_reaped(tmp_path: Path) -> None:
    registry = ProcessRegistry(record=tmp_path / "run" / "stack.json")
    child = registry.spawn("sleeper", ["sleep", "600"], output=tmp_path / "sleeper.log")
    leftover = tmp_path / "nudge-data-x"
    leftover.mkdir()
    registry.add_leftover(leftover)
    assert registry.record is not None
    content = json.loads(registry.record.read_text())
    assert content["owner"]["pid"] == os.getpid()
    assert [c["pid"] for c in content["children"]] == [child.pid]

    # As if this process had been SIGKILLed: the record now names a dead owner.
    content["owner"] = dead_owner()
    registry.record.write_text(json.dumps(content))
    assert reap_stale(registry.record) == ["sleeper"]
    child.process.wait(5)
    assert not pid_alive(child.pid)
    assert not leftover.exists()
    assert not registry.record.exists()


def test_a_live_owners_record_is_left_alone(tmp_path: Path) -> None:
    registry = ProcessRegistry(record=tmp_path / "sessions" / "mine.json")
    child = registry.spawn("sleeper", ["sleep", "600"], output=tmp_path / "sleeper.log")
    try:
        assert reap_dead_sessions(tmp_path / "sessions") == []
        assert child.alive()
    finally:
        registry.stop_all()
    assert registry.record is not None and not registry.record.exists()


def test_a_reused_pid_is_never_killed(tmp_path: Path) -> None:
    """The record's start time does not match the process now holding the pid."""
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        entry = {"name": "old", "pid": bystander.pid, "start": start_ticks(bystander.pid)}
        record = tmp_path / "old.json"
        record.write_text(json.dumps({"owner": dead_owner(), "children": [{**entry, "start": 1}]}))
        assert reap_stale(record) == []
        assert pid_alive(bystander.pid)
        assert not record.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_the_stop_event_kills_a_start_up_step(tmp_path: Path) -> None:
    """Maven and initdb run in a session of their own (the terminal's Ctrl-C does not kill
    them behind our back): the stop event does, with everything they started."""
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    began = time.monotonic()
    with pytest.raises(StartInterrupted):
        run_command(
            ["sh", "-c", f"sleep 600 & echo $! > {tmp_path}/pid; wait"], stop=stop, timeout=60
        )
    assert time.monotonic() - began < 5
    grandchild = int((tmp_path / "pid").read_text())
    wait_until(lambda: not pid_alive(grandchild), timeout=5)


def test_a_spawn_after_the_stop_event_is_refused(tmp_path: Path) -> None:
    registry = ProcessRegistry()
    registry.stopping.set()
    with pytest.raises(StartInterrupted):
        registry.spawn("late", ["sleep", "600"], output=tmp_path / "late.log")
    assert registry.children == []


SESSION = """
import signal
from pathlib import Path

import pytest

from deploy.local.procs import exit_on_sigterm

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def resource():
    yield
    (HERE / "torn-down").write_text("yes")


def test_first(resource):
    exit_on_sigterm()  # what LocalStack.start() does in the infra fixture
    (HERE / "running").write_text("yes")
    signal.alarm(60)  # bounded, should the SIGTERM never come
    signal.pause()  # until the SIGTERM this test is about


def test_second():
    (HERE / "second-ran").write_text("yes")
"""


def test_sigterm_stops_a_test_session_and_runs_its_teardown(tmp_path: Path) -> None:
    (tmp_path / "test_session.py").write_text(textwrap.dedent(SESSION))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_session.py"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(
            lambda: (tmp_path / "running").exists() or session.poll() is not None, timeout=60
        )
        assert session.poll() is None, session.stdout
        session.send_signal(signal.SIGTERM)
        output, _ = session.communicate(timeout=30)
    finally:
        session.kill()
    assert session.returncode == 2, output  # pytest's "interrupted"
    assert (tmp_path / "torn-down").exists(), "the session's teardown ran"
    assert not (tmp_path / "second-ran").exists(), "no test ran after the SIGTERM"
