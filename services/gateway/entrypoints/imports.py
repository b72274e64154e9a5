"""``/v1/contacts/imports``: bulk import of contacts (ImportService), and its rejected rows.

The file is streamed through: the body is read as it arrives and sent on to contacts in
chunks over one client-streaming call, so neither the gateway nor contacts ever holds the
file (the body size limit of the other routes, which buffers, does not apply here; this
route counts the bytes itself and answers 413 past :data:`MAX_IMPORT_BYTES`).

Two shapes of request:
- the file as the body (``Content-Type: text/csv`` or ``application/x-ndjson``), the
  options in query parameters;
- ``multipart/form-data`` with an ``options`` part (JSON) and then a ``file`` part, as a
  browser form sends it; parsed incrementally (python-multipart), never spooled to disk.

The rejected rows download as CSV made safe for spreadsheets: a cell starting with ``=``,
``+``, ``-``, ``@``, TAB or CR gets a leading apostrophe (OWASP's advice against formula
injection), NUL characters are removed and long values cut.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from nudge.contacts.v1 import contacts_pb2, imports_pb2
from pydantic import BaseModel, Field
from python_multipart.multipart import MultipartParser, parse_options_header

from services.gateway import problems
from services.gateway.deps import BackendsDep, CallerDep

router = APIRouter(prefix="/v1/contacts/imports", tags=["contacts"])

MAX_IMPORT_BYTES = 2 * 1024**3  # 2 GiB
CHUNK_BYTES = 256 * 1024  # under the services' 1 MiB gRPC message limit
IMPORT_TIMEOUT_S = 6 * 3600.0
MAX_OPTIONS_BYTES = 64 * 1024
MAX_CELL = 1000
_DANGEROUS = ("=", "+", "-", "@", "\t", "\r")

FORMATS = {"csv": imports_pb2.IMPORT_FORMAT_CSV, "ndjson": imports_pb2.IMPORT_FORMAT_NDJSON}
MEDIA_FORMATS = {
    "text/csv": "csv",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
}
MATCHES = {
    "email": imports_pb2.IMPORT_MATCH_EMAIL,
    "external_id": imports_pb2.IMPORT_MATCH_EXTERNAL_ID,
    "external-id": imports_pb2.IMPORT_MATCH_EXTERNAL_ID,
}
PURPOSES = {
    "marketing": contacts_pb2.CONSENT_PURPOSE_MARKETING,
    "targeted_messages": contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
    "automations": contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
}
SOURCES = {
    "import": contacts_pb2.CONSENT_SOURCE_IMPORT,
    "form": contacts_pb2.CONSENT_SOURCE_FORM,
    "api": contacts_pb2.CONSENT_SOURCE_API,
}
STATES = {
    imports_pb2.IMPORT_STATE_RUNNING: "running",
    imports_pb2.IMPORT_STATE_COMPLETED: "completed",
    imports_pb2.IMPORT_STATE_FAILED: "failed",
}

_FIELDS = (
    "email|external_id|first_name|last_name|locale|time_zone|birthday|signed_up_at|vip|tags"
    "|score|attributes[.][^=\\x00]{1,64}"
)
_MAP = f"^[^=\\x00]{{1,200}}=({_FIELDS})$"
_CONSENT = "^[^=\\x00]{1,200}=(marketing|targeted_messages|automations)(:[^\\x00]*)?$"
_TAG = "^[a-z0-9][a-z0-9_:-]{0,63}$"
_TEXT = "^[^\\x00]*$"

ImportId = Annotated[str, Path(min_length=1, max_length=64, description="The import's id.")]


class ImportOut(BaseModel):
    import_id: str
    state: str = Field(description="running, completed, or failed (send the same key again)")
    rows: int
    created: int
    updated: int
    unchanged: int
    rejected: int
    started_at: str | None
    finished_at: str | None
    file_name: str
    resumed: bool
    errors_url: str


def summary_json(s: imports_pb2.ImportSummary) -> ImportOut:
    return ImportOut(
        import_id=s.import_id,
        state=STATES.get(s.state, "unknown"),
        rows=s.rows,
        created=s.created,
        updated=s.updated,
        unchanged=s.unchanged,
        rejected=s.rejected,
        started_at=s.started_at.ToJsonString() if s.HasField("started_at") else None,
        finished_at=s.finished_at.ToJsonString() if s.HasField("finished_at") else None,
        file_name=s.file_name,
        resumed=s.resumed,
        errors_url=f"/v1/contacts/imports/{s.import_id}/errors",
    )


def _invalid(field: str, message: str) -> problems.Problem:
    return problems.Problem(
        422,
        "validation",
        "Invalid request",
        f"{field}: {message}",
        [problems.FieldError(field=field, message=message)],
    )


def _choice(table: dict[str, Any], value: str, field: str) -> Any:
    found = table.get(value.strip().lower())
    if found is None:
        raise _invalid(field, f"one of {', '.join(sorted(table))}")
    return found


def options_from(values: dict[str, Any]) -> imports_pb2.ImportOptions:
    """ImportOptions from the query's or the options part's names (``format``, ``match``,
    ``columns`` or ``map`` = ["col=field"], ``consent_columns`` or ``consent`` =
    ["col=purpose[:wording]"], ``tags`` or ``tag``, ``import_key`` or ``key``,
    ``file_name``); the service checks the rest."""
    options = imports_pb2.ImportOptions()
    if values.get("format"):
        options.format = _choice(FORMATS, str(values["format"]), "format")
    if values.get("match"):
        options.match = _choice(MATCHES, str(values["match"]), "match")
    columns = values.get("columns") or {}
    if not isinstance(columns, dict):
        raise _invalid("columns", "an object of column: field")
    for entry in values.get("map") or []:
        column, sep, target = str(entry).rpartition("=")
        if not sep or not column:
            raise _invalid("map", "column=field")
        columns[column] = target
    for column, target in columns.items():
        if not isinstance(target, str):
            raise _invalid(f"columns.{column}", "a field name")
        options.columns[str(column)] = target
    consents = list(values.get("consent_columns") or [])
    for entry in values.get("consent") or []:
        column, sep, rest = str(entry).partition("=")
        purpose, _, wording = rest.partition(":")
        if not sep or not column:
            raise _invalid("consent", "column=purpose[:wording]")
        consents.append({"column": column, "purpose": purpose, "wording": wording})
    for i, c in enumerate(consents):
        if not isinstance(c, dict):
            raise _invalid(f"consent_columns[{i}]", "an object")
        options.consent_columns.append(
            imports_pb2.ConsentColumn(
                column=str(c.get("column", "")),
                purpose=_choice(
                    PURPOSES, str(c.get("purpose", "")), f"consent_columns[{i}].purpose"
                ),
                source=_choice(
                    SOURCES, str(c.get("source") or "import"), f"consent_columns[{i}].source"
                ),
                wording=str(c.get("wording", "")),
            )
        )
    tags = values.get("tags") or values.get("tag") or []
    if not isinstance(tags, list):
        raise _invalid("tags", "a list")
    options.tags.extend(str(t) for t in tags)
    options.import_key = str(values.get("import_key") or values.get("key") or "")
    options.file_name = str(values.get("file_name") or "")
    return options


class _TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body as it arrives, counted; past ``limit`` bytes the import stops (413)."""
    size = 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise _TooLarge
        if piece:
            yield piece


