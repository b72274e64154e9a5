"""``nudge contacts import``: the CLI as a user runs it (a child process), against the real
contacts service; the same command run again resumes rather than duplicates."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.integration.conftest import RunningService, Workspace


async def nudge(*args: str, api_key: str, addr: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env={"NUDGE_API_KEY": api_key, "NUDGE_CONTACTS_ADDR": addr, "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_imports_a_file_with_progress_and_lists_rejected_rows(
    contacts_service: RunningService, workspace: Workspace, tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    rows = "".join(f"p{i}@example.com,Person {i},yes\n" for i in range(3_000))
    path.write_text("Mail,first_name,news\n" + rows + "broken,X,yes\n")
    args = [
        "contacts", "import", str(path), "--map", "Mail=email",
        "--consent", "news=marketing:Send me news", "--tag", "cli",
    ]  # fmt: skip
    code, out, err = await nudge(*args, api_key=workspace.api_key, addr=contacts_service.address)
    assert code == 0, err
    assert "3001 rows, 3000 created, 0 updated, 0 unchanged, 1 rejected" in out
    assert (
        "line 3002: Mail: is not a valid e-mail address: An email address must have an @-sign."
        in out
    )
    assert "rows/s" in err and "errors" in err  # the progress bar, on stderr

    code, out, err = await nudge(*args, api_key=workspace.api_key, addr=contacts_service.address)
    assert code == 0, err
    assert "3001 rows, 3000 created" in out and "(resumed)" in out


async def test_cli_refuses_bad_arguments_and_reports_service_errors(
    contacts_service: RunningService, workspace: Workspace, tmp_path: Path
) -> None:
    path = tmp_path / "x.csv"
    path.write_text("email,shoe_size\na@example.com,4\n")
    addr = contacts_service.address
    code, _, err = await nudge(
        "contacts", "import", str(path), "--consent", "x=spam", api_key="k", addr=addr
    )
    assert code == 2 and "COLUMN=PURPOSE" in err
    code, _, err = await nudge("contacts", "import", str(path), api_key="", addr=addr)
    assert code == 2 and "API key" in err
    code, _, err = await nudge(
        "contacts", "import", str(path), api_key=workspace.api_key, addr=addr
    )
    assert code == 1 and "INVALID_ARGUMENT" in err and "shoe_size" in err
