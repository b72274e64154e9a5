"""Import over the gateway's HTTP API: a streamed body or a multipart form, the summary,
the 413 past the limit, and the rejected rows as CSV safe to open in a spreadsheet."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from services.gateway.entrypoints import imports as gateway_imports
from tests.integration.conftest import Workspace
from tests.integration.gateway.conftest import MAX_BODY_BYTES
from tests.integration.tracking.conftest import HttpService
from tests.support import eventually, fetchval

HOSTILE = (
    b"email,first_name\n"
    b"ok@example.com,Ok\n"  # 2
    b'"=HYPERLINK(""http://evil.example"",""x"")",A\n'  # 3: not an e-mail, a formula
    b"+1@,B\n"  # 4
    b"@x,C\n"  # 5
)


def auth(ws: Workspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {ws.api_key}"}


async def count(ws: Workspace) -> int:
    value = await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT count(*) FROM contacts.contacts WHERE workspace_id = $1",
        uuid.UUID(ws.id),
    )
    assert isinstance(value, int)
    return value


async def test_a_streamed_csv_body_larger_than_the_body_limit_imports_and_reports_its_errors(
    gateway: HttpService, workspace: Workspace
) -> None:
    rows = b"".join(b"s%d@example.com,Name %d\n" % (i, i) for i in range(2_000))
    data = HOSTILE + rows
    assert len(data) > 10 * MAX_BODY_BYTES  # the other routes' limit does not apply

    async def body() -> AsyncIterator[bytes]:  # chunked: no Content-Length
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as http:
        answer = await http.post(
            "/v1/contacts/imports",
            params={"key": "crm-1", "tag": ["from-crm"], "map": "first_name=first_name"},
            headers={**auth(workspace), "Content-Type": "text/csv"},
            content=body(),
        )
        assert answer.status_code == 200, answer.text
        summary = answer.json()
        assert (summary["rows"], summary["created"], summary["rejected"]) == (2_004, 2_001, 3)
        assert summary["state"] == "completed" and not summary["resumed"]

        again = await http.get(
            f"/v1/contacts/imports/{summary['import_id']}", headers=auth(workspace)
        )
        assert again.json()["created"] == 2_001

        errors = await http.get(summary["errors_url"], headers=auth(workspace))
        assert errors.status_code == 200 and errors.headers["content-type"].startswith("text/csv")
        table = list(csv.reader(io.StringIO(errors.text)))
        assert table[0] == ["line", "field", "reason"]
        assert [row[0] for row in table[1:]] == ["3", "4", "5"]
        for row in table[1:]:
            for cell in row[1:]:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row

        other = await http.get(summary["errors_url"], headers={"Authorization": "Bearer nk_x_y"})
        assert other.status_code == 401


def test_error_cells_are_neutralised_for_spreadsheets() -> None:
    text = gateway_imports.error_rows_csv(
        [
            (3, "email", '=HYPERLINK("http://evil.example","x")'),
            (4, "+cmd", "-2+3"),
            (5, "@SUM(A1)", "\tTAB"),
            (6, "f", "\rCR"),
            (7, "nul\x00led", "x" * 5000),
        ]
    )
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["3", "email", '\'=HYPERLINK("http://evil.example","x")']
    assert rows[1] == ["4", "'+cmd", "'-2+3"]
    assert rows[2] == ["5", "'@SUM(A1)", "'\tTAB"]
    assert rows[3][2] == "'\rCR"
    assert rows[4][1] == "nulled" and len(rows[4][2]) == gateway_imports.MAX_CELL


async def test_a_multipart_form_with_options_and_file_imports(
    gateway: HttpService, workspace: Workspace
) -> None:
    options = {
        "format": "ndjson",
        "columns": {"mail": "email"},
        "consent_columns": [{"column": "news", "purpose": "marketing", "wording": "Yes please"}],
        "tags": ["form"],
        "import_key": "form-1",
    }
    data = b'{"mail": "m1@example.com", "news": true}\n{"mail": "m2@example.com"}\n'
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as http:
        answer = await http.post(
            "/v1/contacts/imports",
            headers=auth(workspace),
            files=[
                ("options", (None, json.dumps(options), "application/json")),
                ("file", ("people.ndjson", data, "application/x-ndjson")),
            ],
        )
        assert answer.status_code == 200, answer.text
        summary = answer.json()
        assert (summary["created"], summary["file_name"]) == (2, "people.ndjson")
        again = await http.post(
            "/v1/contacts/imports",
            headers=auth(workspace),
            files=[
                ("options", (None, json.dumps(options), "application/json")),
                ("file", ("people.ndjson", data, "application/x-ndjson")),
            ],
        )
        assert again.json()["resumed"] and again.json()["created"] == 2
    assert await count(workspace) == 2
    granted = await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT count(*) FROM contacts.consents WHERE workspace_id = $1 AND status = 1",
        uuid.UUID(workspace.id),
    )
    assert granted == 1


@pytest.mark.parametrize(
    ("headers", "params", "status", "field"),
    [
        ({"Content-Type": "application/pdf"}, {}, 415, None),
        ({"Content-Type": "text/csv"}, {"match": "phone"}, 422, "query.match"),
        ({"Content-Type": "text/csv"}, {"consent": "news=spam"}, 422, "query.consent"),
        ({"Content-Type": "text/csv"}, {"tag": "Not A Tag"}, 422, "query.tag"),
        ({"Content-Type": "text/csv"}, {"map": "x=password"}, 422, None),
    ],
)
async def test_bad_requests_get_a_precise_problem_and_write_nothing(
    gateway: HttpService,
    workspace: Workspace,
    headers: dict[str, str],
    params: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as http:
        answer = await http.post(
            "/v1/contacts/imports",
            params=params,
            headers={**auth(workspace), **headers},
            content=b"email\nx@example.com\n",
        )
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    if field is not None:
        assert any(e["field"].startswith(field) for e in answer.json()["errors"])
    assert await count(workspace) == 0


async def test_a_declared_size_past_2_gib_is_413_before_a_byte_is_read(
    gateway: HttpService, workspace: Workspace
) -> None:
    host, port = gateway.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/contacts/imports HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        b"Authorization: Bearer " + workspace.api_key.encode() + b"\r\n"
        b"Content-Length: " + str(3 * 1024**3).encode() + b"\r\n\r\nemail\n"
    )
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    assert status.startswith(b"HTTP/1.1 413"), status


async def test_a_body_past_the_limit_is_413_and_the_import_is_left_failed(
    gateway: HttpService, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past two chunks sent on to contacts: the import has begun when the limit is hit.
    monkeypatch.setattr(gateway_imports, "MAX_IMPORT_BYTES", 3 * gateway_imports.CHUNK_BYTES)

    async def body() -> AsyncIterator[bytes]:
        yield b"email\n"
        for i in range(0, 100_000, 100):
            yield b"".join(b"big%d@example.com\n" % n for n in range(i, i + 100))

    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as http:
        answer = await http.post(
            "/v1/contacts/imports",
            params={"key": "too-big"},
            headers={**auth(workspace), "Content-Type": "text/csv"},
            content=body(),
        )
    assert answer.status_code == 413, answer.text

    async def failed() -> bool:
        state = await fetchval(
            os.environ["DATABASE_URL"],
            "SELECT state FROM contacts.imports WHERE workspace_id = $1 AND import_key = 'too-big'",
            uuid.UUID(workspace.id),
        )
        assert state in (1, 3), state  # RUNNING until contacts sees the cancel; never COMPLETED
        return state == 3  # FAILED: to resume with the same key

    await eventually(failed, timeout=60)
