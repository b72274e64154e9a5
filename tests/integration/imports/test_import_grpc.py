"""ImportService over real gRPC, PostgreSQL and Kafka: upserts, bad rows, repeats, events."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc, imports_pb2, imports_pb2_grpc

from tests.integration.conftest import RunningService, Workspace
from tests.integration.imports.helpers import errors_of, events_by_contact, run_import
from tests.support import eventually, fetchval

CSV = imports_pb2.IMPORT_FORMAT_CSV
NDJSON = imports_pb2.IMPORT_FORMAT_NDJSON
MARKETING = contacts_pb2.CONSENT_PURPOSE_MARKETING


@pytest.fixture
async def channel(contacts_service: RunningService) -> grpc.aio.Channel:
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        yield ch


async def get(channel: grpc.aio.Channel, ws: Workspace, email: str) -> contacts_pb2.Contact:
    answer = await contacts_pb2_grpc.ContactServiceStub(channel).GetContact(
        contacts_pb2.GetContactRequest(contact=contacts_pb2.ContactRef(email=email)),
        metadata=ws.metadata,
    )
    return answer.contact


async def count_contacts(ws: Workspace) -> int:
    value = await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT count(*) FROM contacts.contacts WHERE workspace_id = $1",
        uuid.UUID(ws.id),
    )
    assert isinstance(value, int)
    return value


async def test_csv_import_creates_then_updates_and_leaves_unchanged_rows_alone(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    first = (
        b"E-Mail,Vorname,city,tags,vip,birthday\r\n"
        b'ada@example.com,Ada,Rome,"a;b",yes,--12-10\r\n'
        b'bob@example.com,"Bob ""the"" Builder",Milan,,no,1990-01-31\r\n'
    )
    summary = await run_import(
        channel,
        workspace,
        first,
        chunk=5,
        format=CSV,
        columns={"E-Mail": "email", "Vorname": "first_name", "city": "attributes.city"},
        tags=["imported"],
        import_key="k1",
    )
    assert (summary.rows, summary.created, summary.updated, summary.rejected) == (2, 2, 0, 0)
    assert summary.state == imports_pb2.IMPORT_STATE_COMPLETED and not summary.resumed
    ada = await get(channel, workspace, "ada@example.com")
    assert ada.first_name == "Ada" and ada.vip and ada.attributes["city"] == "Rome"
    assert list(ada.tags) == ["a", "b", "imported"]
    assert (ada.birthday.year, ada.birthday.month, ada.birthday.day) == (0, 12, 10)
    bob = await get(channel, workspace, "bob@example.com")
    assert bob.first_name == 'Bob "the" Builder'

    second = b"email,first_name,last_name\nADA@example.com,Ada,Lovelace\nbob@example.com,,\n"
    again = await run_import(channel, workspace, second, format=CSV, import_key="k2")
    assert (again.rows, again.created, again.updated, again.unchanged) == (2, 0, 1, 1)
    ada = await get(channel, workspace, "ada@example.com")
    assert ada.last_name == "Lovelace" and ada.attributes["city"] == "Rome"
    assert (await get(channel, workspace, "bob@example.com")).first_name == 'Bob "the" Builder'
    assert await count_contacts(workspace) == 2

    await eventually(
        lambda: fetchval(
            os.environ["DATABASE_URL"],
            "SELECT NOT EXISTS (SELECT 1 FROM contacts.outbox WHERE key = ANY($1))",
            [ada.id.encode(), bob.id.encode()],
        ),
        timeout=30,
    )
    events = await events_by_contact(
        os.environ["KAFKA_BOOTSTRAP_SERVERS"], workspace.id, [ada.id, bob.id]
    )
    ada_events = [(e.WhichOneof("payload"), e) for e in events[ada.id]]
    assert [kind for kind, _ in ada_events] == ["contact_created", "contact_updated"]
    assert ada_events[0][1].contact_created.contact.version == 1
    updated = ada_events[1][1].contact_updated
    assert updated.contact.version == 2 and list(updated.changed_fields) == ["last_name"]
    assert [e.WhichOneof("payload") for e in events[bob.id]] == ["contact_created"]


async def test_bad_rows_are_reported_with_line_field_and_reason_and_good_rows_still_land(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    data = (
        b"email,first_name,time_zone,score\n"
        b"good1@example.com,G,Europe/Rome,5\n"  # 2
        b"not-an-email,X,,\n"  # 3
        b"tz@example.com,T,Mars/Base,\n"  # 4
        b"nul@example.com,N\x00,,\n"  # 5
        b"utf@example.com,\xff\xfe,,\n"  # 6
        b"long@example.com," + b"x" * (2 * 1024 * 1024) + b",,\n"  # 7: a 2 MiB line
        b"cells@example.com,too,many,cells,here\n"  # 8
        b"score@example.com,S,,lots\n"  # 9
        b'"multi@example.com","Line\nbreak",,\n'  # 10-11
        b"good2@example.com,H,,\n"  # 12
    )
    summary = await run_import(channel, workspace, data, chunk=65_536, format=CSV)
    assert (summary.rows, summary.created, summary.rejected) == (10, 3, 7)
    errors = await errors_of(channel, workspace, summary.import_id)
    by_line = {line: (field, reason) for line, field, reason in errors}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 9]
    assert by_line[3] == (
        "email",
        "is not a valid e-mail address: An email address must have an @-sign.",
    )
    assert by_line[4][0] == "time_zone"
    assert "NUL" in by_line[5][1]
    assert "UTF-8" in by_line[6][1]
    assert "longer than" in by_line[7][1]
    assert by_line[9][0] == "score"
    assert (await get(channel, workspace, "multi@example.com")).first_name == "Line\nbreak"
    assert await count_contacts(workspace) == 3


async def test_repeating_an_import_with_its_key_creates_nothing_and_publishes_nothing(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    data = b"".join(b'{"email": "r%d@example.com", "tags": ["x"]}\n' % i for i in range(50))
    first = await run_import(channel, workspace, data, format=NDJSON, import_key="same")
    outbox_before = await fetchval(
        os.environ["DATABASE_URL"], "SELECT coalesce(max(id), 0) FROM contacts.outbox"
    )
    again = await run_import(channel, workspace, data, format=NDJSON, import_key="same")
    assert again.resumed and again.import_id == first.import_id
    assert (again.rows, again.created) == (50, 50)
    assert await count_contacts(workspace) == 50
    # Nothing new reached the outbox for this workspace's contacts (the relay may have
    # drained it meanwhile, so compare versions too).
    versions = await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT max(version) FROM contacts.contacts WHERE workspace_id = $1",
        uuid.UUID(workspace.id),
    )
    assert versions == 1
    assert outbox_before is not None

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run_import(channel, workspace, data, format=NDJSON, import_key="same", tags=["y"])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_consent_columns_record_history_and_publish_one_versioned_event_each(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    data = b"email,newsletter\nc1@example.com,yes\nc2@example.com,\nc3@example.com,no\n"
    consent = imports_pb2.ConsentColumn(
        column="newsletter", purpose=MARKETING, wording="Send me news"
    )
    await run_import(channel, workspace, data, format=CSV, consent_columns=[consent])
    again = await run_import(channel, workspace, data, format=CSV, consent_columns=[consent])
    assert again.unchanged == 3
    db = os.environ["DATABASE_URL"]
    history = await fetchval(
        db,
        "SELECT array_agg(c.email || ':' || e.status || ':' || e.source || ':' || e.wording"
        " ORDER BY c.email) FROM contacts.consent_events e JOIN contacts.contacts c"
        " ON c.workspace_id = e.workspace_id AND c.id = e.contact_id WHERE e.workspace_id = $1",
        uuid.UUID(workspace.id),
    )
    assert history == ["c1@example.com:1:2:Send me news", "c3@example.com:2:2:Send me news"]
    version = await fetchval(
        db,
        "SELECT version FROM contacts.contacts WHERE workspace_id = $1 AND email = $2",
        uuid.UUID(workspace.id),
        "c1@example.com",
    )
    assert version == 2
    statuses = await fetchval(
        db,
        "SELECT array_agg(c.email || ':' || s.status ORDER BY c.email) FROM contacts.consents s"
        " JOIN contacts.contacts c ON c.workspace_id = s.workspace_id AND c.id = s.contact_id"
        " WHERE s.workspace_id = $1",
        uuid.UUID(workspace.id),
    )
    assert statuses == ["c1@example.com:1", "c3@example.com:2"]
    # An existing contact whose consent changes: one more version, the current state moved.
    changed = await run_import(
        channel, workspace, b"email,newsletter\nc1@example.com,no\n", format=CSV,
        consent_columns=[consent],
    )  # fmt: skip
    assert changed.created == 0
    after = await fetchval(
        db,
        "SELECT c.version || ':' || s.status FROM contacts.contacts c JOIN contacts.consents s"
        " ON s.workspace_id = c.workspace_id AND s.contact_id = c.id"
        " WHERE c.workspace_id = $1 AND c.email = $2",
        uuid.UUID(workspace.id),
        "c1@example.com",
    )
    assert after == "3:2"


async def test_bad_options_and_headers_are_refused_before_anything_is_written(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    cases = [
        (b"email\na@example.com\n", {"format": 0}, "options.format"),
        (
            b"email\na@example.com\n",
            {"format": CSV, "columns": {"x": "nope"}},
            "options.columns[x]",
        ),
        (b"email,shoe_size\na@example.com,4\n", {"format": CSV}, "header[shoe_size]"),
        (b"first_name\nAda\n", {"format": CSV}, "header"),
        (b"email\na@example.com\n", {"format": CSV, "tags": ["Bad Tag"]}, "options.tags[0]"),
        (
            b"email\na@example.com\n",
            {"format": CSV, "consent_columns": [imports_pb2.ConsentColumn(column="email")]},
            "options.consent_columns[0].purpose",
        ),
    ]
    for data, options, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await run_import(channel, workspace, data, **options)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in (err.value.details() or ""), (field, err.value.details())
    assert await count_contacts(workspace) == 0
    imports = await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT count(*) FROM contacts.imports WHERE workspace_id = $1",
        uuid.UUID(workspace.id),
    )
    assert imports == 0


async def test_another_workspace_cannot_read_an_import(
    channel: grpc.aio.Channel, workspace: Workspace, contacts_service: RunningService
) -> None:
    from tests.integration.gateway.conftest import new_workspace

    summary = await run_import(channel, workspace, b"email\nx@example.com\n", format=CSV)
    other = await new_workspace(contacts_service)
    stub = imports_pb2_grpc.ImportServiceStub(channel)
    for call in (
        stub.GetImport(
            imports_pb2.GetImportRequest(import_id=summary.import_id), metadata=other.metadata
        ),
        stub.ListImportErrors(
            imports_pb2.ListImportErrorsRequest(import_id=summary.import_id),
            metadata=other.metadata,
        ),
        stub.GetImport(imports_pb2.GetImportRequest(import_id="junk"), metadata=other.metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    mine = await stub.GetImport(
        imports_pb2.GetImportRequest(import_id=summary.import_id), metadata=workspace.metadata
    )
    assert mine.created == 1


async def test_the_same_contact_twice_in_a_file_applies_in_order_and_identity_clashes_are_rejected(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    first = b"email,external_id,first_name\na@example.com,A1,First\nb@example.com,B1,Bee\n"
    await run_import(channel, workspace, first, format=CSV)
    data = (
        b"email,external_id,first_name\n"
        b"dup@example.com,,One\n"  # 2
        b"DUP@example.com,,Two\n"  # 3: the same contact again, later wins
        b"a@example.com,B1,Clash\n"  # 4: B1 is b@'s external id
    )
    summary = await run_import(channel, workspace, data, format=CSV)
    assert (summary.created, summary.updated, summary.rejected) == (1, 1, 1)
    assert (await get(channel, workspace, "dup@example.com")).first_name == "Two"
    assert (await get(channel, workspace, "a@example.com")).first_name == "First"
    errors = await errors_of(channel, workspace, summary.import_id)
    assert errors == [(4, "external_id", "belongs to another contact (with another e-mail)")]

    by_id = b"external_id,email,last_name\nA1,a-new@example.com,Moved\nZ9,b@example.com,X\n"
    moved = await run_import(
        channel, workspace, by_id, format=CSV, match=imports_pb2.IMPORT_MATCH_EXTERNAL_ID
    )
    assert (moved.updated, moved.rejected) == (1, 1)
    assert (await get(channel, workspace, "a-new@example.com")).last_name == "Moved"


async def test_an_import_needs_an_api_key_and_well_formed_messages(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    stub = imports_pb2_grpc.ImportServiceStub(channel)
    options = imports_pb2.ImportOptions(format=CSV)

    async def one() -> AsyncIterator[imports_pb2.ImportContactsRequest]:
        yield imports_pb2.ImportContactsRequest(options=options)
        yield imports_pb2.ImportContactsRequest(chunk=b"email\nnokey@example.com\n")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportContacts(one())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportContacts(one(), metadata=(("authorization", "Bearer nk_bad_key"),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    raw = channel.stream_unary("/nudge.contacts.v1.ImportService/ImportContacts")

    async def garbage() -> AsyncIterator[bytes]:
        yield imports_pb2.ImportContactsRequest(options=options).SerializeToString()
        yield b"\xff\xff\xff"

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(garbage(), metadata=workspace.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "body" in (err.value.details() or "")

    async def chunk_first() -> AsyncIterator[imports_pb2.ImportContactsRequest]:
        yield imports_pb2.ImportContactsRequest(chunk=b"email\n")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ImportContacts(chunk_first(), metadata=workspace.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await count_contacts(workspace) == 0
