"""A round of events (handlers.on_events: events of several contacts, several each, in one
call) decides exactly what the same events decide one at a time: the same runs, steps,
timers, mails and facts. And a round's statements do not grow with its contacts: that is
what makes it fast (bench/RESULTS.md, issue 16).

The workflows cover every kind of start: the abandoned cart (restarted on each cart change,
ended by the order), post-purchase (tags folded per contact), order details (a second run
started by the same order) and the value threshold (a derived start, crossed by the second
order). The clock is frozen at noon (``noon``), so marketing mail goes out at once."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.segmentation.v1 import events_pb2 as segmentation_events

from services.triggers import handlers
from services.triggers.domain.templates import template
from services.triggers.runtime.caps import FrequencyCaps
from services.triggers.runtime.runs import Engine
from tests.integration.triggers.conftest import Logged
from tests.integration.triggers.support import cart, envelope, order, publish

TEMPLATES = ("abandoned_cart", "post_purchase", "order_details", "value_threshold")
MUG = ("p1", "Mug", 1, 1200)


@pytest.fixture
def engine() -> Engine:
    """The engine with the live workflows cached, as between two publications."""
    return Engine(FrequencyCaps(None, ""), live_ttl_s=3600.0)


async def workspace(pool: asyncpg.Pool) -> tuple[str, dict[str, str]]:
    """A workspace with the workflows published; their ids by template."""
    ws = str(uuid.uuid4())
    flows = {}
    for name in TEMPLATES:
        info = template(name)
        assert info is not None
        definition = info.definition.model_dump(mode="json", by_alias=True)
        if name in ("post_purchase", "value_threshold"):
            under_the_cap(definition["steps"])
        flows[name] = await publish(pool, ws, definition)
    return ws, flows


def under_the_cap(steps: list[dict[str, Any]]) -> None:
    """The thank-yous counted by the frequency cap (the templates exempt them), so that a
    round must show the second wave seeing the first wave's mail."""
    for step in steps:
        if step["type"] == "send":
            step["message"]["respect_frequency_cap"] = True
        elif step["type"] == "branch":
            under_the_cap(step["then"])
            under_the_cap(step["else"])


def events(ws: str, contacts: list[str]) -> list[Envelope]:
    """Each contact: two cart changes, an order of the cart, a second order; the contacts'
    events interleaved, as Kafka's partitions hand them over."""
    out = []
    for step in range(4):
        for i, c in enumerate(contacts):
            if step == 0:
                payload = cart(f"cart-{i}", MUG)
            elif step == 1:
                payload = cart(f"cart-{i}", MUG, MUG)
            else:
                payload = order(f"order-{step}-{i}", f"cart-{i}", total_minor=60_000)
            event = envelope(ws, payload)
            event.shop_event.contact_id = c
            out.append(event)
    return out


async def outcome(pool: asyncpg.Pool, ws: str, flows: dict[str, str], contacts: list[str]) -> Any:
    """What the engine decided in the workspace, with contacts named by their place and
    workflows by their template (the ids differ between workspaces)."""
    who = {c: i for i, c in enumerate(contacts)}
    name = {v: k for k, v in flows.items()}
    w = uuid.UUID(ws)
    async with pool.acquire() as conn:
        runs = await conn.fetch(
            "SELECT id, contact_id::text, workflow_id::text, state, end_reason, position,"
            " executed::text, vars::text FROM runs WHERE workspace_id = $1",
            w,
        )
        steps = await conn.fetch(
            "SELECT run_id, step_id, iteration, outcome FROM run_steps WHERE workspace_id = $1",
            w,
        )
        timers = await conn.fetch(
            "SELECT run_id, kind, due_at FROM timers WHERE workspace_id = $1", w
        )
        facts = await conn.fetch(
            "SELECT contact_id::text, tags, total_spent_minor FROM contact_facts"
            " WHERE workspace_id = $1",
            w,
        )
        outbox = await conn.fetch("SELECT value FROM outbox ORDER BY id")
    run_of = {r["id"]: (who[r["contact_id"]], name[r["workflow_id"]]) for r in runs}
    mails = []
    for row in outbox:
        sent = Envelope.FromString(row["value"])
        if sent.workspace_id == ws and sent.WhichOneof("payload") == "delivery_requested":
            request = sent.delivery_requested
            mails.append(
                (who[request.contact_id], name[request.workflow_id], request.content.subject)
            )
    return {
        "runs": sorted(
            (*run_of[r["id"]], r["state"], r["end_reason"], r["position"], r["executed"], r["vars"])
            for r in runs
        ),
        "steps": sorted(
            (*run_of[s["run_id"]], s["step_id"], s["iteration"], s["outcome"]) for s in steps
        ),
        "timers": sorted((*run_of[t["run_id"]], t["kind"], t["due_at"]) for t in timers),
        "facts": sorted((who[f["contact_id"]], f["tags"], f["total_spent_minor"]) for f in facts),
        "mails": sorted(mails),
    }


