"""The web console's accessibility (issue 18): axe-core, the rules of WCAG 2.0 and 2.1 at
levels A and AA, finds no serious or critical violation on any console page, at 1280 px and
at 360 px, over a shop with data (contacts with tags and consent, a custom segment, a draft
and a sent campaign, a published automation with a run), so that lists, tables, charts and
forms are there. Each page is audited once loaded (no "Loading…" or "…" left), and none may
show a missing value as the word "null".

axe-core comes bundled with axe-playwright-python and is injected through ``page.evaluate``
(a script run by the browser's debugging protocol, which the console's strict CSP does not
block). A failure prints axe's readable report, one block per rule and element.

With NUDGE_CONSOLE_SCREENSHOTS=docs/console the same visits write the README's screenshots,
one per page and width (``campaign-report-desktop.png``, ``settings-mobile.png``...).

Fixtures and helpers come from tests/e2e/test_console.py (the browser, a shop with an owner).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from axe_playwright_python.async_playwright import Axe
from axe_playwright_python.base import AxeResults
from playwright.async_api import Browser, Page, expect

from tests.e2e.conftest import System
from tests.e2e.test_console import (
    PASSWORD,
    WAIT_MS,
    Shop,
    browser,
    fresh_address_throttle,
    http,
    new_shop,
    post,
    pytestmark,
    screenshot,
    sign_in,
)
from tests.support import eventually, unique

__all__ = ["browser", "fresh_address_throttle", "http", "pytestmark"]

WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
BLOCKING = {"serious", "critical"}
# A page is loaded when nothing in <main> still says it is: "Loading…", a count of "…",
# "Saving…" (the placeholders the pages show while their requests are out).
LOADED = """() => {
    const main = document.querySelector('main');
    if (!main) return false;
    return ![...main.querySelectorAll('*')].some((el) => el.children.length === 0
        && /^(Loading…|…|Saving…)$/.test(el.textContent.trim()));
}"""
# What a page shows of a value that was never there: a DOM call given null or undefined
# (replaceChildren and append turn them into the words, unlike dom.js's h()).
STRAY_WORDS = """() => {
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    const found = [];
    while (walker.nextNode()) {
        const text = walker.currentNode.textContent;
        if (/^(null|undefined)+$/.test(text.trim())) found.push(text);
    }
    return found;
}"""


@dataclass
class Seeded:
    """What the pages show: one contact's id, a draft, a sent campaign, an automation."""

    contact_id: str
    draft_id: str
    sent_id: str
    workflow_id: str


async def seed(http: httpx.AsyncClient, shop: Shop) -> Seeded:
    """Contacts with tags and consent (two VIPs, one without consent), a custom segment, a
    sent campaign and a draft, the abandoned-cart automation published."""
    people = [
        {"first_name": "Adalgisa", "last_name": "Rossi", "tags": ["spring", "newsletter"]},
        {"first_name": "Bruno", "tags": ["spring"], "vip": True},
        {"first_name": "Carla", "tags": ["wholesale"], "vip": True, "consents": []},
    ]
    contacts = []
    for person in people:
        body = {"email": f"{unique('a11y')}@example.com", "consents": ["targeted_messages"]}
        contacts.append(await post(http, shop, "/v1/contacts", {**body, **person}))
    await post(http, shop, "/v1/segments", {"name": "Spring VIPs", "rule": {"segment": "vip"}})

    async def counted() -> bool:
        answer = await http.get("/v1/segments/vip/count", headers=shop.auth)
        return answer.status_code == 200 and answer.json()["count"] == 2

    await eventually(counted, timeout=60)
    campaign = {
        "segment_ids": ["vip"],
        "body_text": 'Hello {{ contact.first_name | default("there") }}',
    }
    sent = await post(
        http,
        shop,
        "/v1/campaigns",
        {**campaign, "name": "Thursday's producers", "subject": "Bottega Ada: new producers"},
    )
    await post(http, shop, f"/v1/campaigns/{sent['id']}/send", {"confirm_not_consented": 1})
    draft = await post(
        http,
        shop,
        "/v1/campaigns",
        {
            **campaign,
            "name": "Summer sale",
            "subject": "Bottega Ada: summer",
            "tags_any": ["spring"],
        },
    )
    workflow = await post(
        http, shop, "/v1/workflows", {"template_id": "abandoned_cart", "name": "Carts left behind"}
    )
    await post(
        http,
        shop,
        f"/v1/workflows/{workflow['id']}/publish",
        {"expected_revision": workflow["draft_revision"]},
    )

    cart = {
        "idempotency_key": unique("cart"),
        "contact": {"email": contacts[0]["email"]},
        "type": "cart_updated",
        "data": {
            "cart_id": "cart-1",
            "items": [{"product_id": "p1", "quantity": 2}],
            "total": {"amount_minor": 2500, "currency": "EUR"},
        },
    }
    accepted = await http.post("/v1/events", json=cart, headers=shop.auth)
    assert accepted.status_code == 202, accepted.text

    async def running() -> bool:
        answer = await http.get(f"/v1/workflows/{workflow['id']}/runs", headers=shop.auth)
        return answer.status_code == 200 and bool(answer.json()["runs"])

    await eventually(running, timeout=90)

    async def delivered() -> bool:
        answer = await http.get(f"/v1/campaigns/{sent['id']}", headers=shop.auth)
        return answer.json()["status"] == "sent"

    await eventually(delivered, timeout=90)
    return Seeded(contacts[0]["id"], draft["id"], sent["id"], workflow["id"])


