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

from services.common.config import InternalAuthSettings
from services.common.db import migrate
from services.triggers import handlers
from services.triggers.bootstrap import MIGRATIONS
from services.triggers.commands import CommandRelay
from tests.integration.conftest import RunningService, Workspace
from tests.support import eventually, free_port, unique


@pytest.fixture
async def triggers_db(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    await migrate(infra["DATABASE_URL"], handlers.SCHEMA, MIGRATIONS)
    pool = await asyncpg.create_pool(
        infra["DATABASE_URL"], server_settings={"search_path": handlers.SCHEMA}
    )
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


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
    return await pool.fetch(
        "SELECT * FROM commands WHERE workspace_id = $1::uuid ORDER BY created_at", ws.id
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
