"""gRPC ImportService of the contacts service: bulk import streamed in, its summary and its
rejected rows. Decode, call the use case, encode."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
from nudge.contacts.v1 import imports_pb2, imports_pb2_grpc

from services.common.auth import current_workspace
from services.common.errors import FieldViolation, InvalidArgument
from services.contacts.imports import store
from services.contacts.imports.service import BATCH_ROWS, import_contacts

MAX_PAGE = 10_000


def _page_token(token: str) -> tuple[int, int]:
    """The (line, seq) of the last error of the previous page."""
    if not token:
        return (0, -1)
    line, _, seq = token.partition(":")
    if not (line.isdigit() and seq.isdigit()) or len(token) > 40:
        raise InvalidArgument(FieldViolation("page_token", "not a token this service gave"))
    return int(line), int(seq)


class ImportServicer(imports_pb2_grpc.ImportServiceServicer):
    """Imports into the caller's workspace."""

    def __init__(self, pool: asyncpg.Pool, *, batch_rows: int = BATCH_ROWS) -> None:
        self.pool = pool
        self.batch_rows = batch_rows

    async def ImportContacts(
        self,
        request_iterator: AsyncIterator[imports_pb2.ImportContactsRequest],
        context: grpc.aio.ServicerContext,
    ) -> imports_pb2.ImportSummary:
        return await import_contacts(
            self.pool,
            current_workspace(),
            request_iterator,
            batch_rows=self.batch_rows,
            cancelled=context.cancelled,
        )

    async def GetImport(
        self, request: imports_pb2.GetImportRequest, context: grpc.aio.ServicerContext
    ) -> imports_pb2.ImportSummary:
        found = await store.get(
            self.pool, current_workspace(), request.import_id, request.import_key
        )
        return store.summary(found)

    async def ListImportErrors(
        self, request: imports_pb2.ListImportErrorsRequest, context: grpc.aio.ServicerContext
    ) -> imports_pb2.ListImportErrorsResponse:
        if request.page_size < 0:
            raise InvalidArgument(FieldViolation("page_size", "must not be negative"))
        size = min(request.page_size or 1000, MAX_PAGE)
        after = _page_token(request.page_token)
        rows = await store.list_errors(
            self.pool, current_workspace(), request.import_id, after, size
        )
        answer = imports_pb2.ListImportErrorsResponse(
            errors=[
                imports_pb2.ImportError(line=r["line"], field=r["field"], reason=r["reason"])
                for r in rows
            ]
        )
        if len(rows) == size:
            answer.next_page_token = f"{rows[-1]['line']}:{rows[-1]['seq']}"
        return answer
