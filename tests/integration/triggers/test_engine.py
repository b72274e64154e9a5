"""The engine on real Kafka and PostgreSQL: events start runs under the entry rules, waits are
timed out by moving the shared clock, exit rules end runs, paused workflows hold, and every
mail reaches delivery.requests.v1 exactly once."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2
from nudge.shop.v1 import shop_pb2

from tests.integration.conftest import RunningService
from tests.integration.triggers.support import (
    EventProducer,
    MovableClock,
    bootstrap_servers,
    cart,
    database_url,
    delivery_requests,
    envelope,
    new_ids,
    order,
    publish,
    run_rows,
    run_steps,
    set_status,
    timer_of,
)
from tests.support import eventually, fetchval, outbox_drained

# A marketing window open all day (but a microsecond), so a test never waits for the morning.
ALL_DAY = {"start": "12:00:00", "end": "11:59:59.999999"}


def abandoned_cart(**entry: Any) -> dict[str, Any]:
    return {
        "name": "Abandoned cart",
        "trigger": {"event": "cart_updated", "filter": {"min_items": 1}},
        "entry": {"concurrency": "per_key", "key": "cart_id", "on_retrigger": "restart", **entry},
        "exit_on": [{"event": "order_placed", "same_key": True}],
        "send_window": ALL_DAY,
        "steps": [
            {"id": "wait", "type": "wait", "duration": "PT3H"},
            {
                "id": "reminder",
                "type": "send",
                "message": {"subject": "Your cart", "body_text": "{{ vars.cart_items }}"},
            },
        ],
    }


async def runs_where(workspace_id: str, **expected: Any) -> list[Any]:
    rows = await run_rows(database_url(), workspace_id)
    return [r for r in rows if all(r[k] == v for k, v in expected.items())]


async def requests_settled(
    workspace_id: str, contact_id: str
) -> list[delivery_pb2.DeliveryRequested]:
    """What reached delivery.requests.v1 for the workspace, once the engine's outbox holds
    nothing more for the contact."""
    await eventually(lambda: outbox_drained(database_url(), "triggers", contact_id), timeout=30)
    return await delivery_requests(bootstrap_servers(), workspace_id)


async def test_a_cart_left_alone_is_reminded_once_when_the_wait_is_over(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    ws, contact = new_ids()
    workflow_id = await publish(database_url(), ws, abandoned_cart())
    cart_id = f"cart-{uuid.uuid4().hex[:8]}"
    started = engine_clock.now()
    await producer.shop(ws, contact, cart(cart_id, ("p1", "Blue mug", 2, 1200)))

    [run] = await eventually(lambda: runs_where(ws, state="waiting"), timeout=60)
    assert run["position"] == "reminder"
    assert await run_steps(database_url(), ws, run["id"]) == [("wait", "done")]
    due = await timer_of(database_url(), run["id"])
    assert due is not None
    assert timedelta(hours=3) <= due - started < timedelta(hours=3, minutes=1)

    engine_clock.advance(hours=3, seconds=1)
    await eventually(lambda: runs_where(ws, state="completed"), timeout=30)
    requests = await requests_settled(ws, contact)
    assert len(requests) == 1, requests
    [request] = requests
    assert request.contact_id == contact
    assert request.workflow_id == workflow_id
    assert request.kind == delivery_pb2.MESSAGE_KIND_AUTOMATION
    assert request.purpose == contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
    assert request.content.subject == "Your cart"
    assert request.vars["cart_items"] == "2 x Blue mug (12.00 EUR)"
    assert request.vars["cart_total"] == "24.00 EUR"
    assert request.vars["cart_id"] == cart_id
    assert await run_steps(database_url(), ws, run["id"]) == [
        ("wait", "done"),
        ("reminder", "done"),
    ]
    assert await timer_of(database_url(), run["id"]) is None
    sends = await fetchval(
        database_url(),
        "SELECT count(*) FROM triggers.contact_sends WHERE workspace_id = $1::uuid",
        ws,
    )
    assert sends == 1


async def test_a_redelivered_trigger_starts_nothing_twice(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    ws, contact = new_ids()
    definition = abandoned_cart()
    definition["steps"] = [
        {
            "id": "receipt",
            "type": "send",
            "message": {"kind": "transactional", "subject": "Saved", "body_text": "x"},
        }
    ]
    await publish(database_url(), ws, definition)
    event = cart("c-1", ("p1", "Mug", 1, 500))
    event.contact_id = contact
    copy = envelope(ws, event)
    await producer.send(contact, copy)
    await producer.send(contact, copy)  # the same envelope again (a redelivery)
    marker = await producer.shop(ws, contact, order("o-1"))  # after both, on the same key
    await eventually(
        lambda: fetchval(
            database_url(),
            "SELECT 1 FROM triggers.processed_events WHERE consumer = 'triggers' AND event_id = $1",
            marker,
        ),
        timeout=60,
    )
    assert len(await run_rows(database_url(), ws)) == 1
    requests = await requests_settled(ws, contact)
    assert [r.kind for r in requests] == [delivery_pb2.MESSAGE_KIND_TRANSACTIONAL]
    assert requests[0].purpose == contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL


async def test_an_order_of_the_cart_ends_its_run_and_nothing_is_sent(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    ws, contact = new_ids()
    await publish(database_url(), ws, abandoned_cart())
    await producer.shop(ws, contact, cart("cart-a", ("p1", "Mug", 1, 500)))
    await producer.shop(ws, contact, cart("cart-b", ("p2", "Cup", 1, 700)))

    async def both_waiting() -> bool:
        return len(await runs_where(ws, state="waiting")) == 2

    await eventually(both_waiting, timeout=60)
    # An order of another cart ends nothing (same_key); the order of cart-a ends its run.
    await producer.shop(ws, contact, order("o-1", cart_id="cart-other"))
    await producer.shop(ws, contact, order("o-2", cart_id="cart-a"))
    [ended] = await eventually(lambda: runs_where(ws, state="exited"), timeout=60)
    assert ended["entry_key"] == "cart-a"
    assert ended["end_reason"] == "exit_rule:order_placed"
    assert await timer_of(database_url(), ended["id"]) is None
    [waiting] = await runs_where(ws, state="waiting")
    assert waiting["entry_key"] == "cart-b"

    engine_clock.advance(hours=3, seconds=1)
    await eventually(lambda: runs_where(ws, state="completed"), timeout=30)
    requests = await requests_settled(ws, contact)
    assert [r.vars["cart_id"] for r in requests] == ["cart-b"]


async def test_entry_rules_restart_per_cart_and_once_per_contact(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    ws, contact = new_ids()
    await publish(database_url(), ws, abandoned_cart())
    first = await producer.shop(ws, contact, cart("cart-a", ("p1", "Mug", 1, 500)))
    await eventually(lambda: runs_where(ws, trigger_event_id=first, state="waiting"), timeout=60)
    # The same cart changes: its run starts again (3 hours from the last change).
    second = await producer.shop(ws, contact, cart("cart-a", ("p1", "Mug", 2, 500)))
    await eventually(lambda: runs_where(ws, trigger_event_id=second, state="waiting"), timeout=60)
    [old] = await runs_where(ws, trigger_event_id=first)
    assert (old["state"], old["end_reason"]) == ("cancelled", "restarted")
    assert await timer_of(database_url(), old["id"]) is None

    # reentry "once": a contact's second welcome starts nothing.
    once = {
        "name": "Welcome",
        "trigger": {"event": "signed_up"},
        "entry": {"reentry": "once"},
        "steps": [
            {
                "id": "hello",
                "type": "send",
                "message": {"kind": "transactional", "subject": "Hi", "body_text": "x"},
            }
        ],
    }
    welcome_ws, newcomer = new_ids()
    welcome = await publish(database_url(), welcome_ws, once)
    signup = shop_signup()
    await producer.shop(welcome_ws, newcomer, signup)
    await eventually(lambda: runs_where(welcome_ws, state="completed"), timeout=60)
    again = await producer.shop(welcome_ws, newcomer, shop_signup())
    await eventually(lambda: consumed(again), timeout=60)
    runs = await run_rows(database_url(), welcome_ws)
    assert [str(r["workflow_id"]) for r in runs] == [welcome]
    requests = await requests_settled(welcome_ws, newcomer)
    assert Counter(r.content.subject for r in requests) == {"Hi": 1}


def shop_signup() -> shop_pb2.ShopEvent:
    return shop_pb2.ShopEvent(signed_up=shop_pb2.SignedUp())


async def consumed(event_id: str) -> bool:
    return bool(
        await fetchval(
            database_url(),
            "SELECT 1 FROM triggers.processed_events WHERE consumer = 'triggers' AND event_id = $1",
            event_id,
        )
    )


async def test_a_paused_workflow_holds_its_runs_until_resumed(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    ws, contact = new_ids()
    workflow_id = await publish(database_url(), ws, abandoned_cart())
    await producer.shop(ws, contact, cart("cart-p", ("p1", "Mug", 1, 500)))
    [run] = await eventually(lambda: runs_where(ws, state="waiting"), timeout=60)
    due = await timer_of(database_url(), run["id"])
    assert due is not None
    await set_status(database_url(), ws, workflow_id, "paused")

    engine_clock.advance(hours=3, seconds=1)

    async def held() -> bool:
        later = await timer_of(database_url(), run["id"])
        return later is not None and later > due

    await eventually(held, timeout=30)
    [still] = await runs_where(ws, id=run["id"])
    assert (still["state"], still["position"]) == ("waiting", "reminder")
    assert await run_steps(database_url(), ws, run["id"]) == [("wait", "done")]

    await set_status(database_url(), ws, workflow_id, "active")
    engine_clock.advance(minutes=1)
    await eventually(lambda: runs_where(ws, state="completed"), timeout=30)
    assert len(await requests_settled(ws, contact)) == 1


async def test_a_test_run_waits_for_nothing_and_mails_only_the_manager(
    triggers_engine: RunningService, engine_clock: MovableClock
) -> None:
    """What the API's test run relies on: runs.start_run with a test recipient."""
    from services.common import clock
    from services.common.db import create_pool
    from services.triggers.runtime.caps import FrequencyCaps
    from services.triggers.runtime.runs import Engine, start_run

    ws, contact = new_ids()
    definition = abandoned_cart()
    definition["steps"].insert(1, {"id": "tag", "type": "tag", "add": ["reminded"]})
    workflow_id = await publish(database_url(), ws, definition)
    pool = await create_pool(database_url(), "triggers", max_size=1)
    try:
        engine = Engine(FrequencyCaps(None, ""))
        async with pool.acquire() as conn, conn.transaction():
            compiled = await engine.version(conn, ws, workflow_id, 1)
            run_id = await start_run(
                conn,
                engine,
                compiled,
                workspace_id=ws,
                contact_id=contact,
                trigger_event_id="test/1",
                occurred_at=clock.now(),
                vars={"cart_items": "1 x Mug"},
                key="",
                now=clock.now(),
                test_recipient="manager@example.com",
            )
    finally:
        await pool.close()
    [run] = await run_rows(database_url(), ws)
    assert (str(run["id"]), run["state"]) == (run_id, "completed")
    commands = await fetchval(
        database_url(),
        "SELECT count(*) FROM triggers.commands WHERE workspace_id = $1::uuid",
        ws,
    )
    assert commands == 0
    [request] = await requests_settled(ws, contact)
    assert request.kind == delivery_pb2.MESSAGE_KIND_TEST
    assert request.test_recipient == "manager@example.com"


