"""As root, PostgreSQL runs as ``nudge-pg``: from a clone that user cannot enter (under
``/root`` or a ``mktemp -d`` directory, 0700), without changing the mode of any directory.

The clone is reproduced here: a 0700 directory holding the state directory and the
``pginstall`` tree of the pgserver wheel (as ``.venv`` would hold it), reachable only
through that directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
from pathlib import Path

import asyncpg
import pytest

from deploy.local import postgres
from deploy.local.paths import REPO_ROOT
from deploy.local.stack import LocalStack
from tests.integration.infra.test_stack import own_environ

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as nudge-pg")


def modes(directories: list[Path]) -> dict[Path, int]:
    return {directory: stat.S_IMODE(directory.stat().st_mode) for directory in directories}


def private_clone(tmp_path: Path) -> Path:
    """``tmp_path/private/nudge`` with ``private`` 0700 and, inside, the wheel's files as
    site-packages holds them (``pgserver/pginstall``, ``pgserver.libs``)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    clone = private / "nudge"
    package = postgres.pg_bin_dir().parent.parent
    site = clone / "site-packages"
    for tree in (package / "pginstall", package.with_name("pgserver.libs")):
        target = site / tree.relative_to(package.parent)
        shutil.copytree(tree, target, symlinks=True, copy_function=os.link)
    return clone


async def test_postgres_runs_from_a_0700_clone_and_no_directory_changes_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone = private_clone(tmp_path)
    bin_dir = clone / "site-packages" / "pgserver" / "pginstall" / "bin"
    monkeypatch.setattr(postgres, "pg_bin_dir", lambda: bin_dir)
    outside = [clone.parent, *clone.parent.parents]
    before = modes(outside)
    assert before[clone.parent] == 0o700
    state_dir = clone / ".nudge"

    def start() -> LocalStack:
        stack = LocalStack(
            state_dir=state_dir,
            ports="free",
            persistent=True,  # as make run: the data stays in (or is named from) the clone
            environ=own_environ(),
            parts=("postgres",),
        )
        stack.start()
        return stack

    try:
        first = await asyncio.to_thread(start)
        try:
            conn = await asyncpg.connect(first.env["DATABASE_URL"])
            try:
                await conn.execute("CREATE TABLE kept (id int)")
            finally:
                await conn.close()
        finally:
            await asyncio.to_thread(first.stop)
        assert modes(outside) == before

        second = await asyncio.to_thread(start)  # the cluster is found again
        try:
            conn = await asyncpg.connect(second.env["DATABASE_URL"])
            try:
                assert await conn.fetchval("SELECT to_regclass('kept') IS NOT NULL")
            finally:
                await conn.close()
        finally:
            await asyncio.to_thread(second.stop)
        home = postgres.read_home(state_dir / "data" / "postgres")
        assert home is not None and (home / "data" / "PG_VERSION").exists()
        # make clean (its data half) removes the cluster, outside the clone as it is.
        cleaned = await asyncio.to_thread(
            subprocess.run,
            ["make", "-s", "clean-data"],
            cwd=REPO_ROOT,
            env={**os.environ, "NUDGE_HOME": str(state_dir)},
            capture_output=True,
            text=True,
        )
        assert cleaned.returncode == 0, cleaned.stderr
        assert not home.exists() and not state_dir.exists()
    finally:
        postgres.remove_home(state_dir / "data" / "postgres")  # when the test failed early
    assert modes(outside) == before


def test_a_temporary_stack_removes_the_home_it_made(tmp_path: Path) -> None:
    stack = LocalStack(
        state_dir=tmp_path / "state",
        ports="free",
        fast=True,
        persistent=False,
        environ=own_environ(),
        parts=("postgres",),
    )
    try:
        stack.start()
        home = postgres.read_home(stack._data("postgres"))
        assert home is not None and (home / "data" / "PG_VERSION").exists()
        assert home.stat().st_uid == postgres.ensure_pg_user()[0]  # type: ignore[index]
    finally:
        stack.stop()
    assert not home.exists()