async def audit(page: Page) -> str:
    """axe's report of the serious and critical violations on the page ('' when none)."""
    results = await Axe().run(
        page, options={"runOnly": {"type": "tag", "values": WCAG}, "resultTypes": ["violations"]}
    )
    blocking = [v for v in results.response["violations"] if v["impact"] in BLOCKING]
    if not blocking:
        return ""
    return AxeResults({**results.response, "violations": blocking}).generate_report()


async def section_screenshot(page: Page, selector: str, name: str) -> None:
    """Like test_console.screenshot, of one part of a page (its own screenshot in the README)."""
    folder = os.environ.get("NUDGE_CONSOLE_SCREENSHOTS")
    if folder:
        await page.locator(selector).screenshot(path=str(Path(folder) / f"{name}.png"))


async def visit(page: Page, system: System, path: str, heading: str) -> None:
    await page.goto(f"{system.gateway}/console#/{path}")
    await expect(page.get_by_role("heading", name=heading, exact=True).first).to_be_visible(
        timeout=WAIT_MS
    )
    await page.wait_for_function(LOADED, timeout=WAIT_MS)


def pages(system: System, seeded: Seeded) -> list[tuple[str, Callable[[Page], Awaitable[Any]]]]:
    """Each signed-in page: its screenshot's name and how to open it, loaded."""

    async def builder(page: Page) -> None:
        await visit(page, system, "segments", "Segments")
        condition = page.locator('#rule-builder .condition[data-index="0"]')
        await condition.locator(".field-name").select_option("vip")
        await expect(page.locator("#rule-count")).to_have_text("2", timeout=WAIT_MS)

    async def editor(page: Page) -> None:
        await visit(page, system, "segments", "Segments")
        await (
            page.locator("#custom-segment-list .segment-row")
            .get_by_role("button", name="Edit")
            .click()
        )
        await expect(page.locator("#rule-builder-title")).to_have_text(
            "Edit “Spring VIPs”", timeout=WAIT_MS
        )
        await expect(page.locator("#rule-count")).to_have_text("2", timeout=WAIT_MS)

    async def report(page: Page) -> None:
        await visit(page, system, f"campaigns/{seeded.sent_id}", "Thursday's producers")
        await expect(page.locator("#report-delivered")).to_contain_text("2", timeout=WAIT_MS)

    async def automation(page: Page) -> None:
        await visit(page, system, "automations", "Automations")
        row = page.locator(f'[data-workflow-id="{seeded.workflow_id}"]')
        await row.get_by_role("button", name="Open").click()
        await expect(page.locator("#run-totals")).to_contain_text("1 started", timeout=WAIT_MS)
        await expect(page.locator("#workflow-editor .runs")).to_be_visible(timeout=WAIT_MS)
        await page.wait_for_function(LOADED, timeout=WAIT_MS)

    async def segments(page: Page) -> None:
        await visit(page, system, "segments", "Segments")
        await (
            page.locator("#custom-segment-list .segment-row")
            .get_by_role("button", name="Preview")
            .click()
        )
        await expect(page.locator("#segment-preview .members")).to_be_visible(timeout=WAIT_MS)
        await page.wait_for_function(LOADED, timeout=WAIT_MS)

    return [
        ("overview", lambda page: visit(page, system, "overview", "Overview")),
        ("contacts", lambda page: visit(page, system, "contacts", "Contacts")),
        (
            "contact",
            lambda page: visit(page, system, f"contacts/{seeded.contact_id}", "Adalgisa Rossi"),
        ),
        ("segments", segments),
        ("segment-builder", builder),
        ("segment-edit", editor),
        ("campaigns", lambda page: visit(page, system, "campaigns", "Campaigns")),
        (
            "campaign-compose",
            lambda page: visit(page, system, f"campaigns/{seeded.draft_id}", "Draft"),
        ),
        ("campaign-report", report),
        ("automations", lambda page: visit(page, system, "automations", "Automations")),
        ("automation", automation),
        ("settings", lambda page: visit(page, system, "settings", "Settings")),
    ]


@pytest.mark.parametrize(("width", "label"), [(1280, "desktop"), (360, "mobile")])
async def test_axe_finds_no_serious_or_critical_violation_on_any_console_page(
    system: System, http: httpx.AsyncClient, browser: Browser, width: int, label: str
) -> None:
    shop = await new_shop(system, http)
    seeded = await seed(http, shop)
    context = await browser.new_context(viewport={"width": width, "height": 800})
    page = await context.new_page()
    reports: dict[str, str] = {}
    stray: dict[str, list[str]] = {}

    await sign_in(page, system, shop.owner, "not the password")
    await expect(page.locator("#login-error")).to_have_text(
        "Wrong e-mail or password.", timeout=WAIT_MS
    )
    reports["login"] = await audit(page)
    await screenshot(page, f"login-{label}")
    await page.fill("#login-password", PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=WAIT_MS)

    for name, opened in pages(system, seeded):
        await opened(page)
        reports[name] = await audit(page)
        stray[name] = await page.evaluate(STRAY_WORDS)
        if name in ("segment-builder", "segment-edit"):
            await section_screenshot(page, "#rule-builder", f"{name}-{label}")
        else:
            await screenshot(page, f"{name}-{label}")
    await context.close()
    failures = {name: report for name, report in reports.items() if report}
    assert not failures, "\n\n".join(f"== {name} ({label}) ==\n{r}" for name, r in failures.items())
    assert len(reports) == 13  # every page was audited
    shown = {name: words for name, words in stray.items() if words}
    assert not shown, f"pages that show a missing value as a word: {shown}"
