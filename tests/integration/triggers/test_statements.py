"""The statements an event costs on the engine's hot path (bench/triggers.py's events: a
cart change restarting the abandoned-cart run, then the order ending it and starting the
post-purchase run). The worker is bound by its round trips to PostgreSQL, one awaited
statement after another (bench/RESULTS.md, issue 16): each one added here costs every event.

The handler runs in-process on one connection whose statements are logged; the live
workflows are cached (the engine's usual state between two publications). The clock is
frozen at noon UTC: the post-purchase thank-you is marketing mail, which waits for its send
window (08:00-21:00 local) at night, and the test must not depend on when it runs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from nudge.events.v1.envelope_pb2 import Envelope

from services.triggers import handlers
from services.triggers.runtime.caps import FrequencyCaps
from services.triggers.runtime.runs import Engine
from tests.integration.triggers.conftest import Logged
from tests.integration.triggers.support import cart, envelope, order, publish

TEMPLATES = Path(__file__).parents[3] / "services" / "triggers" / "templates"
# Round trips of each event of the hot path, at most: BEGIN, the statements, COMMIT and the
# pool's reset of the connection as it is released (21, 25 and 4 before they were counted;
# one more each since the erasure lock, handlers.ERASURE_LOCK, which a round of events
# takes once for all of them).
CART_RESTART = 15
ORDER = 18
REDELIVERY = 5


async def handled(
    pool: asyncpg.Pool, engine: Engine, logged: Logged, event: Envelope
) -> tuple[list[str], list[str]]:
    """The runs the event started and the statements it took."""
    mark = len(logged.queries)
    started = await handlers.on_event(pool, engine, event)
    return started, logged.since(mark)


async def test_a_cart_restart_and_an_order_take_a_bounded_number_of_statements(
    logged_pool: tuple[asyncpg.Pool, Logged], noon: None
) -> None:
    pool, logged = logged_pool
    ws, contact, warm = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    cart_flow = await publish(pool, ws, template("abandoned_cart"))
    await publish(pool, ws, template("post_purchase"))
    engine = Engine(FrequencyCaps(None, ""), live_ttl_s=3600.0)
    mug = ("p1", "Mug", 1, 1200)
    # Another contact's events fill the caches, as the worker's earlier events would.
    for payload in (cart("warm", mug), order("warm-order", "warm")):
        await handlers.on_event(pool, engine, with_contact(envelope(ws, payload), warm))

    first = with_contact(envelope(ws, cart("c1", mug)), contact)
    [first_run] = await handlers.on_event(pool, engine, first)
    again = with_contact(envelope(ws, cart("c1", mug, mug)), contact)
    [second_run], restart = await handled(pool, engine, logged, again)
    placed = with_contact(envelope(ws, order("o1", "c1")), contact)
    [thanks_run], ordering = await handled(pool, engine, logged, placed)
    replayed, redelivery = await handled(pool, engine, logged, placed)

    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id::text, workflow_id::text, state, end_reason FROM runs"
            " WHERE workspace_id = $1 AND contact_id = $2",
            uuid.UUID(ws),
            uuid.UUID(contact),
        )
    runs = {r["id"]: (r["state"], r["end_reason"]) for r in rows}
    assert runs == {
        first_run: ("cancelled", "restarted"),
        second_run: ("exited", "exit_rule:order_placed"),
        thanks_run: ("completed", "completed"),
    }
    assert {r["workflow_id"] for r in rows if r["id"] != thanks_run} == {cart_flow}
    assert replayed == []
    assert len(restart) <= CART_RESTART, restart
    assert len(ordering) <= ORDER, ordering
    assert len(redelivery) <= REDELIVERY, redelivery


def with_contact(event: Envelope, contact_id: str) -> Envelope:
    event.shop_event.contact_id = contact_id
    return event


def template(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((TEMPLATES / f"{name}.json").read_text())
    return doc