async def test_an_exit_event_that_arrived_before_its_trigger_still_ends_the_run(
    triggers_engine: RunningService, engine_clock: MovableClock, producer: EventProducer
) -> None:
    """Two topics, no order between them: the contact left the segment a second after the
    cart change, but the engine saw the segment change first."""
    from nudge.segmentation.v1 import events_pb2 as segmentation_events

    ws, contact = new_ids()
    definition = abandoned_cart()
    definition["exit_on"] = [{"event": "segment_exited"}]
    await publish(database_url(), ws, definition)
    changed_at = engine_clock.now()
    left = segmentation_events.SegmentMembershipChanged(
        segment_id="shoppers",
        contact_id=contact,
        change=segmentation_events.MEMBERSHIP_CHANGE_EXITED,
    )
    left.effective_at.FromDatetime(changed_at + timedelta(seconds=1))
    exit_id = await producer.send(contact, envelope(ws, left))
    await eventually(lambda: consumed(exit_id), timeout=60)
    await producer.shop(ws, contact, cart("cart-x", ("p1", "Mug", 1, 500)), occurred_at=changed_at)
    [run] = await eventually(lambda: runs_where(ws, state="exited"), timeout=60)
    assert run["end_reason"] == "exit_rule:segment_exited"
    assert await timer_of(database_url(), run["id"]) is None
    assert await run_steps(database_url(), ws, run["id"]) == []
