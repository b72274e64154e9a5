"""The manager's flows of seeds 000 and 001, each walked in one test in a real Chromium over
the whole system, as the seed tells them (issue 18). What the manager does goes through the
console; what the platform does (customers signing up and ordering) and what only the
platform can see (the mails in the SMTP sink, who holds a tag) go through the API.

- Seed 000: a new campaign to three segments whose members overlap, a message of four lines
  (a fifth brings the "at most 4 lines" warning, removing it takes it away), the audience
  with the overlap counted once, the send, and the report filling in (every mail delivered,
  a person's open through the pixel). One mail per contact, from the no-reply address with
  the shop's name, the manager's address as Reply-To.
- Seed 001: the contacts filtered by a tag, all matching selected, a tag added to them all
  (exactly those hold it), a campaign to that tag, the consent warning with its number
  ("only consented" off, as the seed's note describes), confirmed before the send, and mail
  only for the tagged.

Fixtures and helpers come from tests/e2e/test_console.py and the SMTP sink's readers from
tests/e2e/test_campaign_seeds.py.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from email.message import EmailMessage
from email.utils import parseaddr

import httpx
from playwright.async_api import Browser, Page, expect

from tests.e2e.conftest import System
from tests.e2e.test_campaign_seeds import (
    BROWSER,
    FOUR_LINES,
    ago,
    campaign_mails,
    contact,
    event,
    human_wait,
    manager,
    sizes_reach,
    to,
    tracked,
)
from tests.e2e.test_console import (
    WAIT_MS,
    browser,
    fresh_address_throttle,
    http,
    new_shop,
    pytestmark,
    sign_in,
    watch,
)
from tests.e2e.test_console_contacts import all_with_tag
from tests.support import eventually

__all__ = ["browser", "fresh_address_throttle", "http", "pytestmark"]

SHOP = "Bottega Ada"
SENDER = "no-reply@nudge.localhost"  # services/delivery/config.py: the platform's address
REPORT_MS = 90_000  # the report page reads the report every 5 s; deliveries come first


async def signed_in(system: System, browser: Browser, email: str) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await sign_in(page, system, email)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=WAIT_MS)
    return page


async def new_campaign(page: Page, name: str, subject: str) -> None:
    await page.get_by_role("link", name="Campaigns").click()
    await page.locator("#new-campaign").click()
    await page.fill("#campaign-name", name)
    await page.fill("#campaign-subject", subject)


async def mails_once_sent(
    system: System, api: httpx.AsyncClient, campaign_id: str, subject: str, count: int
) -> list[EmailMessage]:
    """The campaign's mails once it is sent and delivered ``count``: then no more can come."""

    async def finished() -> bool:
        body = (await api.get(f"/v1/campaigns/{campaign_id}/report")).json()
        return bool(body["status"] == "sent" and body["delivered"] == count)

    await eventually(finished, timeout=90, interval=0.5)
    return campaign_mails(system, subject)


def campaign_id_of(page: Page) -> str:
    found = re.search(r"#/campaigns/([^/?]+)$", page.url)
    assert found, page.url
    return found.group(1)


