"""The workflow templates end to end: shop events reported to contacts, through Kafka, the
trigger engine, delivery and the SMTP sink, with every process on one movable clock.

Each test moves the clock to the next noon (UTC) first, so that "three hours later" and
"the next day at 10:00" fall where the test says; contacts live in UTC unless a test gives
them a zone. The workspace's frequency cap is raised through campaigns (the engine's source
of truth for it): several thank-yous a day are what these tests are about, not the cap.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2
from nudge.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc
from nudge.triggers.v1 import triggers_pb2, triggers_pb2_grpc

from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.triggers.support import MovableClock, publish
from tests.mail import mails
from tests.support import eventually, fetchval, free_port, triggers_consumed, unique

TEMPLATES = Path(__file__).resolve().parents[3] / "services" / "triggers" / "templates"


# ------------------------------------------------------------------ the services


@pytest.fixture(scope="module")
async def segmentation(contacts_service: RunningService) -> AsyncIterator[RunningService]:
    from services.segmentation.bootstrap import serve
    from services.segmentation.config import Settings

    port = free_port()
    async with run_in_process(serve, Settings(grpc_port=port), port) as running:
        yield running


@pytest.fixture(scope="module")
async def campaigns(segmentation: RunningService) -> AsyncIterator[RunningService]:
    from services.campaigns.bootstrap import serve
    from services.campaigns.config import Settings

    port = free_port()
    settings = Settings(grpc_port=port, segmentation_addr=segmentation.address)
    async with run_in_process(serve, settings, port) as running:
        yield running


@pytest.fixture(scope="module")
async def delivery(contacts_service: RunningService) -> AsyncIterator[RunningService]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    async with run_in_process(serve, Settings(grpc_port=port), port) as running:
        yield running


@pytest.fixture(scope="module")
async def engine(
    engine_clock: MovableClock,
    campaigns: RunningService,
    delivery: RunningService,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[RunningService]:
    """``services.triggers`` in-process, asking these campaigns for the cap."""
    from services.triggers.bootstrap import serve
    from services.triggers.config import Settings

    port = free_port()
    settings = Settings(
        grpc_port=port,
        app_id=unique("triggers-e2e"),
        data_dir=str(tmp_path_factory.mktemp("faust")),
        live_workflows_ttl_s=0.5,
        campaigns_addr=campaigns.address,
    )
    async with run_in_process(serve, settings, port) as running:
        yield running


@pytest.fixture
async def shop(
    engine: RunningService,
    campaigns: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    engine_clock: MovableClock,
) -> AsyncIterator[Shop]:
    async with (
        grpc.aio.insecure_channel(contacts_service.address) as contacts,
        grpc.aio.insecure_channel(campaigns.address) as campaigns_channel,
    ):
        await campaigns_pb2_grpc.CampaignServiceStub(campaigns_channel).UpdateCampaignSettings(
            campaigns_pb2.UpdateCampaignSettingsRequest(
                settings=campaigns_pb2.CampaignSettings(
                    frequency_cap_messages=100, frequency_cap_days=1, time_zone="UTC"
                ),
                update_mask=field_mask_pb2.FieldMask(
                    paths=["frequency_cap_messages", "frequency_cap_days"]
                ),
            ),
            metadata=workspace.metadata,
        )
        the_shop = Shop(contacts, workspace, engine_clock)
        the_shop.move_to_next(time(12, 0))
        yield the_shop


# ------------------------------------------------------------------ driving the shop


def template(name: str) -> dict[str, Any]:
    """A template's definition, as DEFINITION ships it (services/triggers/templates)."""
    loaded: dict[str, Any] = json.loads((TEMPLATES / f"{name}.json").read_text())
    return loaded


def line(product: str, name: str, category: str, quantity: int, cents: int) -> shop_pb2.LineItem:
    return shop_pb2.LineItem(
        product_id=product,
        name=name,
        category=category,
        quantity=quantity,
        unit_price=shop_pb2.Money(amount_minor=cents, currency="EUR"),
    )


