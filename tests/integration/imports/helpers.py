"""Shared by the import tests: stream a file to ImportService, read the contacts topic."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterable

import grpc
from aiokafka import AIOKafkaConsumer, TopicPartition
from nudge.contacts.v1 import imports_pb2, imports_pb2_grpc
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.topics import CONTACTS_EVENTS, TOPICS
from tests.integration.conftest import Workspace


async def requests(
    options: imports_pb2.ImportOptions, data: bytes, chunk: int = 7_000
) -> AsyncIterator[imports_pb2.ImportContactsRequest]:
    yield imports_pb2.ImportContactsRequest(options=options)
    for i in range(0, len(data), chunk):
        yield imports_pb2.ImportContactsRequest(chunk=data[i : i + chunk])


async def run_import(
    channel: grpc.aio.Channel,
    ws: Workspace,
    data: bytes,
    chunk: int = 7_000,
    **options: object,
) -> imports_pb2.ImportSummary:
    opts = imports_pb2.ImportOptions(**options)  # type: ignore[arg-type]
    stub = imports_pb2_grpc.ImportServiceStub(channel)
    answer: imports_pb2.ImportSummary = await stub.ImportContacts(
        requests(opts, data, chunk), metadata=ws.metadata
    )
    return answer


async def errors_of(
    channel: grpc.aio.Channel, ws: Workspace, import_id: str
) -> list[tuple[int, str, str]]:
    stub = imports_pb2_grpc.ImportServiceStub(channel)
    out: list[tuple[int, str, str]] = []
    token = ""
    while True:
        page = await stub.ListImportErrors(
            imports_pb2.ListImportErrorsRequest(import_id=import_id, page_token=token, page_size=2),
            metadata=ws.metadata,
        )
        out.extend((e.line, e.field, e.reason) for e in page.errors)
        token = page.next_page_token
        if not token:
            return out


async def events_by_contact(
    bootstrap: str, workspace_id: str, contact_ids: Iterable[str]
) -> dict[str, list[Envelope]]:
    """Every envelope of ``workspace_id`` on contacts.events.v1 from the start to the end
    offsets read now (call it once the outbox holds nothing for these contacts)."""
    wanted = set(contact_ids)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(CONTACTS_EVENTS, p) for p in range(TOPICS[CONTACTS_EVENTS])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        found: dict[str, list[Envelope]] = defaultdict(list)

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in partitions])

        while await behind():
            batches = await consumer.getmany(*partitions, timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for record in records:
                    key = (record.key or b"").decode()
                    if key in wanted:
                        env = Envelope.FromString(record.value)
                        if env.workspace_id == workspace_id:
                            found[key].append(env)
        return found
    finally:
        await consumer.stop()
