"""The import use case: options first, then the file's bytes as they arrive; rows are parsed,
checked and applied batch by batch (see :mod:`.store`), one batch committing while the next
is parsed. Only a chunk, one record and two batches are ever in memory.

A repeat or a resume (the same ``import_key``) parses the file again and skips the rows at
or before the line the import had committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
from nudge.contacts.v1 import imports_pb2

from services.common import clock
from services.common.errors import FieldViolation, InvalidArgument
from services.contacts.imports import store
from services.contacts.imports.parsing import CsvReader, NdjsonReader, Record, Rejected
from services.contacts.imports.rows import Row, check_header, plan_from_options, prepare

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 4 * 1024 * 1024
MAX_FILE_BYTES = 2 * 1024**3  # 2 GiB
BATCH_ROWS = 20_000


class _Batch:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.rejected: list[Rejected] = []
        self.keys: set[str] = set()
        self.emails: set[str] = set()
        self.end_line = 0


async def import_contacts(
    pool: asyncpg.Pool,
    workspace_id: str,
    requests: AsyncIterator[imports_pb2.ImportContactsRequest],
    *,
    batch_rows: int = BATCH_ROWS,
    max_file_bytes: int = MAX_FILE_BYTES,
    cancelled: Callable[[], bool] = lambda: False,
) -> imports_pb2.ImportSummary:
    """Apply the file ``requests`` carry. ``cancelled`` says whether the caller gave up: a
    stream that a cancelled call ends is not the end of the file, and must not complete."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("part") != "options":
        raise InvalidArgument(FieldViolation("options", "the first message must carry the options"))
    plan = plan_from_options(first.options)
    reader = CsvReader() if plan.format == imports_pb2.IMPORT_FORMAT_CSV else NdjsonReader()
    header: list[str] | None = None
    targets: list[str | int | None] | None = None
    progress: store.Progress | None = None
    pending: asyncio.Task[store.BatchResult] | None = None
    batch = _Batch()
    size = 0
    finished = False

    async def flush() -> None:
        nonlocal batch, pending
        if pending is not None:
            await pending
            pending = None
        if progress is None or batch.end_line <= progress.committed_line:
            batch = _Batch()
            return
        full = batch
        batch = _Batch()
        pending = asyncio.create_task(
            store.apply_batch(
                pool,
                workspace_id,
                progress.import_id,
                plan,
                full.rows,
                full.rejected,
                full.end_line,
                clock.now(),
            )
        )

    async def take(items: list[Record | Rejected]) -> None:
        nonlocal header, targets, progress
        if header is None and isinstance(reader, CsvReader):
            if reader.header_error is not None:
                raise InvalidArgument(FieldViolation("header", reader.header_error))
            if reader.header is None:
                return
            header = reader.header
            targets = check_header(plan, header)
        if progress is None:
            key = plan.import_key or f"auto-{uuid.uuid4()}"
            progress = await store.begin(pool, workspace_id, plan, key, clock.now())
        now = clock.now()
        for item in items:
            if item.line <= progress.committed_line:
                continue  # applied by an earlier call with this key
            if isinstance(item, Rejected):
                batch.rejected.append(item)
                batch.end_line = item.line
                continue
            prepared = prepare(plan, header, targets, item, now)
            if isinstance(prepared, list):
                batch.rejected.extend(prepared)
                batch.end_line = item.line
                continue
            key = prepared.key(plan.match)
            email = prepared.email.strip().lower()
            # One statement cannot change a contact twice: a key seen in this batch starts
            # the next one, so that rows apply in file order.
            if key in batch.keys or email in batch.emails:
                await flush()
            batch.rows.append(prepared)
            batch.keys.add(key)
            batch.emails.add(email)
            batch.end_line = item.line
            if len(batch.rows) + len(batch.rejected) >= batch_rows:
                await flush()

    try:
        async for request in requests:
            if request.WhichOneof("part") != "chunk":
                raise InvalidArgument(
                    FieldViolation("options", "sent twice: only the first message")
                )
            chunk = request.chunk
            if len(chunk) > MAX_CHUNK_BYTES:
                raise InvalidArgument(FieldViolation("chunk", "larger than 4 MiB"))
            size += len(chunk)
            if size > max_file_bytes:
                raise InvalidArgument(
                    FieldViolation("chunk", f"the file is larger than {max_file_bytes} bytes")
                )
            await take(reader.feed(chunk))
        if cancelled():
            raise asyncio.CancelledError("the caller cancelled the import")
        await take(reader.close())
        if isinstance(reader, CsvReader) and reader.header is None:
            raise InvalidArgument(FieldViolation("header", "the file has no header line"))
        await flush()
        if pending is not None:
            await pending
            pending = None
        assert progress is not None
        if cancelled():
            raise asyncio.CancelledError("the caller cancelled the import")
        await store.finish(
            pool, workspace_id, progress.import_id, imports_pb2.IMPORT_STATE_COMPLETED, clock.now()
        )
        finished = True
        row = await store.get(pool, workspace_id, str(progress.import_id))
        return store.summary(row, resumed=progress.resumed)
    finally:
        if progress is not None and not finished:
            # In a task of its own: a call cancelled by its client may be cancelled again
            # while it cleans up, and the import must still end up FAILED (resumable).
            cleanup = asyncio.create_task(_broke_off(pool, workspace_id, progress, pending))
            _cleanups.add(cleanup)
            cleanup.add_done_callback(_cleanups.discard)


_cleanups: set[asyncio.Task[None]] = set()


async def _broke_off(
    pool: asyncpg.Pool,
    workspace_id: str,
    progress: store.Progress,
    pending: asyncio.Task[store.BatchResult] | None,
) -> None:
    """The stream broke off: let the batch in flight commit (its rows are whole), then mark
    the import FAILED, to be resumed with the same key."""
    if pending is not None:
        with contextlib.suppress(BaseException):
            await pending
    try:
        await store.finish(
            pool, workspace_id, progress.import_id, imports_pb2.IMPORT_STATE_FAILED, clock.now()
        )
    except Exception:
        log.exception("import %s of %s: could not mark it failed", progress.import_id, workspace_id)
    else:
        log.warning("import %s of %s broke off", progress.import_id, workspace_id)