MUGS = line("mug-1", "Blue mug", "mugs", 2, 1200)
TEA = line("tea-1", "Green tea", "tea", 1, 650)


class Shop:
    """A platform reporting to contacts (ShopEventService.TrackEvent), and its customers."""

    def __init__(self, channel: grpc.aio.Channel, ws: Workspace, clock: MovableClock) -> None:
        self.ws = ws
        self.clock = clock
        self._contacts = contacts_pb2_grpc.ContactServiceStub(channel)
        self._events = shop_pb2_grpc.ShopEventServiceStub(channel)

    def move_to_next(self, at: time, *, days: int = 0) -> datetime:
        """Move every process's clock to the next ``at`` (UTC), ``days`` days further on."""
        now = self.clock.now()
        target = datetime.combine(now.date(), at, tzinfo=UTC) + timedelta(days=days)
        if target <= now:
            target += timedelta(days=1)
        self.clock.advance(seconds=(target - now).total_seconds())
        return target

    def move(self, **delta: float) -> None:
        self.clock.advance(**delta)

    async def customer(
        self,
        *,
        consents: bool = True,
        time_zone: str = "UTC",
        birthday: contacts_pb2.Date | None = None,
    ) -> contacts_pb2.Contact:
        answer = await self._contacts.CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(
                    email=f"{unique('shopper')}@example.com",
                    first_name="Ada",
                    time_zone=time_zone,
                    birthday=birthday,
                ),
                consents=[contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS] if consents else [],
            ),
            metadata=self.ws.metadata,
        )
        # The engine learns the contact (its time zone: quiet hours, local times) from
        # contacts.events.v1, while the shop's events come on shop.events.v1: on a loaded
        # machine an order reported at once can be handled first, in UTC. A shop reports
        # orders of customers it has had for a while; so do these tests.
        await eventually(lambda: self.engine_knows(answer.contact.id), timeout=60)
        return answer.contact

    async def engine_knows(self, contact_id: str) -> bool:
        row = await fetchval(
            os.environ["DATABASE_URL"],
            "SELECT 1 FROM triggers.contact_facts WHERE workspace_id = $1::uuid"
            " AND contact_id = $2::uuid",
            self.ws.id,
            contact_id,
        )
        return row is not None

    async def contact(self, contact_id: str) -> contacts_pb2.Contact:
        answer = await self._contacts.GetContact(
            contacts_pb2.GetContactRequest(contact=contacts_pb2.ContactRef(contact_id=contact_id)),
            metadata=self.ws.metadata,
        )
        return answer.contact

    async def report(self, contact_id: str, event: shop_pb2.ShopEvent) -> str:
        answer = await self._events.TrackEvent(
            shop_pb2.TrackEventRequest(
                idempotency_key=unique("event"),
                contact=contacts_pb2.ContactRef(contact_id=contact_id),
                event=event,
            ),
            metadata=self.ws.metadata,
        )
        return answer.event_id

    async def cart(self, contact_id: str, cart_id: str, *items: shop_pb2.LineItem) -> str:
        total = sum(i.quantity * i.unit_price.amount_minor for i in items)
        return await self.report(
            contact_id,
            shop_pb2.ShopEvent(
                cart_updated=shop_pb2.CartUpdated(
                    cart_id=cart_id,
                    items=list(items),
                    total=shop_pb2.Money(amount_minor=total, currency="EUR"),
                    cart_url=f"https://shop.example/cart/{cart_id}",
                )
            ),
        )

    async def order(self, contact_id: str, *items: shop_pb2.LineItem, cart_id: str = "") -> str:
        total = sum(i.quantity * i.unit_price.amount_minor for i in items)
        return await self.report(
            contact_id,
            shop_pb2.ShopEvent(
                order_placed=shop_pb2.OrderPlaced(
                    order_id=unique("order"),
                    cart_id=cart_id,
                    items=list(items),
                    total=shop_pb2.Money(amount_minor=total, currency="EUR"),
                )
            ),
        )


def mail_to(email: str) -> list[EmailMessage]:
    return [m for m in mails() if str(m["To"]).endswith(f"<{email}>") or str(m["To"]) == email]


