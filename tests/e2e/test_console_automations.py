"""The console's Automations page (issue 18) in a real Chromium over the whole system: switch
a template on, edit its delays and texts with the errors shown at their step, publish a new
version, pause it; a test run to yourself; a viewer can do neither; workflow texts shown as
text, never run.

Fixtures and helpers come from tests/e2e/test_console.py (Debian's chromium through
Playwright; skipped, saying why, without them).
"""

from __future__ import annotations

from typing import Any

import httpx
from playwright.async_api import Browser, Page, expect

from tests.e2e import test_console
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
    watch,
)
from tests.support import eventually, unique

# test_console.py's fixtures (the browser, an HTTP client, the throttle forgotten) and its
# skip markers (no Chromium, no Playwright), shared rather than copied.
browser = test_console.browser
http = test_console.http
fresh_address_throttle = test_console.fresh_address_throttle
pytestmark = test_console.pytestmark

FIRST_DELAY = '[data-path="definition.steps[0].duration"]'
FIRST_SUBJECT = '[data-path="definition.steps[1].message.subject"]'


async def get(http: httpx.AsyncClient, shop: Shop, path: str) -> Any:
    answer = await http.get(path, headers=shop.auth)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def only_workflow(http: httpx.AsyncClient, shop: Shop) -> dict[str, Any]:
    workflows = (await get(http, shop, "/v1/workflows"))["workflows"]
    assert len(workflows) == 1, workflows
    return dict(workflows[0])


async def open_automations(page: Page, system: System, email: str) -> None:
    await sign_in(page, system, email)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=WAIT_MS)
    await page.get_by_role("link", name="Automations").click()
    await expect(page.get_by_role("heading", name="Automations", exact=True)).to_be_visible(
        timeout=WAIT_MS
    )


async def test_an_owner_switches_on_the_abandoned_cart_changes_a_delay_and_a_subject_and_publishes(
    system: System,
    http: httpx.AsyncClient,
    browser: Browser,
) -> None:
    shop = await new_shop(system, http)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    watched = watch(page)
    await open_automations(page, system, shop.owner)

    cart = page.locator('[data-template-id="abandoned_cart"]')
    await expect(cart.locator(".template-name")).to_have_text("Abandoned cart", timeout=WAIT_MS)
    await cart.get_by_role("button", name="Switch on").click()
    editor = page.locator("#workflow-editor")
    await expect(editor.locator(".notice")).to_have_text("Abandoned cart is on.", timeout=WAIT_MS)
    switched_on = await only_workflow(http, shop)
    assert (switched_on["status"], switched_on["version"]) == ("active", 1)
    await expect(page.locator(f'[data-workflow-id="{switched_on["id"]}"] .status')).to_have_text(
        "active"
    )
    await expect(editor.locator("#run-totals")).to_contain_text("0 started", timeout=WAIT_MS)
    await expect(editor.locator(FIRST_DELAY)).to_have_value("PT3H")

    # A delay that is no duration: the error is shown at that step's field, nothing published.
    await editor.locator(FIRST_DELAY).fill("three hours")
    await editor.get_by_role("button", name="Publish").click()
    error = editor.locator('[data-error-for="definition.steps[0].duration"]')
    await expect(error).not_to_be_empty(timeout=WAIT_MS)
    assert (await only_workflow(http, shop))["version"] == 1

    await editor.locator(FIRST_DELAY).fill("PT5H")
    await editor.locator(FIRST_SUBJECT).fill("Still thinking it over, {{ contact.first_name }}?")
    await editor.get_by_role("button", name="Publish").click()
    await expect(editor.locator(".notice")).to_have_text("Published version 2.", timeout=WAIT_MS)
    await expect(error).to_be_empty()

    versions = (await get(http, shop, f"/v1/workflows/{switched_on['id']}/versions"))["versions"]
    newest, first = versions[0]["definition"], versions[1]["definition"]
    assert (versions[0]["version"], versions[1]["version"]) == (2, 1)
    assert newest["steps"][0]["duration"] == "PT5H"
    assert newest["steps"][1]["message"]["subject"] == (
        "Still thinking it over, {{ contact.first_name }}?"
    )
    assert first["steps"][0]["duration"] == "PT3H"  # the version before is kept as it was
    # Only what was edited changed: the later steps are the template's.
    assert newest["steps"][2:] == first["steps"][2:]

    row = page.locator(f'[data-workflow-id="{switched_on["id"]}"]')
    await row.get_by_role("button", name="Pause").click()
    await expect(row.locator(".status")).to_have_text("paused", timeout=WAIT_MS)
    assert (await only_workflow(http, shop))["status"] == "paused"
    await row.get_by_role("button", name="Resume").click()
    await expect(row.locator(".status")).to_have_text("active", timeout=WAIT_MS)
    assert (await only_workflow(http, shop))["status"] == "active"
    assert watched.exceptions == [] and watched.csp_violations() == []
    await context.close()


