"""The command relay (services/triggers/commands.py) against the real contacts service: the
engine's tag and score changes reach the contact once, in the order they were written,
however often a row is relayed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.contacts.v1 import events_pb2 as contacts_events

from services.common.config import InternalAuthSettings
from services.common.events import new_envelope
from services.triggers.commands import CommandRelay
from services.triggers.runtime import facts
from tests.integration.conftest import RunningService, Workspace
from tests.support import eventually, free_port, unique


@pytest.fixture
async def contacts_channel(contacts_service: RunningService) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        yield channel


def internal_token() -> str:
    return InternalAuthSettings().internal_token


async def new_contact(channel: grpc.aio.Channel, ws: Workspace) -> contacts_pb2.Contact:
    answer = await contacts_pb2_grpc.ContactServiceStub(channel).CreateContact(
        contacts_pb2.CreateContactRequest(
            contact=contacts_pb2.Contact(email=f"{unique('cmd')}@example.com")
        ),
        metadata=ws.metadata,
    )
    return answer.contact


async def contact(
    channel: grpc.aio.Channel, ws: Workspace, contact_id: str
) -> contacts_pb2.Contact:
    answer = await contacts_pb2_grpc.ContactServiceStub(channel).GetContact(
        contacts_pb2.GetContactRequest(contact=contacts_pb2.ContactRef(contact_id=contact_id)),
        metadata=ws.metadata,
    )
    return answer.contact


async def write_command(
    pool: asyncpg.Pool,
    ws: Workspace,
    contact_id: str,
    kind: str,
    payload: dict[str, object],
    *,
    command_id: str | None = None,
    created_at: datetime | None = None,
) -> str:
    """A row as the runtime writes it in a step's transaction (replays do nothing)."""
    command_id = command_id or unique("command")
    at = created_at or datetime.now(UTC)
    await pool.execute(
        "INSERT INTO commands (id, workspace_id, contact_id, kind, payload, created_at,"
        " next_try_at) VALUES ($1, $2::uuid, $3::uuid, $4, $5::jsonb, $6, $6)"
        " ON CONFLICT (id) DO NOTHING",
        command_id,
        ws.id,
        contact_id,
        kind,
        json.dumps(payload),
        at,
    )
    return command_id


async def pending(pool: asyncpg.Pool, ws: Workspace) -> list[asyncpg.Record]:
    """The rows the relay has still to carry out (a settled tags row stays as an overlay)."""
    return await pool.fetch(
        "SELECT * FROM commands WHERE workspace_id = $1::uuid AND settled_version IS NULL"
        " ORDER BY created_at",
        ws.id,
    )


async def relay_until_empty(relay: CommandRelay, pool: asyncpg.Pool, ws: Workspace) -> None:
    """Rounds until the workspace's rows are gone (each round settles what it leased)."""
    for _ in range(20):
        await relay.relay_once()
        if not await pending(pool, ws):
            return
    raise AssertionError(f"commands left: {await pending(pool, ws)}")