def subjects(email: str) -> list[str]:
    return [str(m["Subject"]) for m in mail_to(email)]


def has_mail(email: str, starts: str, n: int = 1) -> Callable[[], bool]:
    return lambda: sum(1 for s in subjects(email) if s.startswith(starts)) >= n


def body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


async def runs(workspace_id: str, contact_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        return list(
            await conn.fetch(
                "SELECT id, workflow_id::text AS workflow_id, state, run_key, end_reason,"
                " next_wake_at FROM triggers.runs WHERE workspace_id = $1::uuid"
                " AND contact_id = $2::uuid ORDER BY started_at, id",
                workspace_id,
                contact_id,
            )
        )
    finally:
        await conn.close()


def runs_like(workspace_id: str, contact_id: str, expected: list[tuple[str, str]]) -> Any:
    """A probe: the contact's runs are, oldest first, (state, end_reason) as ``expected``."""

    async def probe() -> bool:
        found = [(r["state"], r["end_reason"]) for r in await runs(workspace_id, contact_id)]
        assert found == expected
        return True

    return probe


# ------------------------------------------------------------------ the tests


async def test_abandoned_cart_reminds_twice_restarts_on_a_change_and_ends_on_order_or_empty_cart(
    shop: Shop,
) -> None:
    await publish(os.environ["DATABASE_URL"], shop.ws.id, template("abandoned_cart"))
    forgetful, buyer, emptier = [await shop.customer() for _ in range(3)]
    ws = shop.ws.id
    # Noon: three carts.
    for person in (forgetful, buyer, emptier):
        await shop.cart(person.id, f"cart-{person.id}", MUGS)
    for person in (forgetful, buyer, emptier):
        await eventually(runs_like(ws, person.id, [("waiting", "")]), timeout=60)

    # 13:00: one changes the cart (the 3 hours count again), one empties it (the run ends).
    shop.move(hours=1)
    await shop.cart(forgetful.id, f"cart-{forgetful.id}", MUGS, TEA)
    await shop.cart(emptier.id, f"cart-{emptier.id}")
    await eventually(
        runs_like(ws, forgetful.id, [("cancelled", "restarted"), ("waiting", "")]), timeout=60
    )
    await eventually(runs_like(ws, emptier.id, [("exited", "exit_rule:cart_updated")]), timeout=60)

    # 15:10: the buyer's 3 hours are over, the forgetful one's (from 13:00) are not.
    shop.move(hours=2, minutes=10)
    await eventually(has_mail(buyer.email, "Ada, your cart at"), timeout=60)
    [reminder] = mail_to(buyer.email)
    assert "2 x Blue mug (12.00 EUR)" in body(reminder)
    assert "Pick up where you left off: http" in body(reminder)  # the cart link (tracked)
    [(state, _)] = [(r["state"], r["end_reason"]) for r in await runs(ws, buyer.id)]
    assert state == "waiting"
    assert mail_to(forgetful.email) == []
    # The buyer orders: the run ends before the offer.
    await shop.order(buyer.id, MUGS, cart_id=f"cart-{buyer.id}")
    await eventually(runs_like(ws, buyer.id, [("exited", "exit_rule:order_placed")]), timeout=60)

    # 16:10: the forgetful one's reminder, with the changed cart.
    shop.move(hours=1)
    await eventually(has_mail(forgetful.email, "Ada, your cart at"), timeout=60)
    reminder_body = body(mail_to(forgetful.email)[0])
    assert "2 x Blue mug (12.00 EUR)" in reminder_body
    assert "1 x Green tea (6.50 EUR)" in reminder_body

    # The next day at 10:00: the offer, to the forgetful one only.
    shop.move_to_next(time(10, 5))
    await eventually(has_mail(forgetful.email, "Free shipping today only"), timeout=60)
    await eventually(
        runs_like(ws, forgetful.id, [("cancelled", "restarted"), ("completed", "completed")]),
        timeout=60,
    )
    assert len(mail_to(forgetful.email)) == 2
    assert len(mail_to(buyer.email)) == 1
    assert mail_to(emptier.email) == []


async def test_post_purchase_thanks_first_second_and_later_orders_differently_and_tags_them(
    shop: Shop,
) -> None:
    """Seed 002: first order tags first_purchase; the second swaps it for repeat_customer;
    the third adds 10 to the score. Three different thank-yous."""
    await publish(os.environ["DATABASE_URL"], shop.ws.id, template("post_purchase"))
    person = await shop.customer()

    await shop.order(person.id, MUGS)
    await eventually(has_mail(person.email, "Thank you for your first order"), timeout=60)

    async def tags_are(expected: list[str]) -> bool:
        assert sorted((await shop.contact(person.id)).tags) == expected
        return True

    await eventually(lambda: tags_are(["first_purchase"]), timeout=30)

    shop.move(hours=1)
    await shop.order(person.id, TEA)
    await eventually(has_mail(person.email, "Welcome back to"), timeout=60)
    await eventually(lambda: tags_are(["repeat_customer"]), timeout=30)
    assert (await shop.contact(person.id)).score == 0

    shop.move(hours=1)
    await shop.order(person.id, MUGS)
    await eventually(has_mail(person.email, "Thank you again"), timeout=60)

    async def scored() -> bool:
        assert (await shop.contact(person.id)).score == 10
        return True

    await eventually(scored, timeout=30)
    assert sorted((await shop.contact(person.id)).tags) == ["repeat_customer"]
    assert len(mail_to(person.email)) == 3


async def test_post_purchase_counts_orders_placed_in_the_night_before_thanking_for_them(
    shop: Shop,
) -> None:
    """Three orders between 03:00 and 05:00 local, while every thank-you waits for 08:00: the
    second must already see first_purchase and the third repeat_customer. With the tags
    changed after the thank-you (as the template first had them), the third order found no
    tag at all and was thanked as a first purchase."""
    database_url = os.environ["DATABASE_URL"]
    post_purchase = await publish(database_url, shop.ws.id, template("post_purchase"))
    person = await shop.customer(time_zone="Pacific/Gambier")  # 12:00 UTC is 03:00 there

    async def counted(tags: list[str], score: int, waiting: int) -> bool:
        contact = await shop.contact(person.id)
        assert (sorted(contact.tags), contact.score) == (tags, score)
        thanks = [r for r in await runs(shop.ws.id, person.id) if r["workflow_id"] == post_purchase]
        assert [r["state"] for r in thanks] == ["waiting"] * waiting
        return True

    await shop.order(person.id, MUGS)
    await eventually(lambda: counted(["first_purchase"], 0, 1), timeout=60)
    shop.move(hours=1)
    await shop.order(person.id, TEA)
    await eventually(lambda: counted(["repeat_customer"], 0, 2), timeout=60)
    shop.move(hours=1)
    await shop.order(person.id, MUGS)
    await eventually(lambda: counted(["repeat_customer"], 10, 3), timeout=60)
    assert mail_to(person.email) == []

    shop.move_to_next(time(17, 1))  # 08:01 local
    await eventually(lambda: len(mail_to(person.email)) == 3, timeout=60)
    for thanks in ("Thank you for your first order", "Welcome back to", "Thank you again"):
        assert has_mail(person.email, thanks)(), thanks


async def test_order_details_go_out_at_once_and_the_cross_sell_two_days_later_at_ten(
    shop: Shop,
) -> None:
    await publish(os.environ["DATABASE_URL"], shop.ws.id, template("order_details"))
    person = await shop.customer()
    await shop.order(person.id, MUGS, TEA)
    await eventually(has_mail(person.email, "Your order order-"), timeout=60)
    details = body(mail_to(person.email)[0])
    assert "2 x Blue mug (12.00 EUR)" in details
    assert "30.50 EUR" in details

    # Two days later at 12:00 the wait is over: the cross-sell waits for 10:00 the next day.
    shop.move(hours=48)
    await eventually(
        lambda: _waits_until(shop.ws.id, person.id, shop.clock.now() + timedelta(hours=22)),
        timeout=60,
    )
    assert len(mail_to(person.email)) == 1
    shop.move_to_next(time(10, 5))
    await eventually(has_mail(person.email, "Picked for you at"), timeout=60)
    cross_sell = mail_to(person.email)[1]
    assert "mugs, tea" in body(cross_sell)


async def _waits_until(workspace_id: str, contact_id: str, wake: datetime) -> bool:
    [run] = await runs(workspace_id, contact_id)
    assert run["state"] == "waiting"
    assert run["next_wake_at"] is not None
    assert abs((run["next_wake_at"] - wake).total_seconds()) < 120, run["next_wake_at"]
    return True


async def test_marketing_due_at_three_in_the_night_waits_for_eight_transactional_does_not(
    shop: Shop,
) -> None:
    """12:00 UTC is 03:00 in Pacific/Gambier (UTC-9, no summer time)."""
    database_url = os.environ["DATABASE_URL"]
    await publish(database_url, shop.ws.id, template("order_details"))
    post_purchase = await publish(database_url, shop.ws.id, template("post_purchase"))
    person = await shop.customer(time_zone="Pacific/Gambier")
    await shop.order(person.id, MUGS)
    # The order's details at once, at 03:00 local.
    await eventually(has_mail(person.email, "Your order order-"), timeout=60)
    # The thank-you (marketing) holds until 08:00 local, 17:00 UTC.
    eight = datetime.combine(shop.clock.now().date(), time(17, 0), tzinfo=UTC)

    async def held() -> bool:
        thanks = [r for r in await runs(shop.ws.id, person.id) if r["workflow_id"] == post_purchase]
        assert [(r["state"], r["next_wake_at"]) for r in thanks] == [("waiting", eight)]
        return True

    await eventually(held, timeout=60)
    assert not has_mail(person.email, "Thank you for your first order")()

    shop.move_to_next(time(17, 1))
    await eventually(has_mail(person.email, "Thank you for your first order"), timeout=60)
    [thanks] = [m for m in mail_to(person.email) if str(m["Subject"]).startswith("Thank you")]
    assert parsedate_to_datetime(str(thanks["Date"])) >= eight


async def test_without_automations_consent_no_marketing_mail_goes_out_but_transactional_does(
    shop: Shop,
) -> None:
    database_url = os.environ["DATABASE_URL"]
    await publish(database_url, shop.ws.id, template("order_details"))
    await publish(database_url, shop.ws.id, template("post_purchase"))
    person = await shop.customer(consents=False)
    await shop.order(person.id, MUGS)
    await eventually(has_mail(person.email, "Your order order-"), timeout=60)

    # Delivery saw the thank-you and skipped it (status 3) for want of consent.
    async def skipped() -> str:
        detail = await fetchval(
            database_url,
            "SELECT detail FROM delivery.messages WHERE workspace_id = $1::uuid"
            " AND contact_id = $2::uuid AND status = 3",
            shop.ws.id,
            person.id,
        )
        return str(detail or "")

    assert await eventually(skipped, timeout=60)
    assert subjects(person.email) == [s for s in subjects(person.email) if s.startswith("Your")]
    assert len(mail_to(person.email)) == 1


async def test_browse_abandonment_reminds_of_a_product_page_unless_it_went_into_the_cart(
    shop: Shop,
) -> None:
    await publish(os.environ["DATABASE_URL"], shop.ws.id, template("browse_abandonment"))
    browser, shopper = [await shop.customer() for _ in range(2)]
    teapot = shop_pb2.ShopEvent(
        page_viewed=shop_pb2.PageViewed(
            url="https://shop.example/p/teapot", product_id="teapot", category="tea"
        )
    )
    for person in (browser, shopper):
        await shop.report(person.id, teapot)
    for person in (browser, shopper):
        await eventually(runs_like(shop.ws.id, person.id, [("waiting", "")]), timeout=60)
    # A page without a product starts nothing; the product again while the run waits neither.
    reported = [
        await shop.report(browser.id, shop_pb2.ShopEvent(page_viewed=shop_pb2.PageViewed(url="/"))),
        await shop.report(browser.id, teapot),
        await shop.cart(shopper.id, f"cart-{shopper.id}", TEA),
    ]
    # The engine has seen them all before the two hours pass (else the timer could fire
    # before the cart reaches the engine, and rightly remind the shopper).
    for event_id in reported:
        await eventually(
            functools.partial(triggers_consumed, os.environ["DATABASE_URL"], event_id), timeout=60
        )

    shop.move(hours=2, minutes=5)
    await eventually(has_mail(browser.email, "Still thinking it over?"), timeout=60)
    assert "Still thinking it over?" in subjects(browser.email)[0]
    await eventually(
        runs_like(shop.ws.id, shopper.id, [("exited", "exit_rule:cart_updated")]), timeout=60
    )
    assert mail_to(shopper.email) == []
    assert [(r["state"]) for r in await runs(shop.ws.id, browser.id)] == ["completed"]
    assert len(mail_to(browser.email)) == 1


async def test_what_went_into_a_cart_at_night_is_not_reminded_of_in_the_morning(
    shop: Shop,
) -> None:
    """Browsing and searching at 20:00 local: the reminders fall due after 21:00 and wait for
    08:00. A cart filled meanwhile ends them (as an order does): before the templates' exit
    rule on cart_updated, their condition had been checked at 22:00 and the mail went out in
    the morning anyway, next to the cart's own reminder."""
    database_url = os.environ["DATABASE_URL"]
    await publish(database_url, shop.ws.id, template("browse_abandonment"))
    await publish(database_url, shop.ws.id, template("search_follow_up"))
    # 12:00 UTC is 20:00 in Asia/Shanghai (UTC+8, no summer time); 08:00 there is 00:00 UTC.
    idle, browser, searcher = [await shop.customer(time_zone="Asia/Shanghai") for _ in range(3)]
    teapot = shop_pb2.ShopEvent(
        page_viewed=shop_pb2.PageViewed(
            url="https://shop.example/p/teapot", product_id="teapot", category="tea"
        )
    )
    for person in (idle, browser):
        await shop.report(person.id, teapot)
    await shop.report(searcher.id, shop_pb2.ShopEvent(searched=shop_pb2.Searched(query="teapot")))
    for person in (idle, browser, searcher):
        await eventually(runs_like(shop.ws.id, person.id, [("waiting", "")]), timeout=60)

    shop.move(hours=2, minutes=5)  # 22:05 local: due, and held by the send window
    morning = datetime.combine(shop.clock.now().date() + timedelta(days=1), time(0), tzinfo=UTC)

    async def held(person: contacts_pb2.Contact) -> bool:
        assert [(r["state"], r["next_wake_at"]) for r in await runs(shop.ws.id, person.id)] == [
            ("waiting", morning)
        ]
        return True

    for person in (idle, browser, searcher):
        await eventually(functools.partial(held, person), timeout=60)
    for person in (browser, searcher):
        await shop.cart(person.id, f"cart-{person.id}", TEA)
        await eventually(
            runs_like(shop.ws.id, person.id, [("exited", "exit_rule:cart_updated")]), timeout=60
        )

    shop.move_to_next(time(0, 5))  # 08:05 local
    await eventually(has_mail(idle.email, "Still thinking it over?"), timeout=60)
    assert mail_to(browser.email) == mail_to(searcher.email) == []


async def test_search_follow_up_asks_an_hour_later_unless_the_searcher_ordered(
    shop: Shop,
) -> None:
    await publish(os.environ["DATABASE_URL"], shop.ws.id, template("search_follow_up"))
    searcher, buyer = [await shop.customer() for _ in range(2)]
    search = shop_pb2.ShopEvent(searched=shop_pb2.Searched(query="cast iron teapot"))
    for person in (searcher, buyer):
        await shop.report(person.id, search)
    for person in (searcher, buyer):
        await eventually(runs_like(shop.ws.id, person.id, [("waiting", "")]), timeout=60)
    await shop.order(buyer.id, TEA)
    await eventually(
        runs_like(shop.ws.id, buyer.id, [("exited", "exit_rule:order_placed")]), timeout=60
    )

    shop.move(hours=1, minutes=5)
    await eventually(has_mail(searcher.email, "Did you find it at"), timeout=60)
    assert 'you searched for "cast iron teapot"' in body(mail_to(searcher.email)[0])
    assert mail_to(buyer.email) == []


async def test_a_failed_login_gets_help_at_once_even_without_consent_at_most_once_an_hour(
    shop: Shop,
) -> None:
    database_url = os.environ["DATABASE_URL"]
    await publish(database_url, shop.ws.id, template("password_reminder"))
    person = await shop.customer(consents=False)
    reset = f"https://shop.example/password/reset?token={unique('t')}"
    await shop.report(
        person.id, shop_pb2.ShopEvent(login_failed=shop_pb2.LoginFailed(reset_url=reset))
    )
    await eventually(has_mail(person.email, "Trouble signing in to"), timeout=60)
    # The shop's reset link as given: transactional mail is never rewritten for tracking.
    assert f"Choose a new password here: {reset}" in body(mail_to(person.email)[0]).splitlines()
    failed = shop_pb2.ShopEvent(login_failed=shop_pb2.LoginFailed())
    # Twenty minutes later, again: the hour is not over, no second run.
    shop.move(minutes=20)
    again = await shop.report(person.id, failed)
    await eventually(functools.partial(triggers_consumed, database_url, again), timeout=60)
    assert [r["state"] for r in await runs(shop.ws.id, person.id)] == ["completed"]
    # An hour after the first, again: a second mail.
    shop.move(minutes=45)
    later = await shop.report(person.id, failed)
    await eventually(functools.partial(triggers_consumed, database_url, later), timeout=60)
    await eventually(has_mail(person.email, "Trouble signing in to", 2), timeout=60)
    assert [r["state"] for r in await runs(shop.ws.id, person.id)] == ["completed"] * 2
    assert len(mail_to(person.email)) == 2
    # Without a link, the way to the shop's own "Forgot password".
    assert '"Forgot password" on the sign-in page' in body(mail_to(person.email)[1])


async def test_passing_a_thousand_euros_in_orders_thanks_a_best_customer_once(
    shop: Shop,
) -> None:
    database_url = os.environ["DATABASE_URL"]
    await publish(database_url, shop.ws.id, template("value_threshold"))
    person = await shop.customer()
    big = line("kettle", "Copper kettle", "kitchen", 1, 60000)
    await shop.order(person.id, big)
    shop.move(hours=1)
    await shop.order(person.id, line("pot", "Cast iron pot", "kitchen", 1, 50000))
    await eventually(has_mail(person.email, "Thank you from all of us at"), timeout=60)
    assert "with 1,100.00 EUR of orders" in body(mail_to(person.email)[0])
    # Passing it again (a later order) thanks nobody twice: once per contact.
    shop.move(hours=1)
    again = await shop.order(person.id, big)
    await eventually(functools.partial(triggers_consumed, database_url, again), timeout=60)
    assert [r["state"] for r in await runs(shop.ws.id, person.id)] == ["completed"]
    assert len(mail_to(person.email)) == 1


async def timer_due(
    shop: Shop, contact_id: str, kind: str, *, workflow_id: str | None = None
) -> datetime | None:
    """When the contact's pending timer of ``kind`` (of ``workflow_id``, if given) falls due."""
    due: datetime | None = await fetchval(
        os.environ["DATABASE_URL"],
        "SELECT due_at FROM triggers.timers WHERE workspace_id = $1::uuid"
        " AND contact_id = $2::uuid AND kind = $3"
        " AND ($4::uuid IS NULL OR workflow_id = $4::uuid)",
        shop.ws.id,
        contact_id,
        kind,
        workflow_id,
    )
    return due


async def timer_due_is(
    shop: Shop, contact_id: str, kind: str, expected: datetime, *, workflow_id: str | None = None
) -> bool:
    """For ``eventually``: the timer is there, due at ``expected`` (else it says when)."""
    assert await timer_due(shop, contact_id, kind, workflow_id=workflow_id) == expected
    return True


async def test_birthday_wishes_go_out_at_nine_in_the_contacts_zone_on_the_day(
    shop: Shop,
) -> None:
    await publish(os.environ["DATABASE_URL"], shop.ws.id, template("birthday"))
    tomorrow = shop.clock.now().date() + timedelta(days=1)
    # 09:00 in Rome (UTC+1 in winter) is 08:00 UTC.
    person = await shop.customer(
        time_zone="Europe/Rome",
        birthday=contacts_pb2.Date(year=1990, month=tomorrow.month, day=tomorrow.day),
    )
    nine = datetime.combine(tomorrow, time(8, 0), tzinfo=UTC)
    await eventually(lambda: timer_due_is(shop, person.id, "date", nine), timeout=60)
    assert mail_to(person.email) == []
    shop.move_to_next(time(8, 1))
    await eventually(has_mail(person.email, "Happy birthday from"), timeout=60)
    [wishes] = mail_to(person.email)
    assert parsedate_to_datetime(str(wishes["Date"])) >= nine


async def test_a_birthday_workflow_published_after_the_contact_came_reaches_them(
    shop: Shop, engine: RunningService
) -> None:
    """Published through the API once the contact is known: the publication leaves a job and
    the worker's schedule loop writes the contact's timer after it (runtime/schedules.py)."""
    tomorrow = shop.clock.now().date() + timedelta(days=1)
    person = await shop.customer(
        time_zone="Europe/Rome",
        birthday=contacts_pb2.Date(year=1990, month=tomorrow.month, day=tomorrow.day),
    )
    async with grpc.aio.insecure_channel(engine.address) as channel:
        api = triggers_pb2_grpc.WorkflowServiceStub(channel)
        created = await api.CreateWorkflow(
            triggers_pb2.CreateWorkflowRequest(template_id="birthday"), metadata=shop.ws.metadata
        )
        await api.PublishWorkflow(
            triggers_pb2.PublishWorkflowRequest(workflow_id=created.id), metadata=shop.ws.metadata
        )
    nine = datetime.combine(tomorrow, time(8, 0), tzinfo=UTC)
    await eventually(
        lambda: timer_due_is(shop, person.id, "date", nine, workflow_id=created.id), timeout=60
    )
    shop.move_to_next(time(8, 1))
    await eventually(has_mail(person.email, "Happy birthday from"), timeout=60)
    [wishes] = mail_to(person.email)  # once: the job wrote one timer for them
    assert parsedate_to_datetime(str(wishes["Date"])) >= nine


async def test_win_back_mails_after_ninety_silent_days_counted_from_the_last_activity(
    shop: Shop,
) -> None:
    """Last in this module: it moves every process's clock five months on."""
    database_url = os.environ["DATABASE_URL"]
    await publish(database_url, shop.ws.id, template("win_back"))
    person = await shop.customer()

    async def silence_ends_at(expected: datetime) -> bool:
        due = await timer_due(shop, person.id, "inactive")
        assert due is not None and abs((due - expected).total_seconds()) < 5, due
        return True

    ordered_at = shop.clock.now()
    ordered = await shop.order(person.id, MUGS)
    await eventually(functools.partial(triggers_consumed, database_url, ordered), timeout=60)
    await eventually(lambda: silence_ends_at(ordered_at + timedelta(days=90)), timeout=60)

    # Sixty days on, a visit: the silence counts again from there.
    shop.move(hours=24 * 60)
    visited_at = shop.clock.now()
    await shop.report(person.id, shop_pb2.ShopEvent(page_viewed=shop_pb2.PageViewed(url="/")))
    await eventually(lambda: silence_ends_at(visited_at + timedelta(days=90)), timeout=60)

    shop.move(hours=24 * 31)  # 91 days after the order, 31 after the visit: still nothing
    await eventually(lambda: silence_ends_at(visited_at + timedelta(days=90)), timeout=10)
    assert [r for r in await runs(shop.ws.id, person.id)] == []

    shop.move(hours=24 * 60)  # 91 days after the visit
    await eventually(has_mail(person.email, "We miss you at"), timeout=60)
    assert len(mail_to(person.email)) == 1