async def switched_on(http: httpx.AsyncClient, shop: Shop, name: str) -> dict[str, Any]:
    workflow = await post(
        http, shop, "/v1/workflows", {"template_id": "abandoned_cart", "name": name}
    )
    published = await post(
        http,
        shop,
        f"/v1/workflows/{workflow['id']}/publish",
        {"expected_revision": workflow["draft_revision"]},
    )
    return dict(published)


async def test_a_test_run_from_the_editor_mails_the_manager_each_step_at_once(
    system: System,
    http: httpx.AsyncClient,
    browser: Browser,
) -> None:
    """The editor's test run: find a contact, send every step to yourself at once."""
    shop = await new_shop(system, http)
    workflow = await switched_on(http, shop, "Carts left behind")
    zoe = f"{unique('zoe')}@example.com"
    await post(http, shop, "/v1/contacts", {"email": zoe, "first_name": "Zoe"})
    await post(http, shop, "/v1/contacts", {"email": f"{unique('yan')}@example.com"})
    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    watched = watch(page)
    await open_automations(page, system, shop.owner)
    await (
        page.locator(f'[data-workflow-id="{workflow["id"]}"]')
        .get_by_role("button", name="Open")
        .click()
    )
    editor = page.locator("#workflow-editor")
    # The manager's own address to begin with; the search narrows the contacts to Zoe.
    await expect(editor.locator("#test-run-email")).to_have_value(shop.owner, timeout=WAIT_MS)
    await editor.locator("#test-run-search").fill(zoe)
    await expect(editor.locator("#test-run-contact option")).to_have_count(1, timeout=WAIT_MS)
    manager = f"{unique('boss')}@example.com"
    await editor.locator("#test-run-email").fill(manager)
    await editor.get_by_role("button", name="Send me a test run").click()
    await expect(editor.locator("#test-run-result")).to_have_text(
        f"Every mail of this automation is on its way to {manager}, marked [Test].",
        timeout=WAIT_MS,
    )

    to = system.subjects_to
    subjects = await eventually(lambda: len(to(manager)) == 2 and to(manager), timeout=60)
    assert subjects == [
        "[Test] Free shipping today only at Bottega Ada",
        "[Test] Zoe, your cart at Bottega Ada is waiting",
    ]
    assert to(zoe) == []
    # Not an address: the problem is shown.
    await editor.locator("#test-run-email").fill("nobody")
    await editor.get_by_role("button", name="Send me a test run").click()
    await expect(editor.locator("#test-run-result")).to_contain_text("recipient", timeout=WAIT_MS)
    assert watched.exceptions == [] and watched.csp_violations() == []
    await context.close()


async def test_a_viewer_sees_an_automation_but_cannot_publish_it(
    system: System,
    http: httpx.AsyncClient,
    browser: Browser,
) -> None:
    shop = await new_shop(system, http)
    workflow = await switched_on(http, shop, "Carts left behind")
    await post(http, shop, "/v1/contacts", {"email": f"{unique('zoe')}@example.com"})
    viewer = await new_manager(http, shop.api_key, "viewer")
    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    await open_automations(page, system, viewer)

    row = page.locator(f'[data-workflow-id="{workflow["id"]}"]')
    await expect(row.locator(".row-title")).to_have_text("Carts left behind", timeout=WAIT_MS)
    await expect(row.get_by_role("button", name="Pause")).to_be_disabled()
    cart = page.locator('[data-template-id="abandoned_cart"]')
    await expect(cart.get_by_role("button", name="Switch on")).to_be_disabled(timeout=WAIT_MS)
    await row.get_by_role("button", name="Open").click()
    editor = page.locator("#workflow-editor")
    await expect(editor.get_by_role("button", name="Publish")).to_be_disabled(timeout=WAIT_MS)
    await expect(editor.locator(FIRST_DELAY)).to_be_disabled()
    await expect(editor.locator(FIRST_DELAY)).to_have_value("PT3H")
    # A contact is there to choose, and still a viewer sends no test run.
    await expect(editor.locator("#test-run-contact option")).to_have_count(1, timeout=WAIT_MS)
    await expect(editor.get_by_role("button", name="Send me a test run")).to_be_disabled()

    # And the gateway refuses it anyway, with the session's own CSRF token.
    status = await page.evaluate(
        """async (id) => {
            const token = (await (await fetch('/v1/session')).json()).csrf_token;
            const r = await fetch(`/v1/workflows/${id}/pause`, {method: 'POST',
                headers: {'X-CSRF-Token': token}, credentials: 'same-origin'});
            return r.status;
        }""",
        workflow["id"],
    )
    assert status == 403
    assert (await only_workflow(http, shop))["status"] == "active"
    await context.close()