async def test_seed_000_three_overlapping_segments_four_lines_one_mail_each_and_the_report(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http, name=SHOP)
    run = uuid.uuid4().hex[:8]
    addr = {n: f"{n}-{run}@example.com" for n in ("ann", "bob", "vic", "joe")}
    async with manager(system, shop.api_key) as api:
        # Ann signed up last week and never ordered: activation.
        await contact(api, addr["ann"], first_name="Ann", consents=["targeted_messages"])
        await event(api, addr["ann"], "signed_up", ago(7))
        # Bob last ordered four months ago: reactivation.
        await contact(api, addr["bob"], first_name="Bob", consents=["targeted_messages"])
        await event(api, addr["bob"], "order_placed", ago(120), order_id=f"o-{run}-bob")
        # Vic, starred, last ordered four months ago: in VIP and in reactivation.
        await contact(api, addr["vic"], vip=True, consents=["targeted_messages"])
        await event(api, addr["vic"], "order_placed", ago(120), order_id=f"o-{run}-vic")
        # Joe ordered yesterday: in none of the three.
        await contact(api, addr["joe"], consents=["targeted_messages"])
        await event(api, addr["joe"], "order_placed", ago(1), order_id=f"o-{run}-joe")
        await sizes_reach(api, {"activation": 1, "reactivation": 2, "vip": 1})

        page = await signed_in(system, browser, shop.owner)
        watched = watch(page)
        subject = f"Bottega Ada: three new producers ({run})"
        await new_campaign(page, "Thursday's producers", subject)
        await page.fill("#campaign-reply-to", shop.owner)
        # Markdown: a text part and an HTML part (where the open pixel goes).
        await page.select_option("#campaign-format", "markdown")
        await page.fill("#campaign-markdown", FOUR_LINES)
        for segment in ("activation", "reactivation", "vip"):
            await page.locator(f'#segment_ids-choices [data-segment-id="{segment}"]').check()

        # The numbers: 3 distinct members though the segments hold 1 + 2 + 1; Vic is in two
        # of them and is mailed once.
        await expect(page.locator("#audience-members")).to_have_text("3", timeout=WAIT_MS)
        await expect(page.locator("#audience-eligible")).to_have_text("3")
        sources = page.locator("#audience-sources")
        await expect(sources.locator('[data-source="activation"]')).to_contain_text(
            "1 members, 0 also in another chosen segment"
        )
        await expect(sources.locator('[data-source="reactivation"]')).to_contain_text(
            "2 members, 1 also in another chosen segment (mailed once)"
        )
        await expect(sources.locator('[data-source="vip"]')).to_contain_text(
            "1 members, 1 also in another chosen segment (mailed once)"
        )

        # Four lines: no warning. A fifth brings "more than 4 lines"; removing it, it goes.
        lines = page.locator('#warnings [data-code="too_many_lines"]')
        await expect(page.locator("#no-warnings")).to_be_visible(timeout=WAIT_MS)
        await page.fill("#campaign-markdown", f"{FOUR_LINES}\nAnd a fifth line.")
        await expect(lines).to_contain_text("5 lines of text", timeout=WAIT_MS)
        await page.fill("#campaign-markdown", FOUR_LINES)
        await expect(page.locator("#no-warnings")).to_be_visible(timeout=WAIT_MS)
        # Sent from the platform's no-reply address, under the shop's name.
        await expect(page.locator("#preview-from")).to_contain_text(SHOP, timeout=WAIT_MS)
        await expect(page.locator("#consent-warning")).to_have_count(0)
        campaign_id = campaign_id_of(page)

        await page.locator("#send").click()
        await expect(page.locator("#campaign-status")).to_have_text(
            re.compile("^(sending|sent)$"), timeout=WAIT_MS
        )
        # The report fills in: every one of the audience delivered.
        await expect(page.locator("#report-audience")).to_have_text("3", timeout=REPORT_MS)
        await expect(page.locator("#report-delivered")).to_have_text(
            re.compile(r"^3 \("), timeout=REPORT_MS
        )
        mails = await mails_once_sent(system, api, campaign_id, subject, 3)

        # Ann reads it (a person: a browser, seconds after the mail): the report shows her.
        ann = next(m for m in mails if to(m) == addr["ann"])
        pixel, _ = tracked(ann)
        await human_wait(ann)
        async with httpx.AsyncClient(headers={"User-Agent": BROWSER}, timeout=30) as reader:
            assert (await reader.get(pixel)).status_code == 200
        await expect(page.locator("#report-opened")).to_have_text(
            re.compile(r"^1 \("), timeout=REPORT_MS
        )
        await expect(
            page.locator('#chart-engagement [data-series="opened-human"]')
        ).to_have_attribute("data-value", "1")
        # The send is recorded as the manager's, not as the gateway's: the page says "by you".
        me = await page.evaluate("async () => (await (await fetch('/v1/session')).json()).manager")
        sent_by = page.locator(".transitions .transition").first
        await expect(sent_by).to_contain_text("by you", timeout=WAIT_MS)
        moves = (await api.get(f"/v1/campaigns/{campaign_id}/transitions")).json()
        await page.context.close()
    assert moves["transitions"][0]["actor"] == f"manager:{me['id']}", moves

    mails = campaign_mails(system, subject)
    assert Counter(to(m) for m in mails) == Counter(
        {addr["ann"]: 1, addr["bob"]: 1, addr["vic"]: 1}
    ), "one mail each, Vic too (two chosen segments); none to Joe"
    for mail in mails:
        assert parseaddr(str(mail["From"])) == (SHOP, SENDER), mail["From"]
        assert parseaddr(str(mail["Reply-To"]))[1] == shop.owner, mail["Reply-To"]
    assert watched.exceptions == [] and watched.csp_violations() == []