async def test_a_round_decides_what_the_same_events_decide_one_at_a_time(
    logged_pool: tuple[asyncpg.Pool, Logged], noon: None, engine: Engine
) -> None:
    pool, _ = logged_pool

    one_ws, one_flows = await workspace(pool)
    one_contacts = [str(uuid.uuid4()) for _ in range(5)]
    for event in events(one_ws, one_contacts):
        await handlers.on_event(pool, engine, event)
    alone = await outcome(pool, one_ws, one_flows, one_contacts)

    round_ws, round_flows = await workspace(pool)
    round_contacts = [str(uuid.uuid4()) for _ in range(5)]
    round_events = events(round_ws, round_contacts)
    await handlers.on_events(pool, engine, round_events)
    together = await outcome(pool, round_ws, round_flows, round_contacts)

    assert together == alone
    # What was decided is what the workflows say, not the same mistake twice: per contact,
    # both orders' details (transactional), the first thank-you, and no second marketing
    # mail the same day (the frequency cap: so the second wave saw the first's mail).
    for i in range(5):
        assert [(w, s) for c, w, s in alone["mails"] if c == i] == [
            ("order_details", "Your order {{ vars.order_id }} at {{ workspace.name }}"),
            ("order_details", "Your order {{ vars.order_id }} at {{ workspace.name }}"),
            ("post_purchase", "Thank you for your first order at {{ workspace.name }}"),
        ]
        assert (i, "value_threshold", "best_customer", 0, "skipped:frequency_cap") in alone["steps"]
    assert {(i, tuple(tags), spent) for i, tags, spent in alone["facts"]} == {
        (i, ("repeat_customer",), 120_000) for i in range(5)
    }
    states = {(r[1], r[2], r[3]) for r in alone["runs"]}
    assert ("abandoned_cart", "cancelled", "restarted") in states
    assert ("abandoned_cart", "exited", "exit_rule:order_placed") in states

    # A redelivered round starts and changes nothing.
    assert await handlers.on_events(pool, engine, round_events) == []
    assert await outcome(pool, round_ws, round_flows, round_contacts) == together


async def test_a_rounds_statements_do_not_grow_with_its_contacts(
    logged_pool: tuple[asyncpg.Pool, Logged], noon: None, engine: Engine
) -> None:
    pool, logged = logged_pool
    counts = []
    for contacts in (3, 30):
        ws, _ = await workspace(pool)
        people = [str(uuid.uuid4()) for _ in range(contacts)]
        # Warm the engine's caches of this workspace's workflows, as earlier events would.
        await handlers.on_events(pool, engine, events(ws, [str(uuid.uuid4())]))
        mark = len(logged.queries)
        await handlers.on_events(pool, engine, events(ws, people))
        counts.append(len(logged.since(mark)))
    assert counts[0] == counts[1], counts


async def test_a_round_reads_any_form_of_a_contact_id_and_skips_an_event_without_one(
    logged_pool: tuple[asyncpg.Pool, Logged], noon: None, engine: Engine
) -> None:
    pool, _ = logged_pool
    ws, flows = await workspace(pool)
    contact, other = str(uuid.uuid4()), str(uuid.uuid4())
    [started] = events(ws, [contact])[:1]
    await handlers.on_events(pool, engine, [started])

    placed = envelope(ws, order("order-1", "cart-0"))
    placed.shop_event.contact_id = contact.upper().replace("-", "")  # the same contact
    bad = envelope(ws, cart("cart-9", MUG))
    bad.shop_event.contact_id = "not-a-contact-id"
    [carted] = events(ws, [other])[:1]
    await handlers.on_events(pool, engine, [bad, placed, carted])

    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT contact_id::text, workflow_id::text, state, end_reason FROM runs"
            " WHERE workspace_id = $1",
            uuid.UUID(ws),
        )
    carts = {r["contact_id"]: (r["state"], r["end_reason"]) for r in rows}
    cart_flow = flows["abandoned_cart"]
    assert {
        r["contact_id"]: (r["state"], r["end_reason"])
        for r in rows
        if r["workflow_id"] == cart_flow
    } == {contact: ("exited", "exit_rule:order_placed"), other: ("waiting", "")}, carts
    assert {r["contact_id"] for r in rows} == {contact, other}


async def test_segment_entries_and_exits_in_a_round_move_facts_as_one_at_a_time(
    logged_pool: tuple[asyncpg.Pool, Logged], noon: None, engine: Engine
) -> None:
    """Known contacts (a cart change taught the engine of them) and unknown ones enter and
    leave segments; the round's facts are those of the same events one at a time."""
    pool, _ = logged_pool
    entered = segmentation_events.MEMBERSHIP_CHANGE_ENTERED
    exited = segmentation_events.MEMBERSHIP_CHANGE_EXITED

    def changes(ws: str, contacts: list[str]) -> list[Envelope]:
        out = events(ws, contacts[:2])[:2]  # the first two are known
        for segment, kind in (("s1", entered), ("s2", entered), ("s1", exited), ("s2", entered)):
            for c in contacts:
                out.append(
                    envelope(
                        ws,
                        segmentation_events.SegmentMembershipChanged(
                            segment_id=segment, contact_id=c, change=kind
                        ),
                    )
                )
        return out

    async def segments(ws: str, contacts: list[str]) -> list[tuple[int, list[str]]]:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT contact_id::text, segments FROM contact_facts WHERE workspace_id = $1",
                uuid.UUID(ws),
            )
        return sorted((contacts.index(r["contact_id"]), sorted(r["segments"])) for r in rows)

    alone_ws, alone = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(4)]
    for event in changes(alone_ws, alone):
        await handlers.on_event(pool, engine, event)
    round_ws, together = str(uuid.uuid4()), [str(uuid.uuid4()) for _ in range(4)]
    await handlers.on_events(pool, engine, changes(round_ws, together))

    expected = [(i, ["s2"]) for i in range(4)]
    assert await segments(alone_ws, alone) == expected
    assert await segments(round_ws, together) == expected