async def test_workflow_texts_are_shown_as_text_and_never_run(
    system: System,
    http: httpx.AsyncClient,
    browser: Browser,
) -> None:
    shop = await new_shop(system, http)
    workflow = await switched_on(http, shop, f"Carts {SCRIPT}")
    definition = workflow["definition"]
    definition["steps"][0]["name"] = f"Wait {IMG}"
    definition["steps"][1]["message"]["subject"] = f"Subject {IMG}"
    definition["steps"][1]["message"]["body_text"] = f"Body {SCRIPT}"
    answer = await http.put(
        f"/v1/workflows/{workflow['id']}",
        json={"definition": definition, "expected_revision": workflow["draft_revision"]},
        headers=shop.auth,
    )
    assert answer.status_code == 200, answer.text
    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    watched = watch(page)
    await open_automations(page, system, shop.owner)

    row = page.locator(f'[data-workflow-id="{workflow["id"]}"]')
    await expect(row.locator(".row-title")).to_have_text(f"Carts {SCRIPT}", timeout=WAIT_MS)
    await row.get_by_role("button", name="Open").click()
    editor = page.locator("#workflow-editor")
    await expect(editor.locator("#editor-title")).to_have_text(f"Carts {SCRIPT}", timeout=WAIT_MS)
    await expect(editor.locator('[data-step-path="definition.steps[0]"] legend')).to_have_text(
        f"Wait {IMG} · wait"
    )
    await expect(editor.locator(FIRST_SUBJECT)).to_have_value(f"Subject {IMG}")
    await expect(
        editor.locator('[data-path="definition.steps[1].message.body_text"]')
    ).to_have_value(f"Body {SCRIPT}")
    await expect(editor.locator("#run-totals")).to_contain_text("started", timeout=WAIT_MS)
    assert await page.evaluate("window.__xss") is None
    assert await page.locator("img").count() == 0
    assert await page.locator("script").count() == 1  # our own module, nothing else
    assert watched.csp_violations() == [] and watched.errors == [] and watched.exceptions == []
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    await context.close()


async def test_the_runs_go_on_with_more_each_run_once(
    system: System,
    http: httpx.AsyncClient,
    browser: Browser,
) -> None:
    """52 carts left behind by one customer: 52 runs (one per cart), the latest 50 first."""
    shop = await new_shop(system, http)
    workflow = await switched_on(http, shop, "Carts left behind")
    contact = await post(http, shop, "/v1/contacts", {"email": f"{unique('cart')}@example.com"})
    carts = [
        {
            "idempotency_key": unique("cart"),
            "contact": {"id": contact["id"]},
            "type": "cart_updated",
            "data": {
                "cart_id": f"cart-{i}",
                "items": [{"product_id": "p1", "quantity": 1}],
                "total": {"amount_minor": 1000, "currency": "EUR"},
            },
        }
        for i in range(52)
    ]
    accepted = await http.post("/v1/events:batch", json={"events": carts}, headers=shop.auth)
    assert accepted.status_code == 200 and accepted.json()["accepted"] == 52, accepted.text
    runs_path = f"/v1/workflows/{workflow['id']}/runs?page_size=100"

    async def all_started() -> bool:
        return len((await get(http, shop, runs_path))["runs"]) == 52

    await eventually(all_started, timeout=120)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await open_automations(page, system, shop.owner)
    row = page.locator(f'[data-workflow-id="{workflow["id"]}"]')
    await row.get_by_role("button", name="Open").click()
    shown = page.locator("#workflow-editor .run")
    await expect(shown).to_have_count(50, timeout=WAIT_MS)
    await page.locator("#more-runs").click()
    await expect(shown).to_have_count(52, timeout=WAIT_MS)
    await expect(page.locator("#more-runs")).to_be_hidden()
    ids = [await r.get_attribute("data-run-id") for r in await shown.all()]
    assert sorted(ids) == sorted(r["id"] for r in (await get(http, shop, runs_path))["runs"])
    assert len(set(ids)) == 52
    await context.close()