async def _rechunk(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pieces of any size -> chunks under the gRPC message limit (a few KiB are coalesced)."""
    pending = bytearray()
    async for piece in pieces:
        pending += piece
        while len(pending) >= CHUNK_BYTES:
            yield bytes(pending[:CHUNK_BYTES])
            del pending[:CHUNK_BYTES]
    if pending:
        yield bytes(pending)


class _Multipart:
    """An incremental multipart/form-data reader: the ``options`` part (small, JSON) is
    collected; the ``file`` part is handed out as it is parsed."""

    def __init__(self, boundary: bytes) -> None:
        self.options = bytearray()
        self.file_name = ""
        self._part = ""
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._file: list[bytes] = []
        self.seen_file = False
        self.finished = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_part_data": self._data,
                "on_header_field": self._field,
                "on_header_value": self._value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done,
                "on_end": self._end,
            },
        )

    def _begin(self) -> None:
        self._headers = {}
        self._part = ""

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._part = params.get(b"name", b"").decode("utf-8", "replace")
        if self._part == "file":
            self.seen_file = True
            self.file_name = params.get(b"filename", b"").decode("utf-8", "replace")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "options":
            if self.seen_file:
                raise _invalid("options", "the options part must come before the file part")
            self.options += data[start:end]
            if len(self.options) > MAX_OPTIONS_BYTES:
                raise _invalid("options", f"larger than {MAX_OPTIONS_BYTES} bytes")
        elif self._part == "file":
            self._file.append(data[start:end])

    def _end(self) -> None:
        self.finished = True

    def feed(self, piece: bytes) -> list[bytes]:
        self._parser.write(piece)
        out, self._file = self._file, []
        return out


def _parse_options_part(raw: bytes) -> dict[str, Any]:
    try:
        values = json.loads(raw or b"{}")
    except ValueError as err:
        raise _invalid("options", f"not JSON: {err}") from err
    if not isinstance(values, dict):
        raise _invalid("options", "a JSON object")
    return values


@router.post(
    "",
    response_model=ImportOut,
    summary="Import contacts from CSV or NDJSON",
    responses=problems.responses(400, 401, 409, 413, 415, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string", "format": "binary"}},
                "application/x-ndjson": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "options": {"type": "string", "description": "JSON options"},
                            "file": {"type": "string", "format": "binary"},
                        },
                        "required": ["file"],
                    }
                },
            },
        }
    },
)
async def import_contacts(
    request: Request,
    caller: CallerDep,
    backends: BackendsDep,
    format: Annotated[
        Literal["csv", "ndjson"] | None, Query(description="else from the Content-Type")
    ] = None,
    match: Annotated[
        Literal["email", "external_id", "external-id"] | None,
        Query(description="upsert by e-mail (default) or by external id"),
    ] = None,
    map: Annotated[
        list[Annotated[str, Query(pattern=_MAP, max_length=300)]] | None,
        Query(description="column=field, repeatable", max_length=200),
    ] = None,
    consent: Annotated[
        list[Annotated[str, Query(pattern=_CONSENT, max_length=2000)]] | None,
        Query(description="column=purpose[:wording], repeatable", max_length=3),
    ] = None,
    tag: Annotated[
        list[Annotated[str, Query(pattern=_TAG)]] | None,
        Query(description="added to every contact, repeatable", max_length=100),
    ] = None,
    key: Annotated[
        str | None,
        Query(description="the import key: send it again to resume", max_length=200, pattern=_TEXT),
    ] = None,
    file_name: Annotated[str | None, Query(max_length=200, pattern=_TEXT)] = None,
) -> ImportOut:
    """Streams the file to the contacts service and answers once every row is applied (or
    rejected): a summary, with the link to the rejected rows. Send the same `key` again
    to resume an import that broke off, or to repeat it: rows applied before are skipped.
    Up to 2 GiB (413 beyond); a row over 1 MiB is a rejected row."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_IMPORT_BYTES:
        raise problems.too_large(MAX_IMPORT_BYTES)
    media, params = parse_options_header(request.headers.get("content-type", ""))
    query: dict[str, Any] = {
        "format": format, "match": match, "map": map, "consent": consent, "tags": tag,
        "import_key": key, "file_name": file_name,
    }  # fmt: skip
    body = _body(request, MAX_IMPORT_BYTES)
    if media.decode() in MEDIA_FORMATS:
        query["format"] = query["format"] or MEDIA_FORMATS[media.decode()]
        options = options_from(query)
        chunks = _rechunk(body)
    elif media == b"multipart/form-data" and params.get(b"boundary"):
        reader = _Multipart(params[b"boundary"])
        early: list[bytes] = []
        async for piece in body:  # up to the start of the file part
            early.extend(reader.feed(piece))
            if reader.seen_file or reader.finished:
                break
        if not reader.seen_file:
            raise _invalid("file", "a multipart part named 'file' is required")
        values = {
            **{k: v for k, v in query.items() if v},
            **_parse_options_part(bytes(reader.options)),
        }
        values.setdefault("file_name", reader.file_name)
        options = options_from(values)

        async def file_data() -> AsyncIterator[bytes]:
            for piece in early:
                yield piece
            async for piece in body:
                for data in reader.feed(piece):
                    yield data

        chunks = _rechunk(file_data())
    else:
        raise problems.Problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            "send text/csv, application/x-ndjson or multipart/form-data",
        )

    # A body that breaks off, grows past the limit or holds a bad multipart part must not
    # look like the end of the file to contacts: the call is cancelled (the import is left
    # failed, to resume with the same key) and the caller gets the reason.
    failure: list[Exception] = []

    async def stream() -> AsyncIterator[imports_pb2.ImportContactsRequest]:
        yield imports_pb2.ImportContactsRequest(options=options)
        try:
            async for chunk in chunks:
                yield imports_pb2.ImportContactsRequest(chunk=chunk)
        except Exception as err:
            # Raised out of the request iterator, the error cancels the call (gRPC's
            # client): a stream that just ended would read as the end of the file.
            failure.append(err)
            raise

    call = backends.imports.ImportContacts(
        stream(), metadata=caller.metadata, timeout=IMPORT_TIMEOUT_S
    )
    try:
        answer: imports_pb2.ImportSummary = await call
    except (grpc.aio.AioRpcError, asyncio.CancelledError) as err:
        if failure:
            if isinstance(failure[0], _TooLarge):
                raise problems.too_large(MAX_IMPORT_BYTES) from None
            raise failure[0] from None
        if isinstance(err, asyncio.CancelledError):
            raise
        raise problems.from_rpc_error(err, "contacts") from err
    return summary_json(answer)


