"""What the engine knows of a contact, on real Kafka and PostgreSQL: contacts' events applied
only when newer, its own tag changes seen by the contact's next event (seed 002), segment
entries starting runs, and the frequency cap skipping a second marketing mail."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from nudge.contacts.v1 import contacts_pb2
from nudge.contacts.v1 import events_pb2 as contacts_events
from nudge.segmentation.v1 import events_pb2 as segmentation_events
from nudge.shop.v1 import shop_pb2

from tests.integration.conftest import RunningService
from tests.integration.triggers.support import (
    EventProducer,
    MovableClock,
    bootstrap_servers,
    database_url,
    delivery_requests,
    envelope,
    new_ids,
    order,
    publish,
    run_rows,
    run_steps,
)
from tests.support import eventually, fetchval, outbox_drained

ALL_DAY = {"start": "12:00:00", "end": "11:59:59.999999"}


def transactional(subject: str) -> dict[str, Any]:
    return {"kind": "transactional", "subject": subject, "body_text": "x"}


async def consumed(event_id: str) -> bool:
    return bool(
        await fetchval(
            database_url(),
            "SELECT 1 FROM triggers.processed_events WHERE consumer = 'triggers' AND event_id = $1",
            event_id,
        )
    )


async def facts_of(workspace_id: str, contact_id: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(database_url())
    try:
        return await conn.fetchrow(
            "SELECT * FROM triggers.contact_facts WHERE workspace_id = $1 AND contact_id = $2",
            uuid.UUID(workspace_id),
            uuid.UUID(contact_id),
        )
    finally:
        await conn.close()


async def test_contact_events_are_applied_only_when_newer(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    ws, contact = new_ids()

    def updated(version: int, tags: list[str], tz: str) -> Any:
        person = contacts_pb2.Contact(
            id=contact, workspace_id=ws, version=version, tags=tags, time_zone=tz
        )
        person.attributes["city"] = "Rome"
        return envelope(ws, contacts_events.ContactUpdated(contact=person))

    await producer.send(contact, updated(2, ["vip"], "Europe/Rome"))
    stale = await producer.send(contact, updated(1, [], "UTC"))  # older, arriving later
    await eventually(lambda: consumed(stale), timeout=60)
    row = await facts_of(ws, contact)
    assert (row["version"], row["tags"], row["time_zone"]) == (2, ["vip"], "Europe/Rome")
    assert '"city": "Rome"' in row["attributes"]

    tags = await producer.send(
        contact,
        envelope(
            ws,
            contacts_events.TagsChanged(
                contact_id=contact, added=["gold"], tags=["gold", "vip"], version=3
            ),
        ),
    )
    await eventually(lambda: consumed(tags), timeout=60)
    row = await facts_of(ws, contact)
    assert (row["version"], row["tags"]) == (3, ["gold", "vip"])


async def test_a_tag_set_by_a_run_is_seen_by_the_contacts_next_order(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    """Seed 002: the first order tags the buyer; the second order's run already sees it."""
    ws, contact = new_ids()
    await publish(
        database_url(),
        ws,
        {
            "name": "Thanks for the order",
            "trigger": {"event": "order_placed"},
            "entry": {"concurrency": "unlimited"},
            "steps": [
                {
                    "id": "returning",
                    "type": "branch",
                    "condition": {"type": "has_tag", "tag": "buyer"},
                    "then": [{"id": "again", "type": "send", "message": transactional("Again")}],
                    "else": [
                        {"id": "tag", "type": "tag", "add": ["buyer"]},
                        {"id": "first", "type": "send", "message": transactional("First")},
                    ],
                }
            ],
        },
    )
    await producer.shop(ws, contact, order("o-1", total_minor=1000))
    await producer.shop(ws, contact, order("o-2", total_minor=2500))

    async def two_completed() -> list[Any]:
        rows = await run_rows(database_url(), ws)
        return rows if len(rows) == 2 and all(r["state"] == "completed" for r in rows) else []

    first, second = await eventually(two_completed, timeout=60)
    assert await run_steps(database_url(), ws, first["id"]) == [
        ("first", "done"),
        ("returning", "no"),
        ("tag", "done"),
    ]
    assert ("returning", "yes") in await run_steps(database_url(), ws, second["id"])
    # The tag command itself is the command relay's to carry (it may be gone already: this
    # contact exists only here, so contacts answers NOT_FOUND and the relay drops it;
    # test_commands.py checks the commands); the written-through facts are what the next
    # order read.
    row = await facts_of(ws, contact)
    assert row["tags"] == ["buyer"]
    assert row["total_spent_minor"] == 3500
    await eventually(lambda: outbox_drained(database_url(), "triggers", contact), timeout=30)
    subjects = sorted(r.content.subject for r in await delivery_requests(bootstrap_servers(), ws))
    assert subjects == ["Again", "First"]