async def test_a_tag_and_a_score_command_are_applied_once_however_often_relayed(
    triggers_db: asyncpg.Pool, contacts_channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    person = await new_contact(contacts_channel, workspace)
    tags_id = await write_command(triggers_db, workspace, person.id, "tags", {"add": ["vip"]})
    score_id = await write_command(triggers_db, workspace, person.id, "score", {"delta": 10})
    first = CommandRelay(triggers_db, contacts_channel, internal_token())
    second = CommandRelay(triggers_db, contacts_channel, internal_token())

    await relay_until_empty(first, triggers_db, workspace)
    after_once = await contact(contacts_channel, workspace, person.id)
    assert list(after_once.tags) == ["vip"]
    assert after_once.score == 10

    # The same rows again (a relay that died after the call, before its delete, leaves its
    # row to the next round), sent by two relays at once: contacts must not count twice.
    for _ in range(2):
        await write_command(
            triggers_db, workspace, person.id, "tags", {"add": ["vip"]}, command_id=tags_id
        )
        await write_command(
            triggers_db, workspace, person.id, "score", {"delta": 10}, command_id=score_id
        )
        await relay_until_empty(first, triggers_db, workspace)
        await write_command(
            triggers_db, workspace, person.id, "score", {"delta": 10}, command_id=score_id
        )
        await relay_until_empty(second, triggers_db, workspace)

    after_replays = await contact(contacts_channel, workspace, person.id)
    assert list(after_replays.tags) == ["vip"]
    assert after_replays.score == 10
    assert after_replays.version == after_once.version  # nothing changed at all


async def test_a_contacts_tag_commands_reach_contacts_in_the_order_they_were_written(
    triggers_db: asyncpg.Pool, contacts_channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    """Seed 002: the first order adds "first_purchase", the second removes it and adds
    "repeat_customer"; sent the other way round the contact would keep both."""
    person = await new_contact(contacts_channel, workspace)
    t0 = datetime.now(UTC)
    # Ids chosen so that id order is the reverse of written order.
    await write_command(
        triggers_db,
        workspace,
        person.id,
        "tags",
        {"remove": ["first_purchase"], "add": ["repeat_customer"]},
        command_id=f"a-{uuid.uuid4()}",
        created_at=t0 + timedelta(milliseconds=1),
    )
    await write_command(
        triggers_db,
        workspace,
        person.id,
        "tags",
        {"add": ["first_purchase"]},
        command_id=f"b-{uuid.uuid4()}",
        created_at=t0,
    )
    await relay_until_empty(
        CommandRelay(triggers_db, contacts_channel, internal_token()), triggers_db, workspace
    )
    assert list((await contact(contacts_channel, workspace, person.id)).tags) == ["repeat_customer"]


async def test_a_command_for_a_contact_that_does_not_exist_is_dropped(
    triggers_db: asyncpg.Pool, contacts_channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    gone = str(uuid.uuid4())
    await write_command(triggers_db, workspace, gone, "score", {"delta": 5})
    await write_command(triggers_db, workspace, gone, "tags", {"add": ["x"]})
    await CommandRelay(triggers_db, contacts_channel, internal_token()).relay_once()
    assert await pending(triggers_db, workspace) == []


async def test_a_command_contacts_cannot_take_now_is_retried_later_and_holds_back_the_next(
    triggers_db: asyncpg.Pool, contacts_channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    person = await new_contact(contacts_channel, workspace)
    t0 = datetime.now(UTC)
    first = await write_command(
        triggers_db, workspace, person.id, "tags", {"add": ["a"]}, created_at=t0
    )
    await write_command(
        triggers_db,
        workspace,
        person.id,
        "tags",
        {"remove": ["a"]},
        created_at=t0 + timedelta(milliseconds=1),
    )
    # Nothing listens on this port: contacts is down.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{free_port()}") as down:
        before = datetime.now(UTC)
        await CommandRelay(triggers_db, down, internal_token()).relay_once()
    rows = {r["id"]: r for r in await pending(triggers_db, workspace)}
    assert len(rows) == 2
    assert rows[first]["attempts"] == 1
    assert rows[first]["last_error"].startswith("UNAVAILABLE")
    assert rows[first]["next_try_at"] >= before + timedelta(seconds=1) - timedelta(milliseconds=50)
    # Contacts answers again, but the first is not due yet: the second waits behind it.
    relay = CommandRelay(triggers_db, contacts_channel, internal_token())
    await relay.relay_once()
    assert len(await pending(triggers_db, workspace)) == 2
    assert (await contact(contacts_channel, workspace, person.id)).version == person.version
    # Once due, the first goes out, and then the second.
    await triggers_db.execute("UPDATE commands SET next_try_at = now() WHERE id = $1", first)
    await relay_until_empty(relay, triggers_db, workspace)
    assert list((await contact(contacts_channel, workspace, person.id)).tags) == []
    assert (await contact(contacts_channel, workspace, person.id)).version > person.version + 1


async def test_the_relay_waits_out_a_database_that_does_not_answer(
    contacts_channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    """A PostgreSQL outage is retried with backoff, not the end of the relay (which would
    stop the whole triggers service)."""
    # Nothing listens there; min_size 0 so that the pool connects only when asked.
    nowhere = await asyncpg.create_pool(
        f"postgresql://nudge@127.0.0.1:{free_port()}/nudge", min_size=0
    )
    assert nowhere is not None
    relay = CommandRelay(nowhere, contacts_channel, internal_token())
    caplog.set_level(logging.WARNING, logger="services.triggers.commands")
    task = asyncio.create_task(relay.run())
    try:

        def retried() -> bool:
            assert not task.done(), task
            return sum("command round failed" in r.getMessage() for r in caplog.records) >= 2

        await eventually(retried, timeout=30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await nowhere.close()


async def engine_tags(
    pool: asyncpg.Pool,
    ws: Workspace,
    contact_id: str,
    *,
    add: tuple[str, ...] = (),
    remove: tuple[str, ...] = (),
) -> str:
    """A Tag step as the runtime takes it: its command and its write-through to the facts, in
    one transaction."""
    command_id = unique("tag-step")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO commands (id, workspace_id, contact_id, kind, payload, created_at,"
            " next_try_at) VALUES ($1, $2::uuid, $3::uuid, 'tags', $4::jsonb, clock_timestamp(),"
            " clock_timestamp())",
            command_id,
            ws.id,
            contact_id,
            json.dumps({"add": list(add), "remove": list(remove)}),
        )
        await facts.write_through_tags(conn, [(ws.id, contact_id, add, remove)])
    return command_id


async def contacts_said(pool: asyncpg.Pool, ws: Workspace, person: contacts_pb2.Contact) -> None:
    """Contacts' TagsChanged of ``person``'s state reaches the engine."""
    event = contacts_events.TagsChanged(
        contact_id=person.id, tags=list(person.tags), version=person.version
    )
    async with pool.acquire() as conn, conn.transaction():
        await facts.apply_contact_event(conn, new_envelope(ws.id, event))


async def facts_tags(pool: asyncpg.Pool, ws: Workspace, contact_id: str) -> list[str]:
    return list(
        await pool.fetchval(
            "SELECT tags FROM contact_facts WHERE workspace_id = $1::uuid"
            " AND contact_id = $2::uuid",
            ws.id,
            contact_id,
        )
    )


async def overlays(pool: asyncpg.Pool, ws: Workspace, contact_id: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM commands WHERE workspace_id = $1::uuid AND contact_id = $2::uuid",
            ws.id,
            contact_id,
        )
    )


async def test_contacts_event_of_an_earlier_tag_does_not_undo_the_engines_later_one(
    triggers_db: asyncpg.Pool, contacts_channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    """Seed 002 with contacts' events late: order 1 tags ``first_purchase``, order 2 is
    handled before the engine hears of that tag, and swaps it for ``repeat_customer``. The
    TagsChanged of order 1's tag, arriving then, must not bring ``first_purchase`` back (it
    did: order 3 was then taken for a second purchase)."""
    person = await new_contact(contacts_channel, workspace)
    await contacts_said(triggers_db, workspace, person)
    relay = CommandRelay(triggers_db, contacts_channel, internal_token())

    await engine_tags(triggers_db, workspace, person.id, add=("first_purchase",))
    await relay_until_empty(relay, triggers_db, workspace)
    after_order_1 = await contact(contacts_channel, workspace, person.id)
    assert list(after_order_1.tags) == ["first_purchase"]

    await engine_tags(
        triggers_db,
        workspace,
        person.id,
        add=("repeat_customer",),
        remove=("first_purchase",),
    )
    assert await facts_tags(triggers_db, workspace, person.id) == ["repeat_customer"]
    await contacts_said(triggers_db, workspace, after_order_1)
    assert await facts_tags(triggers_db, workspace, person.id) == ["repeat_customer"]

    # Order 2's own change, carried out (the settled order-1 row does not hold it back), and
    # its event: contacts and the engine agree, and no overlay is left.
    await relay_until_empty(relay, triggers_db, workspace)
    after_order_2 = await contact(contacts_channel, workspace, person.id)
    assert list(after_order_2.tags) == ["repeat_customer"]
    await contacts_said(triggers_db, workspace, after_order_2)
    assert await facts_tags(triggers_db, workspace, person.id) == ["repeat_customer"]
    assert await overlays(triggers_db, workspace, person.id) == 0


async def test_a_tag_change_settled_after_its_event_leaves_contacts_later_state(
    triggers_db: asyncpg.Pool, contacts_channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    """The events of a command's change and of a manager's later one are applied before the
    relay records its answer: until then the engine keeps its own change on top (it cannot
    know contacts has it); once recorded, the facts are contacts' latest state."""
    person = await new_contact(contacts_channel, workspace)
    await contacts_said(triggers_db, workspace, person)
    command_id = await engine_tags(triggers_db, workspace, person.id, add=("vip",))
    stub = contacts_pb2_grpc.ContactServiceStub(contacts_channel)
    # The relay's call (as it makes it), then a manager taking the tag off again.
    carried = await stub.ModifyTags(
        contacts_pb2.ModifyTagsRequest(
            contact=contacts_pb2.ContactRef(contact_id=person.id), add=["vip"]
        ),
        metadata=workspace.metadata,
    )
    removed = await stub.ModifyTags(
        contacts_pb2.ModifyTagsRequest(
            contact=contacts_pb2.ContactRef(contact_id=person.id), remove=["vip"]
        ),
        metadata=workspace.metadata,
    )
    await contacts_said(triggers_db, workspace, carried.contact)
    await contacts_said(triggers_db, workspace, removed.contact)
    assert await facts_tags(triggers_db, workspace, person.id) == ["vip"]

    async with triggers_db.acquire() as conn, conn.transaction():
        await facts.settle_tags(conn, command_id, workspace.id, person.id, carried.contact.version)
    assert await facts_tags(triggers_db, workspace, person.id) == []
    assert await overlays(triggers_db, workspace, person.id) == 0


async def test_tag_changes_written_through_together_fold_as_contacts_applies_them(
    triggers_db: asyncpg.Pool, workspace: Workspace
) -> None:
    """One round's Tag steps of a contact are folded into one write; the result must be the
    overlays' (and contacts') reading of the same changes in order."""
    contact_id = str(uuid.uuid4())
    changes: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
        (("a", "b"), ()),
        (("c",), ("a",)),
        (("b",), ("b",)),  # in both: added, as contacts does
        ((), ("c",)),
        (("a",), ()),
    ]
    async with triggers_db.acquire() as conn, conn.transaction():
        await facts.write_through_tags(
            conn, [(workspace.id, contact_id, add, remove) for add, remove in changes]
        )
    assert await facts_tags(triggers_db, workspace, contact_id) == facts.fold_tags([], changes)
    assert facts.fold_tags([], changes) == ["a", "b"]


async def test_a_tag_command_relayed_again_does_not_undo_a_managers_later_change(
    triggers_db: asyncpg.Pool, contacts_channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    """A relay killed between contacts' answer and its own write leaves the row to be sent
    again; meanwhile a manager took the tag off. The repeat must not put it back."""
    person = await new_contact(contacts_channel, workspace)
    await contacts_said(triggers_db, workspace, person)
    command_id = await engine_tags(triggers_db, workspace, person.id, add=("vip",))
    relay = CommandRelay(triggers_db, contacts_channel, internal_token())
    await relay_until_empty(relay, triggers_db, workspace)
    tagged = await contact(contacts_channel, workspace, person.id)
    await contacts_pb2_grpc.ContactServiceStub(contacts_channel).ModifyTags(
        contacts_pb2.ModifyTagsRequest(
            contact=contacts_pb2.ContactRef(contact_id=person.id), remove=["vip"]
        ),
        metadata=workspace.metadata,
    )
    # The row as the killed relay left it: leased, its answer never recorded.
    await triggers_db.execute(
        "UPDATE commands SET settled_version = NULL, next_try_at = now() WHERE id = $1",
        command_id,
    )
    await relay_until_empty(relay, triggers_db, workspace)
    now = await contact(contacts_channel, workspace, person.id)
    assert (list(now.tags), now.version) == ([], tagged.version + 1)
    # Settled with the version of its own change, so that change's event covers it.
    assert (
        await triggers_db.fetchval("SELECT settled_version FROM commands WHERE id = $1", command_id)
        == tagged.version
    )


async def test_a_tag_change_contacts_refuses_is_taken_out_of_the_engines_tags(
    triggers_db: asyncpg.Pool, contacts_channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    """The step's tag was written through to the engine's facts; contacts refuses it for
    good (not a tag it accepts): the engine must not go on reading a tag the contact never
    got, and keeps the other change of the same contact."""
    person = await new_contact(contacts_channel, workspace)
    await contacts_said(triggers_db, workspace, person)
    await engine_tags(triggers_db, workspace, person.id, add=("Not A Tag",))
    await engine_tags(triggers_db, workspace, person.id, add=("vip",))
    assert await facts_tags(triggers_db, workspace, person.id) == ["Not A Tag", "vip"]
    await relay_until_empty(
        CommandRelay(triggers_db, contacts_channel, internal_token()), triggers_db, workspace
    )
    assert list((await contact(contacts_channel, workspace, person.id)).tags) == ["vip"]
    assert await facts_tags(triggers_db, workspace, person.id) == ["vip"]
    # The refused row is gone; the carried-out one stays an overlay until its event.
    assert await overlays(triggers_db, workspace, person.id) == 1
