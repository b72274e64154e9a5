"""The console's Campaigns pages (issue 18) in a real Chromium over the whole system: a
manager composes a campaign and sees the content warnings come and go as they type, reads
the audience (seed 001's consent warning, confirmed by its number), sends, and follows the
report with its charts and the call list of seed 003 (with its CSV); a campaign scheduled
from the page and cancelled; a viewer who can read but not send; and what managers typed
(names, subjects, segment names) shown as text, never run, at 360 px and 1280 px.

Fixtures and helpers come from tests/e2e/test_console.py (the browser, a shop with an owner).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from tests.e2e.conftest import System
from tests.e2e.test_campaign_seeds import BROWSER, campaign_mails, human_wait, to, tracked
from tests.e2e.test_console import (
    IMG,
    SCRIPT,
    WAIT_MS,
    Shop,
    browser,
    fresh_address_throttle,
    http,
    new_manager,
    new_shop,
    post,
    pytestmark,
    sign_in,
    watch,
)
from tests.support import eventually, unique

__all__ = ["browser", "fresh_address_throttle", "http", "pytestmark"]

SHOP = "Bottega Ada"
# Not the subject of tests/e2e/test_campaign_seeds.py's campaign: the SMTP sink is the whole
# session's, and mails are told apart by subject.
SUBJECT = "Bottega Ada: new producers in the console"
FIVE_LINES = "Hello {{ contact.shoe_size }},\none\ntwo\nthree\nfour"
MARKDOWN = (
    'Hello {{ contact.first_name | default("there") }},\n'
    "three new producers join us this Thursday.\n"
    "[See what they bring](https://shop.example/producers)."
)


async def vips(
    http: httpx.AsyncClient, shop: Shop, consented: int, not_consented: int
) -> list[str]:
    """VIP contacts, some without consent to targeted messages; awaits segmentation."""
    emails = []
    for i in range(consented + not_consented):
        email = f"{unique('vip')}@example.com"
        consents = ["targeted_messages"] if i < consented else []
        await post(http, shop, "/v1/contacts", {"email": email, "vip": True, "consents": consents})
        emails.append(email)

    async def counted() -> bool:
        answer = await http.get("/v1/segments/vip/count", headers=shop.auth)
        return answer.status_code == 200 and answer.json()["count"] == len(emails)

    await eventually(counted, timeout=60)
    return emails


async def consent_not_required(http: httpx.AsyncClient, shop: Shop) -> None:
    answer = await http.patch(
        "/v1/workspace/settings",
        json={"consent_required_for_campaigns": False},
        headers=shop.auth,
    )
    assert answer.status_code == 200, answer.text


async def signed_in_page(system: System, browser: Browser, email: str, width: int = 1280) -> Page:
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    await sign_in(page, system, email)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=WAIT_MS)
    return page


def warning(page: Page, code: str) -> Any:
    return page.locator(f'#warnings [data-code="{code}"]')


async def test_compose_warnings_audience_confirmation_send_and_report(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http, name=SHOP)
    await consent_not_required(http, shop)
    emails = await vips(http, shop, consented=2, not_consented=1)
    zelda = await post(
        http,
        shop,
        "/v1/contacts",
        {"email": f"{unique('zelda')}@example.com", "first_name": "Zelda"},
    )
    page = await signed_in_page(system, browser, shop.owner)
    watched = watch(page)

    await page.get_by_role("link", name="Campaigns").click()
    await page.locator("#new-campaign").click()
    await page.fill("#campaign-name", "Thursday's producers")
    await page.fill("#campaign-subject", "Three new producers")
    await page.fill("#campaign-text", FIVE_LINES)
    await page.locator('#segment_ids-choices [data-segment-id="vip"]').check()
    # Saved as typed; the server's warnings appear: too long, the shop not named, a field
    # the mail will not have.
    await expect(warning(page, "too_many_lines")).to_be_visible(timeout=WAIT_MS)
    await expect(warning(page, "subject_without_workspace_name")).to_be_visible()
    await expect(warning(page, "broken_personalisation")).to_be_visible()
    assert "/campaigns/" in page.url and not page.url.endswith("/new")
    # A template that does not parse is refused: its error stands next to its field.
    await page.fill("#campaign-subject", "Bottega Ada: {{ oops")
    await expect(page.locator("#campaign-subject-error")).not_to_be_empty(timeout=WAIT_MS)
    # Fixed: Markdown (a text and an HTML part), four lines, the shop in the subject.
    await page.fill("#campaign-subject", SUBJECT)
    await page.select_option("#campaign-format", "markdown")
    await page.fill("#campaign-markdown", MARKDOWN)
    await expect(page.locator("#no-warnings")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#campaign-subject-error")).to_be_empty()

    # The preview for a chosen contact.
    await expect(page.locator("#preview-subject")).to_have_text(SUBJECT, timeout=WAIT_MS)
    await expect(page.locator("#preview-text")).to_contain_text("Hello there,")
    # Any contact, found by name (the list holds only the first ones): the preview greets her.
    await page.fill("#preview-search", "zeld")
    options = page.locator("#preview-contact option")
    await expect(options).to_have_count(2, timeout=WAIT_MS)  # the sample, and Zelda alone
    await page.select_option("#preview-contact", zelda["id"])
    await expect(page.locator("#preview-text")).to_contain_text("Hello Zelda,", timeout=WAIT_MS)
    assert await options.nth(1).get_attribute("value") == zelda["id"]

    # Seed 001: one of the three has not consented; sending needs that number confirmed.
    await expect(page.locator("#audience-members")).to_have_text("3", timeout=WAIT_MS)
    await expect(page.locator("#audience-eligible")).to_have_text("3")
    await expect(page.locator("#consent-warning")).to_have_text(
        "1 contact of this audience has not consented to targeted messages."
    )
    await page.locator("#send").click()
    await expect(page.locator("#send-error")).to_contain_text("Confirm first", timeout=WAIT_MS)
    assert campaign_mails(system, SUBJECT) == []
    await page.locator("#confirm-consent").check()
    await page.locator("#send").click()

    await expect(page.locator("#campaign-status")).to_have_text(
        re.compile("^(sending|sent)$"), timeout=WAIT_MS
    )

    async def three_mails() -> list[Any] | None:
        mails = campaign_mails(system, SUBJECT)
        return mails if len(mails) >= 3 else None

    mails = await eventually(three_mails, timeout=90, interval=0.3)
    assert sorted(to(m) for m in mails) == sorted(emails)
    await expect(page.locator("#report-delivered")).to_contain_text("3", timeout=60_000)
    await expect(page.locator('#chart-delivery [data-series="delivered"]')).to_have_attribute(
        "data-value", "3", timeout=WAIT_MS
    )

    # Seed 003: one reader opens (a person, later than a scanner would): the charts count a
    # person, and the reader is on the call list and in its CSV.
    reader_mail = mails[0]
    pixel, _ = tracked(reader_mail)
    await human_wait(reader_mail)
    async with httpx.AsyncClient(headers={"User-Agent": BROWSER}, timeout=30) as reader:
        assert (await reader.get(pixel)).status_code == 200
    await expect(page.locator('#chart-engagement [data-series="opened-human"]')).to_have_attribute(
        "data-value", "1", timeout=60_000
    )
    await expect(
        page.locator('#chart-engagement [data-series="opened-machine"]')
    ).to_have_attribute("data-value", "0")
    # Over time too (GET .../timeline): the last point counts them, people and machines apart.
    timeline = page.locator("#chart-timeline")
    await expect(timeline.locator('[data-series="opened_human"]')).to_have_attribute(
        "data-last", "1", timeout=WAIT_MS
    )
    await expect(timeline.locator('[data-series="delivered"]')).to_have_attribute("data-last", "3")
    await expect(timeline.locator('[data-series="opened_machine"]')).to_have_attribute(
        "data-last", "0"
    )
    await expect(page.locator("#call-list .email")).to_have_text([to(reader_mail)], timeout=WAIT_MS)
    href = await page.locator("#call-list-csv").get_attribute("href")
    csv = await page.evaluate("async (href) => (await fetch(href)).text()", href)
    assert csv.startswith("contact_id,email") and to(reader_mail) in csv

    # A second campaign to them within the frequency cap (1 in 30 days): the warning says
    # how many the cap leaves out.
    second = await post(
        http,
        shop,
        "/v1/campaigns",
        {"name": "Again", "segment_ids": ["vip"], "subject": "Bottega Ada", "body_text": "Hi"},
    )
    await page.goto(f"{system.gateway}/console#/campaigns/{second['id']}")
    await expect(warning(page, "frequency_cap")).to_contain_text(
        "3 of this audience", timeout=WAIT_MS
    )
    assert watched.exceptions == [] and watched.csp_violations() == []
    await page.context.close()


async def test_a_campaign_scheduled_from_the_page_and_cancelled(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http, name=SHOP)
    await vips(http, shop, consented=1, not_consented=0)
    created = await post(
        http,
        shop,
        "/v1/campaigns",
        {
            "name": "Later",
            "segment_ids": ["vip"],
            "subject": "Bottega Ada later",
            "body_text": "Hi",
        },
    )
    zone = await http.patch(
        "/v1/campaign-settings", json={"time_zone": "Europe/Rome"}, headers=shop.auth
    )
    assert zone.status_code == 200, zone.text
    page = await signed_in_page(system, browser, shop.owner)
    await page.goto(f"{system.gateway}/console#/campaigns/{created['id']}")
    await expect(page.locator("#audience-eligible")).to_have_text("1", timeout=WAIT_MS)
    await expect(page.locator("#sending")).to_contain_text("Europe/Rome")
    await page.locator("#when-later").check()
    # The server's refusal stands next to its field.
    await page.fill("#send-at", "2099-06-01T09:30")
    await page.locator("#send").click()
    await expect(page.locator('#sending [data-error-for="send_at"]')).to_contain_text(
        "more than a year away", timeout=WAIT_MS
    )
    day = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%d")
    await page.fill("#send-at", f"{day}T09:30")
    await page.locator("#send").click()
    await expect(page.locator("#campaign-status")).to_have_text("scheduled", timeout=WAIT_MS)
    campaign = (await http.get(f"/v1/campaigns/{created['id']}", headers=shop.auth)).json()
    assert campaign["status"] == "scheduled"
    # The wall-clock time is read in the workspace's time zone.
    rome = datetime.fromisoformat(f"{day}T09:30").replace(tzinfo=ZoneInfo("Europe/Rome"))
    assert datetime.fromisoformat(campaign["scheduled_at"]) == rome, campaign

    page.on("dialog", lambda dialog: dialog.accept())
    await page.fill("#move-note", "Wrong date")
    await page.locator("#campaign-cancel").click()
    await expect(page.locator("#campaign-status")).to_have_text("cancelled", timeout=WAIT_MS)
    await expect(page.locator("#history")).to_contain_text("Wrong date", timeout=WAIT_MS)
    await page.context.close()


async def test_a_viewer_reads_campaigns_but_cannot_send(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http, name=SHOP)
    viewer = await new_manager(http, shop.api_key, "viewer")
    created = await post(
        http,
        shop,
        "/v1/campaigns",
        {"name": "Draft", "segment_ids": ["vip"], "subject": "Bottega Ada", "body_text": "Hi"},
    )
    page = await signed_in_page(system, browser, viewer)
    await page.goto(f"{system.gateway}/console#/campaigns")
    await expect(page.locator(".campaign-row .row-title")).to_have_text("Draft", timeout=WAIT_MS)
    await expect(page.locator("#new-campaign")).to_have_count(0)
    await page.locator(".campaign-row .row-title").click()
    await expect(page.locator("#campaign-status")).to_have_text("draft", timeout=WAIT_MS)
    for control in ("#send", "#compose", "#test-send", "#campaign-cancel"):
        await expect(page.locator(control)).to_have_count(0)
    # And the gateway refuses it anyway, token or not.
    status = await page.evaluate(
        """async (id) => {
            const token = (await (await fetch('/v1/session')).json()).csrf_token;
            const r = await fetch(`/v1/campaigns/${id}/send`, {method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': token},
                body: '{}'});
            return r.status;
        }""",
        created["id"],
    )
    assert status == 403
    campaign = (await http.get(f"/v1/campaigns/{created['id']}", headers=shop.auth)).json()
    assert campaign["status"] == "draft"
    await page.context.close()


async def test_the_campaign_list_goes_on_with_more_each_campaign_once_newest_first(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http, name=SHOP)
    made = [
        await post(
            http,
            shop,
            "/v1/campaigns",
            {"name": f"Week {i}", "segment_ids": ["vip"], "subject": SHOP, "body_text": "Hi"},
        )
        for i in range(27)
    ]
    page = await signed_in_page(system, browser, shop.owner)
    await page.goto(f"{system.gateway}/console#/campaigns")
    rows = page.locator(".campaign-row")
    await expect(rows).to_have_count(25, timeout=WAIT_MS)
    await page.locator("#more-campaigns").click()
    await expect(rows).to_have_count(27, timeout=WAIT_MS)
    await expect(page.locator("#more-campaigns")).to_be_hidden()
    shown = [await row.get_attribute("data-campaign-id") for row in await rows.all()]
    assert shown == [c["id"] for c in reversed(made)], "each once, newest first"
    await page.context.close()


@pytest.mark.parametrize("width", [360, 1280])
async def test_campaign_names_subjects_and_segment_names_are_shown_as_text(
    system: System, http: httpx.AsyncClient, browser: Browser, width: int
) -> None:
    shop = await new_shop(system, http, name=SHOP)
    segment = await post(
        http, shop, "/v1/segments", {"name": f"VIPs {SCRIPT}{IMG}", "rule": {"segment": "vip"}}
    )
    created = await post(
        http,
        shop,
        "/v1/campaigns",
        {
            "name": f"Spring {SCRIPT}",
            "segment_ids": [segment["id"]],
            "subject": f"Bottega Ada {IMG}",
            "body_text": f"Hi {SCRIPT}",
        },
    )
    page = await signed_in_page(system, browser, shop.owner, width)
    watched = watch(page)
    await page.goto(f"{system.gateway}/console#/campaigns")
    await expect(page.locator(".campaign-row .row-title")).to_have_text(
        f"Spring {SCRIPT}", timeout=WAIT_MS
    )
    await expect(page.locator(".campaign-row .subject")).to_have_text(f"Bottega Ada {IMG}")
    assert await page.evaluate("document.documentElement.scrollWidth") <= width

    await page.goto(f"{system.gateway}/console#/campaigns/{created['id']}")
    choice = page.locator(f'#segment_ids-choices [data-segment-id="{segment["id"]}"]')
    await expect(choice).to_be_checked(timeout=WAIT_MS)
    await expect(page.locator("#segment_ids-choices .segment-name", has_text="VIPs")).to_have_text(
        f"VIPs {SCRIPT}{IMG}"
    )
    await expect(page.locator("#preview-subject")).to_have_text(
        f"Bottega Ada {IMG}", timeout=WAIT_MS
    )
    await expect(page.locator("#preview-text")).to_contain_text(SCRIPT)
    await expect(page.locator("#audience-members")).to_be_visible(timeout=WAIT_MS)
    assert await page.evaluate("window.__xss") is None
    assert await page.locator("img").count() == 0
    assert await page.locator("script").count() == 1
    assert watched.csp_violations() == [] and watched.exceptions == []
    assert await page.evaluate("document.documentElement.scrollWidth") <= width
    await page.context.close()
