"""Streams a file to the contacts service's ImportService and shows the progress.

Progress: the service answers only when the whole file is applied, so the bar follows the
bytes sent (and so the ETA); rows/s counts the lines sent. Every second the CLI asks
GetImport (by the import key) for the rows committed and the rows rejected so far. The
file is read in 256 KiB chunks, never whole.

The import key defaults to one derived from the file's absolute path, size and
modification time: after a crash or a lost connection, the same command resumes the import
(rows already applied are skipped); ``--key`` names it yourself. Exit status: 0 when the
import completed (even with rejected rows, which are listed), 1 when it failed, 2 for a
mistake in the command.

Purposes for ``--consent``: marketing, targeted_messages, automations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import IO

import grpc
from nudge.contacts.v1 import contacts_pb2, imports_pb2, imports_pb2_grpc
from tqdm import tqdm

CHUNK = 256 * 1024
SHOWN_ERRORS = 20
PURPOSES = {
    "marketing": contacts_pb2.CONSENT_PURPOSE_MARKETING,
    "targeted_messages": contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES,
    "automations": contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
}


class UsageError(Exception):
    pass


def say(text: str, *, error: bool = False) -> None:
    """A line for the user: the answer on stdout, problems on stderr (a CLI's own output,
    not a service's log)."""
    (sys.stderr if error else sys.stdout).write(text + "\n")


def default_key(path: str) -> str:
    if path == "-":
        return ""
    stat = os.stat(path)
    origin = f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return "file-" + hashlib.sha256(origin.encode()).hexdigest()[:24]


def options_of(arguments: argparse.Namespace) -> imports_pb2.ImportOptions:
    name = "" if arguments.file == "-" else os.path.basename(arguments.file)
    fmt = arguments.format or ("ndjson" if name.endswith((".ndjson", ".jsonl")) else "csv")
    options = imports_pb2.ImportOptions(
        format=imports_pb2.IMPORT_FORMAT_NDJSON
        if fmt == "ndjson"
        else imports_pb2.IMPORT_FORMAT_CSV,
        match=imports_pb2.IMPORT_MATCH_EXTERNAL_ID
        if arguments.match == "external-id"
        else imports_pb2.IMPORT_MATCH_EMAIL,
        tags=arguments.tag,
        import_key=arguments.key or default_key(arguments.file),
        file_name=name[:200],
    )
    for entry in arguments.map:
        column, sep, field = entry.rpartition("=")
        if not sep or not column or not field:
            raise UsageError(f"--map {entry!r}: COLUMN=FIELD")
        options.columns[column] = field
    for entry in arguments.consent:
        column, sep, rest = entry.partition("=")
        purpose, _, wording = rest.partition(":")
        if not sep or not column or purpose not in PURPOSES:
            raise UsageError(f"--consent {entry!r}: COLUMN=PURPOSE[:WORDING], PURPOSE one of "
                             + ", ".join(PURPOSES))  # fmt: skip
        options.consent_columns.append(
            imports_pb2.ConsentColumn(column=column, purpose=PURPOSES[purpose], wording=wording)
        )
    return options


class Progress:
    """The bar (bytes, ETA) and its figures: rows/s sent, rows committed, errors so far."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            disable=not enabled,
            dynamic_ncols=True,
        )
        self.lines = 0
        self.started = time.monotonic()
        self.committed = 0
        self.errors = 0

    def sent(self, chunk: bytes) -> None:
        self.lines += chunk.count(b"\n")
        self.bar.update(len(chunk))
        self.show()

    def show(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self.bar.set_postfix(
            {
                "rows/s": f"{self.lines / elapsed:,.0f}",
                "committed": f"{self.committed:,}",
                "errors": f"{self.errors:,}",
            },
            refresh=False,
        )

    def close(self) -> None:
        self.bar.close()


async def requests(
    options: imports_pb2.ImportOptions, source: IO[bytes], progress: Progress
) -> AsyncIterator[imports_pb2.ImportContactsRequest]:
    yield imports_pb2.ImportContactsRequest(options=options)
    while True:
        chunk = await asyncio.to_thread(source.read, CHUNK)
        if not chunk:
            return
        progress.sent(chunk)
        yield imports_pb2.ImportContactsRequest(chunk=chunk)


async def watch(
    stub: imports_pb2_grpc.ImportServiceStub,
    key: str,
    metadata: tuple[tuple[str, str], ...],
    progress: Progress,
) -> None:
    """Rows committed and rejected so far, every second (the import's row in contacts)."""
    while True:
        await asyncio.sleep(1.0)
        with contextlib.suppress(grpc.aio.AioRpcError):
            summary = await stub.GetImport(
                imports_pb2.GetImportRequest(import_key=key), metadata=metadata, timeout=5
            )
            progress.committed, progress.errors = summary.rows, summary.rejected
            progress.show()
            progress.bar.refresh()


async def run_import(
    arguments: argparse.Namespace,
    options: imports_pb2.ImportOptions,
    source: IO[bytes],
    size: int | None,
) -> int:
    metadata = (("authorization", f"Bearer {arguments.api_key}"),)
    progress = Progress(size, enabled=not arguments.no_progress)
    async with grpc.aio.insecure_channel(arguments.addr) as channel:
        stub = imports_pb2_grpc.ImportServiceStub(channel)
        watcher = (
            asyncio.create_task(watch(stub, options.import_key, metadata, progress))
            if options.import_key
            else None
        )
        try:
            summary: imports_pb2.ImportSummary = await stub.ImportContacts(
                requests(options, source, progress), metadata=metadata
            )
        except grpc.aio.AioRpcError as err:
            progress.close()
            say(f"nudge: import failed: {err.code().name}: {err.details()}", error=True)
            if options.import_key and err.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ):
                say(f"nudge: run the same command again to resume (key {options.import_key})",
                    error=True)  # fmt: skip
            return 1
        finally:
            if watcher is not None:
                watcher.cancel()
        progress.committed, progress.errors = summary.rows, summary.rejected
        progress.show()
        progress.close()
        say(
            f"import {summary.import_id} ({options.import_key or 'no key'}):"
            f" {summary.rows} rows, {summary.created} created, {summary.updated} updated,"
            f" {summary.unchanged} unchanged, {summary.rejected} rejected"
            + (" (resumed)" if summary.resumed else "")
        )
        if summary.rejected:
            page = await stub.ListImportErrors(
                imports_pb2.ListImportErrorsRequest(
                    import_id=summary.import_id, page_size=SHOWN_ERRORS
                ),
                metadata=metadata,
            )
            for error in page.errors:
                say(f"  line {error.line}: {error.field or '-'}: {error.reason}")
            if summary.rejected > len(page.errors):
                say(f"  ... GET /v1/contacts/imports/{summary.import_id}/errors has them all")
    return 0


def run(arguments: argparse.Namespace) -> int:
    try:
        if not arguments.api_key:
            raise UsageError("no API key: --api-key or NUDGE_API_KEY")
        options = options_of(arguments)
        if arguments.file == "-":
            return asyncio.run(run_import(arguments, options, sys.stdin.buffer, None))
        with open(arguments.file, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            return asyncio.run(run_import(arguments, options, source, size))
    except (UsageError, OSError) as err:
        say(f"nudge: {err}", error=True)
        return 2