async def test_entering_a_segment_starts_its_workflow_with_the_segment_in_the_facts(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    ws, contact = new_ids()
    await publish(
        database_url(),
        ws,
        {
            "name": "VIP welcome",
            "trigger": {"event": "segment_entered", "segment_id": "vip"},
            "steps": [{"id": "hello", "type": "send", "message": transactional("VIP")}],
        },
    )

    def change(segment: str, kind: int) -> Any:
        return envelope(
            ws,
            segmentation_events.SegmentMembershipChanged(
                segment_id=segment,
                contact_id=contact,
                change=kind,  # type: ignore[arg-type]
            ),
        )

    entered = segmentation_events.MEMBERSHIP_CHANGE_ENTERED
    await producer.send(contact, change("other", entered))
    last = await producer.send(contact, change("vip", entered))
    await eventually(lambda: consumed(last), timeout=60)
    [run] = await run_rows(database_url(), ws)
    assert run["state"] == "completed"
    assert '"segment_id": "vip"' in run["vars"]
    row = await facts_of(ws, contact)
    assert sorted(row["segments"]) == ["other", "vip"]

    left = await producer.send(
        contact, change("other", segmentation_events.MEMBERSHIP_CHANGE_EXITED)
    )
    await eventually(lambda: consumed(left), timeout=60)
    assert (await facts_of(ws, contact))["segments"] == ["vip"]


def on_orders(*steps: dict[str, Any]) -> dict[str, Any]:
    """A workflow each order starts a run of, sending all day."""
    return {
        "name": "Order follow-up",
        "trigger": {"event": "order_placed"},
        "entry": {"concurrency": "unlimited"},
        "send_window": ALL_DAY,
        "steps": list(steps),
    }


def mail(step_id: str, **message: Any) -> dict[str, Any]:
    return {
        "id": step_id,
        "type": "send",
        "message": {"subject": step_id, "body_text": "x", **message},
    }


def runs_in(ws: str, *states: str) -> Callable[[], Awaitable[list[Any]]]:
    """A probe: the workspace's runs once their states are ``states`` (in any order)."""

    async def probe() -> list[Any]:
        rows = await run_rows(database_url(), ws)
        return rows if sorted(r["state"] for r in rows) == sorted(states) else []

    return probe


async def mails_requested(ws: str, contact: str) -> int:
    """The delivery requests of the workspace, once the engine's outbox has relayed them."""
    await eventually(lambda: outbox_drained(database_url(), "triggers", contact), timeout=30)
    return len(await delivery_requests(bootstrap_servers(), ws))


async def test_a_second_marketing_mail_within_the_cap_is_skipped(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    """The default cap (campaigns does not answer here): one marketing mail per 30 days."""
    ws, contact = new_ids()
    await publish(database_url(), ws, on_orders(mail("offer")))
    await producer.shop(ws, contact, order("o-1"))
    await producer.shop(ws, contact, order("o-2"))

    first, second = await eventually(runs_in(ws, "completed", "completed"), timeout=60)
    assert await run_steps(database_url(), ws, first["id"]) == [("offer", "done")]
    assert await run_steps(database_url(), ws, second["id"]) == [("offer", "skipped:frequency_cap")]
    assert await mails_requested(ws, contact) == 1


async def test_two_runs_of_one_contact_woken_in_one_round_respect_the_cap_together(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    """Two orders, each run waiting an hour: the timer loop wakes both in one round. They
    are advanced one after the other, as events are, so the second sees the first's mail:
    advanced together, both read "no mail yet" and both went out past the cap (found by hand:
    four thank-yous at 08:00 under a cap of one)."""
    ws, contact = new_ids()
    wait = {"id": "wait", "type": "wait", "duration": "PT1H"}
    await publish(database_url(), ws, on_orders(wait, mail("offer")))
    await producer.shop(ws, contact, order("o-1"))
    await producer.shop(ws, contact, order("o-2"))

    await eventually(runs_in(ws, "waiting", "waiting"), timeout=60)
    engine_clock.advance(hours=2)  # both timers fall due at once
    runs = await eventually(runs_in(ws, "completed", "completed"), timeout=60)
    outcomes = sorted([await run_steps(database_url(), ws, r["id"]) for r in runs])
    assert outcomes == [
        [("wait", "done"), ("offer", "done")],
        [("wait", "done"), ("offer", "skipped:frequency_cap")],
    ]
    assert await mails_requested(ws, contact) == 1


async def test_a_runs_own_mail_does_not_cap_its_next_step_nor_an_exempt_mail_anyones(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    """Under the default cap (one marketing mail per 30 days): the abandoned cart's reminder
    and its offer the next day are one conversation, both go; a welcome letter exempt from
    the cap does not use it up. Counted as before, the offer was always skipped, and after a
    welcome the reminder too."""
    ws, contact = new_ids()
    welcome = {
        "name": "Welcome",
        "trigger": {"event": "signed_up"},
        "send_window": ALL_DAY,
        "steps": [mail("welcome", respect_frequency_cap=False)],
    }
    await publish(database_url(), ws, welcome)
    wait = {"id": "wait", "type": "wait", "duration": "P1D"}
    await publish(database_url(), ws, on_orders(mail("reminder"), wait, mail("offer")))
    await producer.shop(ws, contact, shop_pb2.ShopEvent(signed_up=shop_pb2.SignedUp()))
    await producer.shop(ws, contact, order("o-1"))

    await eventually(runs_in(ws, "completed", "waiting"), timeout=60)
    engine_clock.advance(hours=25)
    await eventually(runs_in(ws, "completed", "completed"), timeout=60)
    # Another order, another run: the first run's two mails count against it.
    await producer.shop(ws, contact, order("o-2"))
    runs = await eventually(runs_in(ws, "completed", "completed", "waiting"), timeout=60)
    steps = sorted([await run_steps(database_url(), ws, r["id"]) for r in runs])
    assert steps[0] == [("reminder", "done"), ("wait", "done"), ("offer", "done")]
    assert steps[1][0] == ("reminder", "skipped:frequency_cap")
    assert steps[2] == [("welcome", "done")]
    assert await mails_requested(ws, contact) == 3


async def test_a_deleted_contacts_runs_end_and_send_nothing(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    ws, contact = new_ids()
    await publish(
        database_url(),
        ws,
        {
            "name": "Follow-up",
            "trigger": {"event": "order_placed"},
            "steps": [
                {"id": "wait", "type": "wait", "duration": "PT1H"},
                {"id": "later", "type": "send", "message": transactional("Later")},
            ],
        },
    )
    await producer.shop(ws, contact, order("o-1"))

    async def waiting() -> list[Any]:
        return [r for r in await run_rows(database_url(), ws) if r["state"] == "waiting"]

    [run] = await eventually(waiting, timeout=60)
    await producer.send(
        contact, envelope(ws, contacts_events.ContactDeleted(contact_id=contact, version=5))
    )

    async def cancelled() -> list[Any]:
        return [r for r in await run_rows(database_url(), ws) if r["state"] == "cancelled"]

    [ended] = await eventually(cancelled, timeout=60)
    assert ended["end_reason"] == "contact_deleted"
    assert not await fetchval(
        database_url(), "SELECT 1 FROM triggers.timers WHERE timer_key = $1", f"run/{run['id']}"
    )


async def test_contact_events_older_than_the_horizon_are_pruned(
    triggers_engine: RunningService,
) -> None:
    from datetime import UTC, datetime, timedelta

    from services.common.db import create_pool
    from services.triggers.runtime.facts import prune_events

    ws, contact = new_ids()
    pool = await create_pool(database_url(), "triggers", max_size=1)
    cut = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        for event_id, at in (("old", cut - timedelta(seconds=1)), ("new", cut)):
            await pool.execute(
                "INSERT INTO contact_events (workspace_id, contact_id, event_id, event,"
                " occurred_at) VALUES ($1, $2, $3, 'page_viewed', $4)",
                uuid.UUID(ws),
                uuid.UUID(contact),
                event_id,
                at,
            )
        assert await prune_events(pool, cut, batch=1) >= 1
        left = await pool.fetch(
            "SELECT event_id FROM contact_events WHERE workspace_id = $1", uuid.UUID(ws)
        )
        assert [r["event_id"] for r in left] == ["new"]
    finally:
        await pool.close()