@router.get(
    "/{import_id}",
    response_model=ImportOut,
    summary="Get an import's summary",
    responses=problems.responses(401, 404, 422, 503),
)
async def get_import(import_id: ImportId, caller: CallerDep, backends: BackendsDep) -> ImportOut:
    """The counts and state of an import of the API key's workspace."""
    answer: imports_pb2.ImportSummary = await caller.call(
        backends.imports.GetImport,
        imports_pb2.GetImportRequest(import_id=import_id),
        service="contacts",
    )
    return summary_json(answer)


def safe_cell(value: str) -> str:
    """A cell a spreadsheet shows as text: no formula, no NUL, at most :data:`MAX_CELL`."""
    value = value.replace("\x00", "")
    if len(value) > MAX_CELL:
        value = value[: MAX_CELL - 1] + "…"
    if value.startswith(_DANGEROUS):
        value = "'" + value
    return value


def error_rows_csv(errors: list[tuple[int, str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for line, field, reason in errors:
        writer.writerow([line, safe_cell(field), safe_cell(reason)])
    return out.getvalue()


@router.get(
    "/{import_id}/errors",
    summary="Download an import's rejected rows (CSV)",
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        **problems.responses(401, 404, 422, 503),
    },
    response_class=StreamingResponse,
)
async def import_errors(
    import_id: ImportId, caller: CallerDep, backends: BackendsDep
) -> StreamingResponse:
    """`line,field,reason` for each rejected row (the first 100,000), in line order."""
    first: imports_pb2.ListImportErrorsResponse = await caller.call(
        backends.imports.ListImportErrors,
        imports_pb2.ListImportErrorsRequest(import_id=import_id, page_size=10_000),
        service="contacts",
    )

    async def pages() -> AsyncIterator[str]:
        page = first
        yield "line,field,reason\r\n"
        while True:
            yield error_rows_csv([(e.line, e.field, e.reason) for e in page.errors])
            if not page.next_page_token:
                return
            page = await caller.call(
                backends.imports.ListImportErrors,
                imports_pb2.ListImportErrorsRequest(
                    import_id=import_id, page_size=10_000, page_token=page.next_page_token
                ),
                service="contacts",
            )

    return StreamingResponse(
        pages(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="import-{import_id}-errors.csv"'},
    )