async def tagged(api: httpx.AsyncClient, tag: str, count: int) -> None:
    """Awaits segmentation (which campaigns ask for a tag's contacts) seeing ``count``
    contacts with ``tag``: the contacts service tells it through Kafka."""

    async def seen() -> bool:
        answer = await api.post("/v1/segments:count", json={"rule": {"tag": tag}})
        assert answer.status_code == 200, answer.text
        return bool(answer.json()["count"] == count)

    await eventually(seen, timeout=60, interval=0.3)


async def test_seed_001_tag_all_matching_then_a_campaign_to_the_tag_confirmed_for_consent(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http, name=SHOP)
    run = uuid.uuid4().hex[:8]
    async with manager(system, shop.api_key) as api:
        # The seed's note: without "only consented", the manager is warned before sending.
        settings = await api.patch(
            "/v1/workspace/settings", json={"consent_required_for_campaigns": False}
        )
        assert settings.status_code == 200, settings.text
        yes = ["targeted_messages"]
        # Three customers of the market; the third gave no consent to targeted messages.
        market = {
            await contact(api, email, tags=["market"], consents=consents): email
            for email, consents in (
                (f"m1-{run}@example.com", yes),
                (f"m2-{run}@example.com", yes),
                (f"m3-{run}@example.com", []),
            )
        }
        await contact(api, f"fair-{run}@example.com", tags=["fair"], consents=yes)
        await contact(api, f"none-{run}@example.com", consents=yes)

        page = await signed_in(system, browser, shop.owner)
        watched = watch(page)
        # Contacts: filter by the tag, select all matching, add a tag to them all.
        await page.get_by_role("link", name="Contacts").click()
        await page.fill("#contacts-tag", "market")
        await page.locator("#contacts-apply").click()
        await expect(page.locator("#contact-rows .contact")).to_have_count(3, timeout=WAIT_MS)
        await page.locator("#select-all").check()
        await page.fill("#bulk-tag", "thursday")
        await page.locator("#bulk-add").click()
        await expect(page.locator("#bulk-result")).to_contain_text(
            "3 matching contacts now have the tag “thursday”", timeout=WAIT_MS
        )
        assert await all_with_tag(api, shop, "thursday") == set(market), "those three only"
        await tagged(api, "thursday", 3)

        # A campaign to the tag's audience.
        subject = f"Bottega Ada: Thursday's market ({run})"
        await new_campaign(page, "Thursday's market", subject)
        await page.fill("#campaign-text", "See you on Thursday at the market.\nBottega Ada")
        await page.fill("#campaign-tags", "thursday")
        await expect(page.locator("#audience-members")).to_have_text("3", timeout=WAIT_MS)
        await expect(page.locator("#audience-eligible")).to_have_text("3")
        await expect(page.locator("#consent-warning")).to_have_text(
            "1 contact of this audience has not consented to targeted messages."
        )
        await expect(page.locator('label[for="confirm-consent"]')).to_contain_text(
            "I confirm sending to the 1 contact who has not consented"
        )
        campaign_id = campaign_id_of(page)
        # Not without the confirmation.
        await page.locator("#send").click()
        await expect(page.locator("#send-error")).to_contain_text(
            "Confirm first: 1 contact has not consented.", timeout=WAIT_MS
        )
        draft = (await api.get(f"/v1/campaigns/{campaign_id}")).json()
        assert draft["status"] == "draft" and draft["tags_any"] == ["thursday"], draft
        await page.locator("#confirm-consent").check()
        await page.locator("#send").click()
        await expect(page.locator("#campaign-status")).to_have_text(
            re.compile("^(sending|sent)$"), timeout=WAIT_MS
        )
        await expect(page.locator("#report-delivered")).to_have_text(
            re.compile(r"^3 \("), timeout=REPORT_MS
        )
        mails = await mails_once_sent(system, api, campaign_id, subject, 3)
        await page.context.close()

    assert Counter(to(m) for m in mails) == Counter(market.values()), (
        "the three tagged, the one without consent too (confirmed); not the others"
    )
    assert watched.exceptions == [] and watched.csp_violations() == []
