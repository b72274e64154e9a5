"""ContactService's changes over real gRPC, PostgreSQL and Kafka: every committed change
publishes exactly one event with the contact's next version, a no-op publishes nothing, a
refused or rolled-back change publishes nothing and leaves nothing written."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from google.protobuf.field_mask_pb2 import FieldMask
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc, events_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.events import payload_of
from services.common.topics import CONTACTS_EVENTS
from tests.integration.conftest import RunningService, Workspace
from tests.integration.contacts.test_contacts_grpc import (  # noqa: F401  (fixture)
    _new_workspace,
    channel,
    violations,
)
from tests.support import unique

C = contacts_pb2
NUMBER = C.ATTRIBUTE_TYPE_NUMBER


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> contacts_pb2_grpc.ContactServiceStub:  # noqa: F811
    return contacts_pb2_grpc.ContactServiceStub(channel)


def by_id(contact: C.Contact) -> C.ContactRef:
    return C.ContactRef(contact_id=contact.id)


async def create(
    stub: contacts_pb2_grpc.ContactServiceStub, ws: Workspace, email: str, **fields: object
) -> C.Contact:
    answer = await stub.CreateContact(
        C.CreateContactRequest(contact=C.Contact(email=email, **fields)),  # type: ignore[arg-type]
        metadata=ws.metadata,
    )
    return answer.contact


async def events_of(
    infra: dict[str, str], contact_id: str, until: Callable[[list[Envelope]], bool]
) -> list[Envelope]:
    """Envelopes on contacts.events.v1 keyed by the contact, from the start, read until
    ``until`` holds for them (with a deadline)."""
    consumer = AIOKafkaConsumer(
        CONTACTS_EVENTS,
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"],
        group_id=unique("test-reader"),
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: list[Envelope] = []
    try:
        async with asyncio.timeout(60):
            while not until(found):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [
                        Envelope.FromString(r.value)
                        for r in records
                        if r.key == contact_id.encode()
                    ]
    finally:
        await consumer.stop()
    return found


def version_of(env: Envelope) -> int:
    payload = payload_of(env)
    if isinstance(payload, events_pb2.ContactCreated | events_pb2.ContactUpdated):
        return int(payload.contact.version)
    return int(payload.version)  # type: ignore[union-attr]


def reaches(version: int) -> Callable[[list[Envelope]], bool]:
    return lambda found: any(version_of(e) >= version for e in found)


def short(env: Envelope) -> tuple[str, int]:
    return env.type.removeprefix("nudge.contacts.v1."), version_of(env)


async def test_every_change_publishes_one_event_with_the_next_version_and_no_ops_none(
    stub: contacts_pb2_grpc.ContactServiceStub, workspace: Workspace, infra: dict[str, str]
) -> None:
    md = workspace.metadata
    contact = await create(stub, workspace, "ver@example.com", first_name="Ada", tags=["a"])
    assert contact.version == 1
    ref = by_id(contact)
    patch = C.Contact(first_name="Ada", last_name="Lovelace")
    mask = FieldMask(paths=["first_name", "last_name"])
    answer = await stub.UpdateContact(
        C.UpdateContactRequest(contact=ref, contact_patch=patch, update_mask=mask), metadata=md
    )
    assert (answer.changed, answer.contact.version, answer.contact.last_name) == (
        True,
        2,
        "Lovelace",
    )
    again = await stub.UpdateContact(
        C.UpdateContactRequest(contact=ref, contact_patch=patch, update_mask=mask), metadata=md
    )
    assert (again.changed, again.contact.version) == (False, 2)
    tags = await stub.ModifyTags(C.ModifyTagsRequest(contact=ref, add=["b"]), metadata=md)
    assert (tags.changed, list(tags.contact.tags), tags.contact.version) == (True, ["a", "b"], 3)
    same = await stub.ModifyTags(C.ModifyTagsRequest(contact=ref, add=["a"]), metadata=md)
    assert (same.changed, same.contact.version) == (False, 3)
    score = await stub.AdjustScore(C.AdjustScoreRequest(contact=ref, delta=5), metadata=md)
    assert (score.score, score.version) == (5, 4)
    deleted = await stub.DeleteContact(C.DeleteContactRequest(contact=ref), metadata=md)
    assert deleted.contact_id == contact.id

    found = await events_of(infra, contact.id, reaches(5))
    assert [short(e) for e in found] == [
        ("ContactCreated", 1),
        ("ContactUpdated", 2),
        ("TagsChanged", 3),
        ("ScoreChanged", 4),
        ("ContactDeleted", 5),
    ]
    updated = payload_of(found[1])
    assert isinstance(updated, events_pb2.ContactUpdated)
    assert list(updated.changed_fields) == ["last_name"]
    changed = payload_of(found[2])
    assert isinstance(changed, events_pb2.TagsChanged)
    assert (list(changed.added), list(changed.removed), list(changed.tags)) == (
        ["b"],
        [],
        ["a", "b"],
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetContact(C.GetContactRequest(contact=ref), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_update_needs_a_mask_checks_the_version_and_refuses_a_taken_email(
    stub: contacts_pb2_grpc.ContactServiceStub, workspace: Workspace
) -> None:
    md = workspace.metadata
    ada = await create(stub, workspace, "ada.v@example.com")
    await create(stub, workspace, "bo.v@example.com")
    patch = C.Contact(email="BO.V@example.com", first_name="X")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateContact(
            C.UpdateContactRequest(contact=by_id(ada), contact_patch=patch), metadata=md
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["update_mask.paths"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateContact(
            C.UpdateContactRequest(
                contact=by_id(ada),
                contact_patch=patch,
                update_mask=FieldMask(paths=["first_name"]),
                expected_version=7,
            ),
            metadata=md,
        )
    assert err.value.code() == grpc.StatusCode.ABORTED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateContact(
            C.UpdateContactRequest(
                contact=by_id(ada),
                contact_patch=patch,
                update_mask=FieldMask(paths=["first_name", "email"]),
                expected_version=1,
            ),
            metadata=md,
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateContact(
            C.UpdateContactRequest(
                contact=by_id(ada),
                contact_patch=C.Contact(email="nobody.example.com", time_zone="Mars/Base"),
                update_mask=FieldMask(paths=["email", "time_zone", "score"]),
            ),
            metadata=md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["update_mask.paths[2]"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateContact(
            C.UpdateContactRequest(
                contact=by_id(ada),
                contact_patch=C.Contact(email="nobody.example.com", time_zone="Mars/Base"),
                update_mask=FieldMask(paths=["email", "time_zone"]),
            ),
            metadata=md,
        )
    assert violations(err.value) == ["contact_patch.email", "contact_patch.time_zone"]
    assert "@-sign" in (err.value.details() or "")
    # Nothing of the refused changes stuck.
    now = await stub.GetContact(C.GetContactRequest(contact=by_id(ada)), metadata=md)
    assert (now.contact.email, now.contact.first_name, now.contact.version) == (
        "ada.v@example.com",
        "",
        1,
    )
    ok = await stub.UpdateContact(
        C.UpdateContactRequest(
            contact=by_id(ada),
            contact_patch=patch,
            update_mask=FieldMask(paths=["first_name"]),
            expected_version=1,
        ),
        metadata=md,
    )
    assert (ok.changed, ok.contact.version) == (True, 2)


async def test_another_workspace_cannot_change_or_see_a_contact(
    stub: contacts_pb2_grpc.ContactServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    other = await _new_workspace(contacts_service)
    mine = await create(stub, workspace, "mine.x@example.com", tags=["t"])
    calls = [
        stub.UpdateContact(
            C.UpdateContactRequest(
                contact=by_id(mine),
                contact_patch=C.Contact(first_name="X"),
                update_mask=FieldMask(paths=["first_name"]),
            ),
            metadata=other.metadata,
        ),
        stub.DeleteContact(C.DeleteContactRequest(contact=by_id(mine)), metadata=other.metadata),
        stub.ModifyTags(
            C.ModifyTagsRequest(contact=by_id(mine), add=["x"]), metadata=other.metadata
        ),
        stub.AdjustScore(
            C.AdjustScoreRequest(contact=by_id(mine), delta=1), metadata=other.metadata
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    bulk = await stub.BulkModifyTags(
        C.BulkModifyTagsRequest(filter=C.ContactFilter(contact_ids=[mine.id]), add=["x"]),
        metadata=other.metadata,
    )
    assert (bulk.matched, bulk.changed) == (0, 0)
    listed = await stub.ListContacts(C.ListContactsRequest(), metadata=other.metadata)
    assert list(listed.contacts) == []
    now = await stub.GetContact(
        C.GetContactRequest(contact=by_id(mine)), metadata=workspace.metadata
    )
    assert now.contact == mine


async def test_upsert_creates_then_updates_by_external_id_and_a_replay_changes_nothing(
    stub: contacts_pb2_grpc.ContactServiceStub, workspace: Workspace
) -> None:
    md = workspace.metadata
    request = C.UpsertContactRequest(
        contact=C.Contact(external_id="cust-1", email="up@example.com", first_name="Ada")
    )
    first = await stub.UpsertContact(request, metadata=md)
    assert (first.created, first.changed, first.contact.version) == (True, True, 1)
    replay = await stub.UpsertContact(request, metadata=md)
    assert (replay.created, replay.changed, replay.contact.id) == (False, False, first.contact.id)
    update = await stub.UpsertContact(
        C.UpsertContactRequest(
            contact=C.Contact(external_id="cust-1", email="up@example.com", first_name="Bo")
        ),
        metadata=md,
    )
    assert (update.created, update.changed, update.contact.first_name) == (False, True, "Bo")
    assert update.contact.version == 2
    # A mask limits what an existing contact gets: last_name only.
    masked = await stub.UpsertContact(
        C.UpsertContactRequest(
            contact=C.Contact(external_id="cust-1", first_name="Cy", last_name="L"),
            update_mask=FieldMask(paths=["last_name"]),
        ),
        metadata=md,
    )
    assert (masked.contact.first_name, masked.contact.last_name) == ("Bo", "L")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpsertContact(
            C.UpsertContactRequest(contact=C.Contact(email="noid@example.com")), metadata=md
        )
    assert violations(err.value) == ["contact.external_id"]
    # Another customer id with an e-mail that is taken: 409, nothing created.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpsertContact(
            C.UpsertContactRequest(contact=C.Contact(external_id="cust-2", email="UP@example.com")),
            metadata=md,
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = await stub.ListContacts(C.ListContactsRequest(), metadata=md)
    assert [c.external_id for c in listed.contacts] == ["cust-1"]


async def test_concurrent_upserts_of_one_new_customer_make_one_contact(
    stub: contacts_pb2_grpc.ContactServiceStub, workspace: Workspace
) -> None:
    request = C.UpsertContactRequest(
        contact=C.Contact(external_id="race-1", email="race@example.com", first_name="R")
    )
    answers = await asyncio.gather(
        *(stub.UpsertContact(request, metadata=workspace.metadata) for _ in range(8))
    )
    assert len({a.contact.id for a in answers}) == 1
    assert sum(a.created for a in answers) == 1


async def test_list_pages_by_creation_with_a_token_bound_to_its_filter(
    stub: contacts_pb2_grpc.ContactServiceStub, workspace: Workspace
) -> None:
    md = workspace.metadata
    made = [
        await create(stub, workspace, f"page{n}@example.com", tags=["even" if n % 2 else "odd"])
        for n in range(7)
    ]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await stub.ListContacts(
            C.ListContactsRequest(page_size=3, page_token=token), metadata=md
        )
        seen += [c.id for c in page.contacts]
        pages += 1
        token = page.next_page_token
        if not token:
            break
        # A contact created between pages does not shift what comes next.
        if pages == 1:
            made.append(await create(stub, workspace, "late@example.com"))
    assert seen == [c.id for c in made]
    assert pages == 3
    odd = await stub.ListContacts(
        C.ListContactsRequest(filter=C.ContactFilter(tags_all=["odd"]), page_size=2), metadata=md
    )
    assert [c.email for c in odd.contacts] == ["page0@example.com", "page2@example.com"]
    bad = [
        C.ListContactsRequest(
            filter=C.ContactFilter(tags_all=["even"]), page_token=odd.next_page_token
        ),
        C.ListContactsRequest(page_token="not-a-token"),
        C.ListContactsRequest(page_size=1001),
        C.ListContactsRequest(filter=C.ContactFilter(tags_any=["Bad Tag"])),
        C.ListContactsRequest(filter=C.ContactFilter(attributes={"undeclared": "x"})),
    ]
    expected = [
        ["page_token"],
        ["page_token"],
        ["page_size"],
        ["filter.tags_any[0]"],
        ["filter.attributes.undeclared"],
    ]
    for request, fields in zip(bad, expected, strict=True):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListContacts(request, metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err.value) == fields


async def test_bulk_tags_change_every_match_once_and_a_repeat_changes_nothing(
    stub: contacts_pb2_grpc.ContactServiceStub, workspace: Workspace, infra: dict[str, str]
) -> None:
    md = workspace.metadata
    vips = [await create(stub, workspace, f"vip{n}@example.com", vip=True) for n in range(3)]
    await stub.ModifyTags(C.ModifyTagsRequest(contact=by_id(vips[0]), add=["promo"]), metadata=md)
    await create(stub, workspace, "plain@example.com")
    request = C.BulkModifyTagsRequest(filter=C.ContactFilter(vip=True), add=["promo"])
    first = await stub.BulkModifyTags(request, metadata=md)
    assert (first.matched, first.changed) == (3, 2)
    repeat = await stub.BulkModifyTags(request, metadata=md)
    assert (repeat.matched, repeat.changed) == (3, 0)
    listed = await stub.ListContacts(
        C.ListContactsRequest(filter=C.ContactFilter(tags_all=["promo"])), metadata=md
    )
    assert sorted(c.email for c in listed.contacts) == [f"vip{n}@example.com" for n in range(3)]
    assert {c.version for c in listed.contacts} == {2}
    # One TagsChanged for vip1, with version 2; the repeat published nothing more.
    await stub.AdjustScore(C.AdjustScoreRequest(contact=by_id(vips[1]), delta=1), metadata=md)
    found = await events_of(infra, vips[1].id, reaches(3))
    assert [short(e) for e in found] == [
        ("ContactCreated", 1),
        ("TagsChanged", 2),
        ("ScoreChanged", 3),
    ]
    removed = await stub.BulkModifyTags(
        C.BulkModifyTagsRequest(filter=C.ContactFilter(query="vip"), remove=["promo"]),
        metadata=md,
    )
    assert (removed.matched, removed.changed) == (3, 3)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.BulkModifyTags(
            C.BulkModifyTagsRequest(filter=C.ContactFilter(vip=True)), metadata=md
        )
    assert violations(err.value) == ["add"]


@pytest.fixture
async def db(contacts_service: RunningService) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_bulk_change_that_fails_midway_leaves_nothing_written_or_published(
    stub: contacts_pb2_grpc.ContactServiceStub,
    workspace: Workspace,
    infra: dict[str, str],
    db: asyncpg.Connection,
) -> None:
    md = workspace.metadata
    contacts = [await create(stub, workspace, f"mid{n}@example.com") for n in range(3)]
    victim = sorted(c.id for c in contacts)[1]
    # The outbox refuses the middle contact's event with a unique violation: the statement
    # has already updated the three contacts by then.
    fn = f"refuse_{uuid.uuid4().hex}"
    await db.execute(
        f"CREATE FUNCTION contacts.{fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.key = convert_to('{victim}', 'UTF8') THEN"
        "  RAISE unique_violation USING MESSAGE = 'injected'; END IF; RETURN NEW; END $$"
    )
    await db.execute(
        f"CREATE TRIGGER {fn} BEFORE INSERT ON contacts.outbox FOR EACH ROW"
        f" EXECUTE FUNCTION contacts.{fn}()"
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.BulkModifyTags(
                C.BulkModifyTagsRequest(filter=C.ContactFilter(query="mid"), add=["boom"]),
                metadata=md,
            )
    finally:
        await db.execute(f"DROP TRIGGER {fn} ON contacts.outbox")
        await db.execute(f"DROP FUNCTION contacts.{fn}()")
    rows = await db.fetch(
        "SELECT tags, version FROM contacts.contacts WHERE workspace_id = $1",
        uuid.UUID(workspace.id),
    )
    assert [(list(r["tags"]), r["version"]) for r in rows] == [([], 1)] * 3
    # The next change of each contact is version 2, and the first event after its creation.
    await stub.BulkModifyTags(
        C.BulkModifyTagsRequest(filter=C.ContactFilter(query="mid"), add=["ok"]), metadata=md
    )
    for contact in contacts:
        found = await events_of(infra, contact.id, reaches(2))
        assert [short(e) for e in found] == [("ContactCreated", 1), ("TagsChanged", 2)]


async def test_fifty_concurrent_score_deltas_all_count(
    stub: contacts_pb2_grpc.ContactServiceStub, workspace: Workspace
) -> None:
    contact = await create(stub, workspace, "score@example.com")
    deltas = [n if n % 3 else -n for n in range(1, 51)]
    answers = await asyncio.gather(
        *(
            stub.AdjustScore(
                C.AdjustScoreRequest(contact=by_id(contact), delta=d), metadata=workspace.metadata
            )
            for d in deltas
        )
    )
    now = await stub.GetContact(
        C.GetContactRequest(contact=by_id(contact)), metadata=workspace.metadata
    )
    assert now.contact.score == sum(deltas)
    assert now.contact.version == 51
    assert sorted(a.version for a in answers) == list(range(2, 52))


async def test_a_replayed_score_key_answers_the_first_result_and_overflow_is_refused(
    stub: contacts_pb2_grpc.ContactServiceStub, workspace: Workspace
) -> None:
    md = workspace.metadata
    contact = await create(stub, workspace, "idem@example.com")
    ref = by_id(contact)
    first = await stub.AdjustScore(
        C.AdjustScoreRequest(contact=ref, delta=10, idempotency_key="k1"), metadata=md
    )
    await stub.AdjustScore(C.AdjustScoreRequest(contact=ref, delta=1), metadata=md)
    replay = await stub.AdjustScore(
        C.AdjustScoreRequest(contact=ref, delta=10, idempotency_key="k1"), metadata=md
    )
    assert (replay.score, replay.version, replay.duplicate) == (10, 2, True)
    assert (first.score, first.duplicate) == (10, False)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AdjustScore(
            C.AdjustScoreRequest(contact=ref, delta=11, idempotency_key="k1"), metadata=md
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.AdjustScore(
            C.AdjustScoreRequest(contact=ref, delta=2**63 - 1, idempotency_key="k2"), metadata=md
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["delta"]
    for bad, field in (
        (C.AdjustScoreRequest(contact=ref), "delta"),
        (C.AdjustScoreRequest(delta=1), "contact"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.AdjustScore(bad, metadata=md)
        assert violations(err.value) == [field]
    now = await stub.GetContact(C.GetContactRequest(contact=ref), metadata=md)
    assert (now.contact.score, now.contact.version) == (11, 3)
    # The refused overflow did not take its key: it can be used for a valid change.
    ok = await stub.AdjustScore(
        C.AdjustScoreRequest(contact=ref, delta=-1, idempotency_key="k2"), metadata=md
    )
    assert (ok.score, ok.duplicate) == (10, False)


async def test_a_replayed_tags_key_answers_the_first_version_and_undoes_no_later_change(
    stub: contacts_pb2_grpc.ContactServiceStub, workspace: Workspace
) -> None:
    """The trigger engine's relay retries a call it lost track of: its repeat must not put
    back a tag a manager has taken off since."""
    md = workspace.metadata
    contact = await create(stub, workspace, "tag-idem@example.com")
    ref = by_id(contact)
    first = await stub.ModifyTags(
        C.ModifyTagsRequest(contact=ref, add=["vip"], idempotency_key="t1"), metadata=md
    )
    assert (first.changed, first.duplicate, first.version) == (True, False, 2)
    assert first.contact.version == 2
    taken_off = await stub.ModifyTags(C.ModifyTagsRequest(contact=ref, remove=["vip"]), metadata=md)
    assert taken_off.version == 3
    replay = await stub.ModifyTags(
        C.ModifyTagsRequest(contact=ref, add=["vip"], idempotency_key="t1"), metadata=md
    )
    assert (replay.changed, replay.duplicate, replay.version) == (False, True, 2)
    assert (list(replay.contact.tags), replay.contact.version) == ([], 3)
    # The same key for another change, or another contact, is a conflict.
    other = await create(stub, workspace, "tag-idem-2@example.com")
    for request in (
        C.ModifyTagsRequest(contact=ref, add=["gold"], idempotency_key="t1"),
        C.ModifyTagsRequest(contact=by_id(other), add=["vip"], idempotency_key="t1"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModifyTags(request, metadata=md)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModifyTags(
            C.ModifyTagsRequest(contact=ref, add=["x"], idempotency_key="k" * 201), metadata=md
        )
    assert violations(err.value) == ["idempotency_key"]
    # A change that makes no difference takes its key with the version it found.
    same = await stub.ModifyTags(
        C.ModifyTagsRequest(contact=ref, remove=["vip"], idempotency_key="t2"), metadata=md
    )
    assert (same.changed, same.duplicate, same.version) == (False, False, 3)
    now = await stub.GetContact(C.GetContactRequest(contact=ref), metadata=md)
    assert (list(now.contact.tags), now.contact.version) == ([], 3)


async def test_attributes_are_declared_typed_and_checked_on_contacts(
    stub: contacts_pb2_grpc.ContactServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    md = workspace.metadata
    define = C.DefineAttributeRequest(
        attribute=C.AttributeDefinition(name="spent", type=NUMBER, description="Total spent")
    )
    first = await stub.DefineAttribute(define, metadata=md)
    again = await stub.DefineAttribute(define, metadata=md)
    assert (first.created, again.created, again.attribute.type) == (True, False, NUMBER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DefineAttribute(
            C.DefineAttributeRequest(
                attribute=C.AttributeDefinition(name="spent", type=C.ATTRIBUTE_TYPE_STRING)
            ),
            metadata=md,
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DefineAttribute(
            C.DefineAttributeRequest(attribute=C.AttributeDefinition(name="Bad-Name")), metadata=md
        )
    assert violations(err.value) == ["attribute.name", "attribute.type"]
    listed = await stub.ListAttributes(C.ListAttributesRequest(), metadata=md)
    assert [(a.name, a.type, a.description) for a in listed.attributes] == [
        ("spent", NUMBER, "Total spent")
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(
            stub, workspace, "attr@example.com", attributes={"spent": "a lot", "shoe": "9"}
        )
    assert violations(err.value) == ["contact.attributes.shoe", "contact.attributes.spent"]
    contact = await create(stub, workspace, "attr@example.com", attributes={"spent": "12.50"})
    found = await stub.ListContacts(
        C.ListContactsRequest(filter=C.ContactFilter(attributes={"spent": "12.5"})), metadata=md
    )
    assert [c.id for c in found.contacts] == [contact.id]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateContact(
            C.UpdateContactRequest(
                contact=by_id(contact),
                contact_patch=C.Contact(attributes={"spent": "x"}),
                update_mask=FieldMask(paths=["attributes.spent"]),
            ),
            metadata=md,
        )
    assert violations(err.value) == ["contact_patch.attributes.spent"]
    removed = await stub.UpdateContact(
        C.UpdateContactRequest(
            contact=by_id(contact),
            contact_patch=C.Contact(),
            update_mask=FieldMask(paths=["attributes.spent"]),
        ),
        metadata=md,
    )
    assert (removed.changed, dict(removed.contact.attributes)) == (True, {})
    # Another workspace has no such attribute.
    other_md = (await _new_workspace(contacts_service)).metadata
    listed = await stub.ListAttributes(C.ListAttributesRequest(), metadata=other_md)
    assert list(listed.attributes) == []


async def test_delete_takes_the_consent_history_with_it(
    stub: contacts_pb2_grpc.ContactServiceStub, workspace: Workspace, db: asyncpg.Connection
) -> None:
    answer = await stub.CreateContact(
        C.CreateContactRequest(
            contact=C.Contact(email="gone@example.com"),
            consents=[C.CONSENT_PURPOSE_MARKETING, C.CONSENT_PURPOSE_AUTOMATIONS],
        ),
        metadata=workspace.metadata,
    )
    contact_id = uuid.UUID(answer.contact.id)
    count = (
        "SELECT (SELECT count(*) FROM contacts.consent_events WHERE contact_id = $1)"
        " + (SELECT count(*) FROM contacts.consents WHERE contact_id = $1)"
    )
    assert await db.fetchval(count, contact_id) == 4
    await stub.DeleteContact(
        C.DeleteContactRequest(contact=C.ContactRef(email="GONE@example.com")),
        metadata=workspace.metadata,
    )
    assert await db.fetchval(count, contact_id) == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteContact(
            C.DeleteContactRequest(contact=by_id(answer.contact)), metadata=workspace.metadata
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteContact(C.DeleteContactRequest(), metadata=workspace.metadata)
    assert violations(err.value) == ["contact"]
