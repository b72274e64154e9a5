"""The console's Contacts pages (issue 18) in a real Chromium over the whole system: search
and filters (e-mail/name prefix, tag, consent, segment) with paging, "select all matching"
and a tag added to every match (checked through the API: every match got it, no other
contact did), a contact's page with its consent history, a sent message's outcome and why it
is in a segment, names and texts with markup shown as text, and a viewer who cannot tag.

Tags cannot hold markup (the API accepts only ``[a-z0-9][a-z0-9_:-]*``), so the XSS payloads
go into what can: names, the consent's wording and actor, a segment's name.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import httpx
from aiokafka import AIOKafkaProducer
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from nudge.tracking.v1 import events_pb2 as tracking_pb2
from playwright.async_api import Browser, Page, expect

from services.common.events import new_envelope
from services.common.topics import DELIVERY_REQUESTS, TRACKING_EVENTS
from tests.e2e import test_console as console
from tests.e2e.conftest import System
from tests.e2e.test_console import (
    IMG,
    SCRIPT,
    WAIT_MS,
    Shop,
    new_manager,
    new_shop,
    post,
    sign_in,
    vip_count,
    watch,
)
from tests.support import eventually, unique

# test_console's fixtures and skip marks (no Chromium, no Playwright), shared rather than copied.
browser = console.browser
http = console.http
fresh_address_throttle = console.fresh_address_throttle
pytestmark = console.pytestmark

PAGE_SIZE = 50  # contacts.js's page


async def contact(
    http: httpx.AsyncClient, shop: Shop, prefix: str, **fields: Any
) -> dict[str, Any]:
    body = {"email": f"{unique(prefix)}@example.com", **fields}
    created: dict[str, Any] = await post(http, shop, "/v1/contacts", body)
    return created


async def all_with_tag(http: httpx.AsyncClient, shop: Shop, tag: str) -> set[str]:
    """Every contact holding the tag, through every page of the API."""
    found: set[str] = set()
    token = ""
    while True:
        answer = await http.get(
            "/v1/contacts",
            params={"tags_any": tag, "page_size": 1000, "page_token": token},
            headers=shop.auth,
        )
        assert answer.status_code == 200, answer.text
        found |= {c["id"] for c in answer.json()["contacts"]}
        token = answer.json()["next_page_token"]
        if not token:
            return found


async def open_contacts(page: Page, system: System, email: str) -> None:
    await sign_in(page, system, email)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=WAIT_MS)
    await page.get_by_role("link", name="Contacts").click()
    await expect(page.get_by_role("heading", name="Contacts", exact=True)).to_be_visible(
        timeout=WAIT_MS
    )


def rows(page: Page) -> Any:
    return page.locator("#contact-rows .contact")


async def test_search_and_filters_narrow_the_list_and_pages_go_on(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    ada = await contact(
        http, shop, "ada", first_name="Adalgisa", last_name="Rossi", tags=["spring"]
    )
    bob = await contact(http, shop, "bob", first_name="Bob", tags=["spring"], vip=True)
    carla = await contact(http, shop, "carla", first_name="Carla")
    await post(
        http,
        shop,
        f"/v1/contacts/{carla['id']}/consents",
        {"purpose": "marketing", "status": "granted", "wording": "Yes, news please"},
    )
    others = [await contact(http, shop, "many") for _ in range(PAGE_SIZE)]
    await eventually(lambda: _equals(vip_count(http, shop), 1), timeout=60)

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    watched = watch(page)
    await open_contacts(page, system, shop.owner)
    # Everyone, a page at a time: 53 contacts are two pages.
    await expect(rows(page)).to_have_count(PAGE_SIZE, timeout=WAIT_MS)
    await page.locator("#page-next").click()
    await expect(rows(page)).to_have_count(3 + len(others) - PAGE_SIZE, timeout=WAIT_MS)
    await expect(page.locator("#page-next")).to_be_disabled()
    await page.locator("#page-previous").click()
    await expect(rows(page)).to_have_count(PAGE_SIZE, timeout=WAIT_MS)

    async def shown() -> set[str]:
        ids = await rows(page).evaluate_all("rs => rs.map(r => r.dataset.contactId)")
        return set(ids)

    # A name prefix, case-insensitive.
    await page.fill("#contacts-q", "adal")
    await page.locator("#contacts-apply").click()
    await expect(rows(page)).to_have_count(1, timeout=WAIT_MS)
    assert await shown() == {ada["id"]}
    await expect(rows(page).first).to_contain_text("Adalgisa Rossi")
    # An e-mail prefix.
    await page.fill("#contacts-q", bob["email"][:8])
    await page.locator("#contacts-apply").click()
    await expect(rows(page)).to_have_count(1, timeout=WAIT_MS)
    assert await shown() == {bob["id"]}
    # A tag.
    await page.fill("#contacts-q", "")
    await page.fill("#contacts-tag", "spring")
    await page.locator("#contacts-apply").click()
    await expect(rows(page)).to_have_count(2, timeout=WAIT_MS)
    assert await shown() == {ada["id"], bob["id"]}
    # The filters are in the address: a reload shows the same list.
    assert "tag=spring" in page.url
    await page.reload()
    await expect(rows(page)).to_have_count(2, timeout=WAIT_MS)
    # A consent state.
    await page.fill("#contacts-tag", "")
    await page.select_option("#contacts-consent", "marketing:granted")
    await expect(rows(page)).to_have_count(1, timeout=WAIT_MS)
    assert await shown() == {carla["id"]}
    # A segment (segmentation's VIPs), with the consent filter taken off.
    await page.select_option("#contacts-consent", "")
    await page.select_option("#contacts-segment", "vip")
    await expect(rows(page)).to_have_count(1, timeout=WAIT_MS)
    assert await shown() == {bob["id"]}
    # Nothing matching says so.
    await page.fill("#contacts-q", "nobody-has-this-name")
    await page.locator("#contacts-apply").click()
    await expect(page.locator("#no-contacts")).to_be_visible(timeout=WAIT_MS)
    assert watched.exceptions == [] and watched.errors == []
    await context.close()


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def test_select_all_matching_adds_a_tag_to_every_match_and_no_other(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    # More matches than a page shows: "all matching" is not "all shown".
    matching = {(await contact(http, shop, "m", tags=["newsletter"]))["id"] for _ in range(60)}
    rest = {(await contact(http, shop, "o", tags=["other"]))["id"] for _ in range(5)}

    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    watched = watch(page)
    await open_contacts(page, system, shop.owner)
    await page.fill("#contacts-tag", "newsletter")
    await page.locator("#contacts-apply").click()
    await expect(rows(page)).to_have_count(PAGE_SIZE, timeout=WAIT_MS)
    await expect(page.locator("#bulk-add")).to_be_disabled()  # nothing selected yet
    await page.locator("#select-all").check()
    # An invalid tag: the server's words next to the field, nothing changed.
    await page.fill("#bulk-tag", "Not A Tag!")
    await page.locator("#bulk-add").click()
    await expect(page.locator("#bulk-tag-error")).not_to_be_empty(timeout=WAIT_MS)
    assert await all_with_tag(http, shop, "call-back") == set()

    await page.fill("#bulk-tag", "call-back")
    await page.locator("#bulk-add").click()
    await expect(page.locator("#bulk-result")).to_contain_text(
        "60 matching contacts now have the tag", timeout=WAIT_MS
    )
    await expect(page.locator("#bulk-tag-error")).to_be_empty()
    assert await all_with_tag(http, shop, "call-back") == matching
    assert not rest & await all_with_tag(http, shop, "call-back")
    # The list shows the new tag on the rows.
    await expect(rows(page).first.locator(".tag", has_text="call-back")).to_be_visible(
        timeout=WAIT_MS
    )

    # And taken off them all again.
    await page.locator("#bulk-remove").click()
    await expect(page.locator("#bulk-result")).to_contain_text(
        "60 matching contacts no longer have the tag", timeout=WAIT_MS
    )
    assert await all_with_tag(http, shop, "call-back") == set()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    assert watched.exceptions == []
    await context.close()


async def send_transactional(system: System, shop: Shop, contact_id: str) -> str:
    async with grpc.aio.insecure_channel(system.env["NUDGE_DELIVERY_ADDR"]) as channel:
        answer = await delivery_pb2_grpc.DeliveryServiceStub(channel).SendTransactional(
            delivery_pb2.SendTransactionalRequest(
                idempotency_key=unique("order"),
                contact_id=contact_id,
                content=delivery_pb2.MessageContent(
                    subject="Your order", body_text="It is on its way"
                ),
            ),
            metadata=(("authorization", f"Bearer {shop.api_key}"),),
        )
    return str(answer.message_id)


async def request_campaign_message(
    system: System, shop: Shop, contact_id: str, campaign_id: str
) -> str:
    """A campaign's message for the contact, requested as campaigns requests it (on
    delivery.requests.v1)."""
    message_id = str(uuid.uuid4())
    requested = delivery_pb2.DeliveryRequested(
        message_id=message_id,
        contact_id=contact_id,
        kind=delivery_pb2.MESSAGE_KIND_CAMPAIGN,
        purpose=contacts_pb2.CONSENT_PURPOSE_MARKETING,
        campaign_id=campaign_id,
        content=delivery_pb2.MessageContent(subject="Spring news", body_text="Hello"),
    )
    producer = AIOKafkaProducer(bootstrap_servers=system.env["KAFKA_BOOTSTRAP_SERVERS"])
    await producer.start()
    try:
        envelope = new_envelope(shop.workspace_id, requested, event_id=message_id)
        await producer.send_and_wait(
            DELIVERY_REQUESTS, envelope.SerializeToString(), key=contact_id.encode()
        )
    finally:
        await producer.stop()
    return message_id


async def listed(http: httpx.AsyncClient, shop: Shop, contact_id: str, message_id: str) -> bool:
    answer = await http.get(f"/v1/contacts/{contact_id}/messages", headers=shop.auth)
    return answer.status_code == 200 and any(
        m["message_id"] == message_id for m in answer.json()["messages"]
    )


async def seen_by_tracking(system: System, shop: Shop, contact_id: str, message_id: str) -> None:
    """A person opens the mail twice and a link scanner clicks it, as tracking reports them
    on tracking.events.v1 (delivery keeps them for the mail's story and the contact's page)."""
    opened = tracking_pb2.MessageOpened(message_id=message_id, contact_id=contact_id)
    scanned = tracking_pb2.LinkClicked(
        message_id=message_id,
        contact_id=contact_id,
        url="https://shop.example/order",
        machine_click=True,
        machine_reason="scanner",
    )
    producer = AIOKafkaProducer(bootstrap_servers=system.env["KAFKA_BOOTSTRAP_SERVERS"])
    await producer.start()
    try:
        for event in (opened, opened, scanned):
            envelope = new_envelope(shop.workspace_id, event)
            await producer.send_and_wait(
                TRACKING_EVENTS, envelope.SerializeToString(), key=contact_id.encode()
            )
    finally:
        await producer.stop()


async def tracking_counted(http: httpx.AsyncClient, shop: Shop, contact_id: str, n: int) -> bool:
    answer = await http.get(f"/v1/contacts/{contact_id}/messages", headers=shop.auth)
    m = answer.json()["messages"][0] if answer.status_code == 200 else {}
    return (
        sum(m.get(k, 0) for k in ("human_opens", "human_clicks", "machine_opens", "machine_clicks"))
        == n
    )


async def message_sent(http: httpx.AsyncClient, shop: Shop, message_id: str) -> bool:
    answer = await http.get(f"/v1/messages/{message_id}", headers=shop.auth)
    return answer.status_code == 200 and answer.json()["status"] == "sent"


async def test_a_contacts_page_shows_consent_history_a_sent_messages_outcome_and_why_in(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    someone = await contact(http, shop, "dora", first_name="Dora", vip=True, tags=["spring"])
    consents = f"/v1/contacts/{someone['id']}/consents"
    await post(
        http,
        shop,
        consents,
        {
            "purpose": "marketing",
            "status": "granted",
            "source": "form",
            "wording": "Send me the shop's news",
            "ip": "192.0.2.7",
        },
    )
    await post(http, shop, consents, {"purpose": "marketing", "status": "withdrawn"})
    # A campaign's message first (skipped: marketing was withdrawn), so that the transactional
    # one is the newest.
    campaign = await post(
        http,
        shop,
        "/v1/campaigns",
        {"name": "Spring news", "segment_ids": ["vip"], "subject": "Spring", "body_text": "Hi"},
    )
    from_campaign = await request_campaign_message(system, shop, someone["id"], campaign["id"])
    await eventually(lambda: listed(http, shop, someone["id"], from_campaign), timeout=60)
    message_id = await send_transactional(system, shop, someone["id"])
    await eventually(lambda: message_sent(http, shop, message_id), timeout=60)
    await seen_by_tracking(system, shop, someone["id"], message_id)
    await eventually(lambda: tracking_counted(http, shop, someone["id"], 3), timeout=60)
    await eventually(lambda: _equals(vip_count(http, shop), 1), timeout=60)

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    watched = watch(page)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await open_contacts(page, system, shop.owner)
    await page.get_by_role("link", name="Dora").click()
    await expect(page.locator("#contact-name")).to_have_text("Dora", timeout=WAIT_MS)
    await expect(page.locator("#contact-tags")).to_have_text("spring")
    facts = page.locator("#contact-profile .facts")
    await expect(facts.locator("dt")).to_contain_text(["E-mail", "VIP"])
    await expect(facts.locator("dd").first).to_have_text(someone["email"])
    await expect(page.locator("#consent-current")).to_contain_text(
        "marketing: withdrawn", timeout=WAIT_MS
    )
    history = page.locator("#consent-history .consent-record")
    await expect(history).to_have_count(2)
    await expect(history.nth(0)).to_contain_text("marketing: withdrawn")
    await expect(history.nth(1)).to_contain_text("marketing: granted")
    await expect(history.nth(1)).to_contain_text("Send me the shop's news")
    await expect(history.nth(1)).to_contain_text("192.0.2.7")
    # The messages come from GET /v1/contacts/{id}/messages (the export has no counts):
    # the outcome, and what tracking saw, people apart from machines.
    sent = page.locator(f'#contact-messages [data-message-id="{message_id}"]')
    await expect(sent.locator(".outcome")).to_have_text("sent", timeout=WAIT_MS)
    await expect(sent.locator(".tracking")).to_have_text(
        "2 opens, 0 clicks by people · 0 opens, 1 click by machines", timeout=WAIT_MS
    )
    await expect(sent.locator(".origin")).to_have_text("transactional")
    # A campaign's message names the campaign (GET /v1/campaigns/{id}, once for the page).
    by_campaign = page.locator(f'#contact-messages [data-message-id="{from_campaign}"] .origin')
    await expect(by_campaign).to_have_text("campaign “Spring news”", timeout=WAIT_MS)
    assert await by_campaign.get_attribute("href") == f"#/campaigns/{campaign['id']}"
    assert sum(url.endswith(f"/v1/campaigns/{campaign['id']}") for url in requested) == 1
    await expect(page.locator("#contact-messages-card")).not_to_contain_text("null")
    assert any(f"/v1/contacts/{someone['id']}/messages?" in url for url in requested)
    vip = page.locator('#contact-segments [data-segment-id="vip"]')
    await expect(vip.locator(".membership")).to_have_text("in", timeout=WAIT_MS)
    await vip.get_by_role("button", name="Why in?").click()
    await expect(vip.locator(".rule-node").first).to_contain_text("✓ holds", timeout=WAIT_MS)
    # And a segment it is not in (a lifecycle one: it has bought nothing) says why not.
    out = page.locator("#contact-segments .segment-row.out").first
    await expect(out.locator(".membership")).to_have_text("not in")
    await out.get_by_role("button", name="Why not?").click()
    await expect(out.locator(".rule-node").first).to_contain_text("✗ fails", timeout=WAIT_MS)
    # Back to the list it came from.
    await page.locator("#back-to-list").click()
    await expect(rows(page)).to_have_count(1, timeout=WAIT_MS)
    assert watched.exceptions == [] and watched.errors == []
    await context.close()


async def test_names_and_texts_with_markup_are_shown_as_text_on_the_contacts_pages(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    someone = await contact(http, shop, "x", first_name=SCRIPT, last_name=IMG, tags=["spring"])
    await post(
        http,
        shop,
        f"/v1/contacts/{someone['id']}/consents",
        {"purpose": "marketing", "status": "granted", "wording": IMG, "actor": SCRIPT},
    )
    await post(
        http, shop, "/v1/segments", {"name": f"Seg {SCRIPT}{IMG}", "rule": {"segment": "vip"}}
    )
    for width in (360, 1280):
        context = await browser.new_context(viewport={"width": width, "height": 800})
        page = await context.new_page()
        watched = watch(page)
        await open_contacts(page, system, shop.owner)
        await expect(rows(page).first.locator(".contact-link")).to_have_text(
            f"{SCRIPT} {IMG}", timeout=WAIT_MS
        )
        await expect(page.locator("#contacts-segment option").last).to_have_text(
            f"Seg {SCRIPT}{IMG}"
        )
        await rows(page).first.locator(".contact-link").click()
        await expect(page.locator("#contact-name")).to_have_text(f"{SCRIPT} {IMG}", timeout=WAIT_MS)
        await expect(page.locator("#consent-history")).to_contain_text(IMG, timeout=WAIT_MS)
        await expect(page.locator("#consent-history")).to_contain_text(SCRIPT)
        await expect(page.locator("#contact-segments")).to_contain_text(
            f"Seg {SCRIPT}{IMG}", timeout=WAIT_MS
        )
        assert await page.evaluate("window.__xss") is None
        assert await page.locator("img").count() == 0
        assert await page.locator("script").count() == 1
        assert watched.csp_violations() == [] and watched.exceptions == []
        assert await page.evaluate("document.documentElement.scrollWidth") <= width
        await context.close()


async def test_a_viewer_sees_contacts_but_cannot_tag_them(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    someone = await contact(http, shop, "v", first_name="Vera", tags=["spring"])
    viewer = await new_manager(http, shop.api_key, "viewer")
    context = await browser.new_context()
    page = await context.new_page()
    await open_contacts(page, system, viewer)
    await expect(rows(page)).to_have_count(1, timeout=WAIT_MS)
    await expect(page.locator("#viewer-note")).to_be_visible()
    await expect(page.locator("#bulk-tags")).to_have_count(0)
    await expect(page.locator("#select-all")).to_have_count(0)
    # The gateway refuses it anyway, CSRF token and all.
    status = await page.evaluate(
        """async () => {
            const token = (await (await fetch('/v1/session')).json()).csrf_token;
            const r = await fetch('/v1/contacts/tags:bulk', {method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': token},
                body: JSON.stringify({add: ['hacked']})});
            return r.status;
        }"""
    )
    assert status == 403
    assert await all_with_tag(http, shop, "hacked") == set()
    assert someone["id"] in await all_with_tag(http, shop, "spring")
    await context.close()


async def listed_messages(http: httpx.AsyncClient, shop: Shop, contact_id: str) -> set[str]:
    answer = await http.get(
        f"/v1/contacts/{contact_id}/messages", params={"page_size": 100}, headers=shop.auth
    )
    assert answer.status_code == 200, answer.text
    return {m["message_id"] for m in answer.json()["messages"]}


async def test_a_viewer_reads_a_contacts_messages_a_page_at_a_time_with_more(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    """More than a page (20) of messages: "More" appends the next page, every message once,
    and goes away at the end. A viewer may read them (a GET)."""
    shop = await new_shop(system, http)
    someone = await contact(http, shop, "m", first_name="Mo")
    sent = {await send_transactional(system, shop, someone["id"]) for _ in range(23)}

    async def all_claimed() -> bool:
        return await listed_messages(http, shop, someone["id"]) == sent

    await eventually(all_claimed, timeout=60)
    viewer = await new_manager(http, shop.api_key, "viewer")
    context = await browser.new_context()
    page = await context.new_page()
    watched = watch(page)
    await open_contacts(page, system, viewer)
    await page.get_by_role("link", name="Mo").click()
    shown = page.locator("#contact-messages .message")
    await expect(shown).to_have_count(20, timeout=WAIT_MS)
    more = page.locator("#contact-messages-more")
    await more.click()
    await expect(shown).to_have_count(23, timeout=WAIT_MS)
    await expect(more).to_have_count(0)
    ids = [await shown.nth(i).get_attribute("data-message-id") for i in range(23)]
    assert len(set(ids)) == 23 and set(ids) == sent
    assert watched.exceptions == [] and watched.errors == []
    await context.close()
