"""The profile aggregates, activity and cart on real PostgreSQL, from envelopes as the Kafka
entrypoint decodes them: exact whatever order events arrive in, how often, and how late."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from google.protobuf.message import Message
from nudge.contacts.v1 import contacts_pb2, events_pb2
from nudge.events.v1.envelope_pb2 import Envelope
from nudge.shop.v1 import shop_pb2
from nudge.tracking.v1 import events_pb2 as tracking_pb2

from services.common.db import create_pool, migrate
from services.common.events import new_envelope
from services.segmentation.adapters import postgres as db
from services.segmentation.bootstrap import MIGRATIONS
from services.segmentation.entrypoints.kafka import change_of

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
async def pool(infra: dict[str, str]) -> AsyncIterator[asyncpg.Pool]:
    await migrate(os.environ["DATABASE_URL"], db.SCHEMA, MIGRATIONS)
    pool = await create_pool(os.environ["DATABASE_URL"], db.SCHEMA)
    yield pool
    await pool.close()


def shop(ws: str, cid: str, at: datetime, **kind: Message) -> Envelope:
    event = shop_pb2.ShopEvent(contact_id=cid, **kind)
    event.occurred_at.FromDatetime(at)
    return new_envelope(ws, event, occurred_at=at)


def placed(
    ws: str, cid: str, order_id: str, at: datetime, total: int, currency: str = "EUR", **kw: Any
) -> Envelope:
    money = shop_pb2.Money(amount_minor=total, currency=currency)
    return shop(
        ws, cid, at, order_placed=shop_pb2.OrderPlaced(order_id=order_id, total=money, **kw)
    )


def cancelled(ws: str, cid: str, order_id: str, at: datetime) -> Envelope:
    return shop(ws, cid, at, order_cancelled=shop_pb2.OrderCancelled(order_id=order_id))


def refunded(ws: str, cid: str, order_id: str, at: datetime) -> Envelope:
    return shop(ws, cid, at, order_refunded=shop_pb2.OrderRefunded(order_id=order_id))


def cart(
    ws: str, cid: str, cart_id: str, at: datetime, total: int, quantities: list[int]
) -> Envelope:
    items = [shop_pb2.LineItem(product_id=f"p{i}", quantity=q) for i, q in enumerate(quantities)]
    money = shop_pb2.Money(amount_minor=total, currency="EUR")
    return shop(
        ws, cid, at, cart_updated=shop_pb2.CartUpdated(cart_id=cart_id, items=items, total=money)
    )


def tracked(ws: str, at: datetime, payload: Message) -> Envelope:
    return new_envelope(ws, payload, occurred_at=at)


async def apply(pool: asyncpg.Pool, *envelopes: Envelope, batch: bool = False) -> list[bool]:
    """Decode as the entrypoint does and apply: each envelope in its own transaction (as a
    quiet topic does), or all in one batch."""
    items = []
    for env in envelopes:
        decoded = change_of(env)
        assert decoded is not None, env
        items.append(db.Pending(env.workspace_id, env.event_id, decoded[1]))
    if batch:
        async with pool.acquire() as conn, conn.transaction():
            return list(await db.apply(conn, items, NOW))
    results = []
    for item in items:
        async with pool.acquire() as conn, conn.transaction():
            results.extend(await db.apply(conn, [item], NOW))
    return results


async def profile(pool: asyncpg.Pool, ws: str, cid: str) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT first_name, last_name, orders_count, first_order_at, last_order_at, spent,"
        " last_visit_at, last_open_at, last_click_at, cart"
        " FROM profiles WHERE workspace_id = $1 AND contact_id = $2",
        uuid.UUID(ws),
        uuid.UUID(cid),
    )
    assert row is not None
    out = dict(row)
    out["spent"] = json.loads(out["spent"])
    out["cart"] = json.loads(out["cart"]) if out["cart"] is not None else None
    return out


async def activity(pool: asyncpg.Pool, ws: str, cid: str) -> list[tuple[str, str, datetime]]:
    rows = await pool.fetch(
        "SELECT kind, subject, at FROM activity WHERE workspace_id = $1 AND contact_id = $2"
        " ORDER BY at, kind",
        uuid.UUID(ws),
        uuid.UUID(cid),
    )
    return [(r["kind"], r["subject"], r["at"]) for r in rows]


def order_story(ws: str, cid: str) -> list[Envelope]:
    o1 = placed(ws, cid, "o1", NOW - 10 * DAY, 1000)
    return [
        o1,
        o1,  # delivered twice
        placed(ws, cid, "o2", NOW - 5 * DAY, 500),
        cancelled(ws, cid, "o2", NOW - 4 * DAY),
        placed(ws, cid, "o3", NOW - 3 * DAY, 700, "USD"),
        placed(ws, cid, "o4", NOW - 1 * DAY, 900),
        refunded(ws, cid, "o4", NOW - 1 * DAY + timedelta(hours=1)),
        cancelled(ws, cid, "o5", NOW - 2 * DAY),  # before its placement arrived
        placed(ws, cid, "o5", NOW - 2 * DAY - timedelta(hours=1), 300),
        placed(ws, cid, "o6", NOW - 20 * DAY, 250),  # late: older than all the others
    ]


EXPECTED_ORDERS = {
    "orders_count": 3,
    "first_order_at": NOW - 20 * DAY,
    "last_order_at": NOW - 3 * DAY,
    "spent": {"EUR": {"total_minor": 1250, "orders": 2}, "USD": {"total_minor": 700, "orders": 1}},
}


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
@pytest.mark.parametrize("batch", [False, True])
async def test_order_aggregates_are_exact_late_twice_out_of_order_and_cancelled_first(
    pool: asyncpg.Pool, seed: int | None, batch: bool
) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    story = order_story(ws, cid)
    if seed is not None:
        random.Random(seed).shuffle(story)
    await apply(pool, *story, batch=batch)
    p = await profile(pool, ws, cid)
    assert {k: p[k] for k in EXPECTED_ORDERS} == EXPECTED_ORDERS
    # Replaying everything changes nothing.
    assert not any(await apply(pool, *story, batch=batch))
    assert {k: v for k, v in (await profile(pool, ws, cid)).items() if k in EXPECTED_ORDERS} == (
        EXPECTED_ORDERS
    )


async def test_a_cancellation_stops_an_order_counting(pool: asyncpg.Pool) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    await apply(pool, placed(ws, cid, "a", NOW - DAY, 400), placed(ws, cid, "b", NOW, 100))
    p = await profile(pool, ws, cid)
    assert (p["orders_count"], p["last_order_at"]) == (2, NOW)
    await apply(pool, cancelled(ws, cid, "b", NOW))
    p = await profile(pool, ws, cid)
    assert (p["orders_count"], p["last_order_at"], p["spent"]) == (
        1,
        NOW - DAY,
        {"EUR": {"total_minor": 400, "orders": 1}},
    )
    await apply(pool, refunded(ws, cid, "a", NOW))
    p = await profile(pool, ws, cid)
    assert (p["orders_count"], p["first_order_at"], p["last_order_at"], p["spent"]) == (
        0,
        None,
        None,
        {},
    )


async def test_an_order_keeps_its_line_item_categories(pool: asyncpg.Pool) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    items = [
        shop_pb2.LineItem(product_id="1", category="shoes"),
        shop_pb2.LineItem(product_id="2", category="bags"),
        shop_pb2.LineItem(product_id="3", category="shoes"),
        shop_pb2.LineItem(product_id="4"),
    ]
    await apply(pool, placed(ws, cid, "o", NOW, 100, items=items))
    rows = await pool.fetch("SELECT categories FROM orders WHERE workspace_id = $1", uuid.UUID(ws))
    assert [r["categories"] for r in rows] == [["bags", "shoes"]]


async def test_names_come_from_the_contact_snapshot_by_version(pool: asyncpg.Pool) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())

    def snap(version: int, first: str, last: str) -> Envelope:
        c = contacts_pb2.Contact(
            id=cid,
            workspace_id=ws,
            email="n@example.com",
            version=version,
            first_name=first,
            last_name=last,
        )
        return new_envelope(ws, events_pb2.ContactUpdated(contact=c))

    await apply(pool, snap(2, "Ada", "Lovelace"), snap(1, "Old", "Name"))
    p = await profile(pool, ws, cid)
    assert (p["first_name"], p["last_name"]) == ("Ada", "Lovelace")


async def test_last_visit_is_the_newest_shop_event_of_any_kind(pool: asyncpg.Pool) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    await apply(pool, shop(ws, cid, NOW - 3 * DAY, login_failed=shop_pb2.LoginFailed()))
    assert (await profile(pool, ws, cid))["last_visit_at"] == NOW - 3 * DAY
    newest = shop(ws, cid, NOW - DAY, searched=shop_pb2.Searched(query="x"))
    await apply(pool, newest)
    for late in (
        shop(ws, cid, NOW - 2 * DAY, page_viewed=shop_pb2.PageViewed(url="/")),
        shop(ws, cid, NOW - 5 * DAY, signed_up=shop_pb2.SignedUp()),
        placed(ws, cid, "o", NOW - 4 * DAY, 100),
        cart(ws, cid, "c", NOW - 2 * DAY, 100, [1]),
    ):
        assert await apply(pool, late) == [True]
        assert (await profile(pool, ws, cid))["last_visit_at"] == NOW - DAY
    # Tracking events are not visits to the shop.
    await apply(pool, tracked(ws, NOW, tracking_pb2.MessageOpened(contact_id=cid)))
    assert (await profile(pool, ws, cid))["last_visit_at"] == NOW - DAY


async def test_page_views_and_searches_are_activity_rows_once(pool: asyncpg.Pool) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    view = shop(ws, cid, NOW - DAY, page_viewed=shop_pb2.PageViewed(url="/s", category="Shoes"))
    bare = shop(ws, cid, NOW - 2 * DAY, page_viewed=shop_pb2.PageViewed(url="/"))
    search = shop(ws, cid, NOW, searched=shop_pb2.Searched(query="Red SHOES " + "x" * 600))
    assert await apply(pool, view, bare, search, view, batch=True) == [True, True, True, False]
    assert await activity(pool, ws, cid) == [
        ("page_viewed", "", NOW - 2 * DAY),
        ("page_viewed", "Shoes", NOW - DAY),
        ("searched", ("red shoes " + "x" * 600)[:500], NOW),
    ]
    assert await apply(pool, search) == [False]  # replayed later: nothing new
    assert len(await activity(pool, ws, cid)) == 3


async def test_the_cart_follows_event_time_and_orders_clear_it(pool: asyncpg.Pool) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    await apply(pool, cart(ws, cid, "c1", NOW - 2 * DAY, 500, [1, 2]))
    expected = {
        "cart_id": "c1",
        "total_minor": 500,
        "currency": "EUR",
        "items": 3,
        "updated_at": (NOW - 2 * DAY).isoformat(),
    }
    got = (await profile(pool, ws, cid))["cart"]
    assert got == {**expected, "updated_at": got["updated_at"]}
    assert datetime.fromisoformat(got["updated_at"]) == NOW - 2 * DAY
    # An older update arriving late does not overwrite the newer cart.
    assert await apply(pool, cart(ws, cid, "c1", NOW - 3 * DAY, 100, [1])) == [False]
    assert (await profile(pool, ws, cid))["cart"]["total_minor"] == 500
    # An order placed from it clears it, even one placed before the cart's last update.
    await apply(pool, placed(ws, cid, "o1", NOW - 3 * DAY, 500, cart_id="c1"))
    assert (await profile(pool, ws, cid))["cart"] is None
    # A late update of that cart does not bring it back.
    assert await apply(pool, cart(ws, cid, "c1", NOW - DAY, 700, [1])) == [False]
    assert (await profile(pool, ws, cid))["cart"] is None
    # A new cart; an order older than it from another cart leaves it; a later order clears it.
    await apply(pool, cart(ws, cid, "c2", NOW - DAY + timedelta(hours=1), 200, [4]))
    await apply(pool, placed(ws, cid, "o0", NOW - 5 * DAY, 100, cart_id="old"))
    assert (await profile(pool, ws, cid))["cart"]["cart_id"] == "c2"
    await apply(pool, placed(ws, cid, "o2", NOW, 200))
    assert (await profile(pool, ws, cid))["cart"] is None
    # A cart update older than an order already there never shows.
    await apply(pool, cart(ws, cid, "c3", NOW - timedelta(hours=1), 50, [1]))
    assert (await profile(pool, ws, cid))["cart"] is None


async def test_tracking_opens_and_clicks(pool: asyncpg.Pool) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    human = tracked(ws, NOW - DAY, tracking_pb2.MessageOpened(contact_id=cid, message_id="m"))
    machine = tracked(
        ws, NOW, tracking_pb2.MessageOpened(contact_id=cid, message_id="m", machine_open=True)
    )
    click = tracked(
        ws, NOW - 2 * DAY, tracking_pb2.LinkClicked(contact_id=cid, url="https://shop.example/a")
    )
    assert change_of(machine) is None  # a proxy's open says nothing about the person
    scanner = tracked(
        ws, NOW, tracking_pb2.LinkClicked(contact_id=cid, url="https://x", machine_click=True)
    )
    assert change_of(scanner) is None  # nor a link scanner's click
    assert await apply(pool, human, click, human) == [True, True, False]
    older_open = tracked(ws, NOW - 5 * DAY, tracking_pb2.MessageOpened(contact_id=cid))
    older_click = tracked(ws, NOW - 5 * DAY, tracking_pb2.LinkClicked(contact_id=cid, url="u"))
    assert await apply(pool, older_open, older_click, batch=True) == [True, True]
    p = await profile(pool, ws, cid)
    assert (p["last_open_at"], p["last_click_at"]) == (NOW - DAY, NOW - 2 * DAY)
    assert await activity(pool, ws, cid) == [
        ("link_clicked", "u", NOW - 5 * DAY),
        ("message_opened", "", NOW - 5 * DAY),
        ("link_clicked", "https://shop.example/a", NOW - 2 * DAY),
        ("message_opened", "", NOW - DAY),
    ]


async def test_a_removed_contact_loses_its_activity_and_late_events_stay_out(
    pool: asyncpg.Pool,
) -> None:
    ws, cid = str(uuid.uuid4()), str(uuid.uuid4())
    await apply(pool, shop(ws, cid, NOW, page_viewed=shop_pb2.PageViewed(category="a")))
    await apply(pool, new_envelope(ws, events_pb2.ContactErased(contact_id=cid, version=2)))
    assert await activity(pool, ws, cid) == []
    late = tracked(ws, NOW, tracking_pb2.LinkClicked(contact_id=cid, url="u"))
    assert await apply(pool, late) == [False]
    assert await activity(pool, ws, cid) == []
    rows = await pool.fetchval(
        "SELECT count(*) FROM profiles WHERE workspace_id = $1", uuid.UUID(ws)
    )
    assert rows == 0
