"""The console's Segments page (issue 18) in a real Chromium over the whole system: the rule
builder's live count is the API's count of the rule it shows, its errors sit next to their
condition, a saved segment is listed with its count and previewed, then deleted; a viewer
cannot save; segment names shown as text, never run.

Fixtures and helpers come from tests/e2e/test_console.py (Debian's chromium through
Playwright; skipped, saying why, without them).
"""

from __future__ import annotations

import json
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
    vip_count,
    watch,
)
from tests.support import eventually, unique

# test_console.py's fixtures (the browser, an HTTP client, the throttle forgotten) and its
# skip markers (no Chromium, no Playwright), shared rather than copied.
browser = test_console.browser
http = test_console.http
fresh_address_throttle = test_console.fresh_address_throttle
pytestmark = test_console.pytestmark


async def open_segments(page: Page, system: System, email: str) -> None:
    await sign_in(page, system, email)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=WAIT_MS)
    await page.get_by_role("link", name="Segments").click()
    await expect(page.get_by_role("heading", name="Segments", exact=True)).to_be_visible(
        timeout=WAIT_MS
    )


async def api_count(http: httpx.AsyncClient, shop: Shop, rule: Any) -> int:
    answer = await http.post("/v1/segments:count", json={"rule": rule}, headers=shop.auth)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["count"])


async def shop_with_vips(system: System, http: httpx.AsyncClient, vips: int, others: int) -> Shop:
    shop = await new_shop(system, http)
    for index in range(vips + others):
        await post(
            http,
            shop,
            "/v1/contacts",
            {"email": f"{unique('c')}@example.com", "vip": index < vips, "first_name": "Ada"},
        )

    async def counted() -> bool:
        return await vip_count(http, shop) == vips

    await eventually(counted, timeout=60)
    return shop


async def test_the_rule_builders_count_is_the_apis_and_a_saved_segment_is_previewed_and_deleted(
    system: System,
    http: httpx.AsyncClient,
    browser: Browser,
) -> None:
    shop = await shop_with_vips(system, http, vips=2, others=1)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    watched = watch(page)
    await open_segments(page, system, shop.owner)
    await expect(page.locator('#builtin-segments [data-segment-id="vip"] .count')).to_have_text(
        "2", timeout=WAIT_MS
    )

    builder = page.locator("#rule-builder")
    condition = builder.locator('.condition[data-index="0"]')
    # A value that is no number: the server's error is shown next to the condition.
    await condition.locator(".value").fill("many")
    await expect(condition.locator(".field-error")).to_contain_text("rule", timeout=WAIT_MS)

    await condition.locator(".field-name").select_option("vip")
    await expect(condition.locator(".field-error")).to_be_empty(timeout=WAIT_MS)
    await expect(builder.locator("#rule-count")).to_have_text("2", timeout=WAIT_MS)
    shown = json.loads(await builder.locator("#rule-json").text_content() or "null")
    assert shown == {"field": "vip", "op": "eq", "value": True}
    assert await api_count(http, shop, shown) == 2
    # The rule, not yet saved, is previewed too: its first contacts are the two VIPs.
    sample = builder.locator("#rule-sample .email")
    await expect(sample).to_have_count(2, timeout=WAIT_MS)
    picked = await http.post("/v1/segments:preview", json={"rule": shown}, headers=shop.auth)
    assert sorted(await sample.all_text_contents()) == sorted(
        m["email"] for m in picked.json()["members"]
    )

    # Two conditions under "any": the count follows, and is the API's count of the JSON shown.
    await builder.get_by_role("button", name="Add a condition").click()
    second = builder.locator('.condition[data-index="1"]')
    await second.locator(".field-name").select_option("email")
    await second.locator(".op").select_option("contains")
    await second.locator(".value").fill("@example.com")
    await builder.locator("#rule-combinator").select_option("any")
    await expect(builder.locator("#rule-count")).to_have_text("3", timeout=WAIT_MS)
    shown = json.loads(await builder.locator("#rule-json").text_content() or "null")
    assert list(shown) == ["any"] and len(shown["any"]) == 2
    assert await api_count(http, shop, shown) == 3
    await second.get_by_role("button", name="Remove this condition").click()
    await expect(builder.locator("#rule-count")).to_have_text("2", timeout=WAIT_MS)

    await builder.locator("#segment-name").fill("Starred")
    await builder.get_by_role("button", name="Save segment").click()
    await expect(builder.locator("#save-status")).to_have_text("Saved “Starred”.", timeout=WAIT_MS)
    segments = (await http.get("/v1/segments", headers=shop.auth)).json()["segments"]
    made = next(s for s in segments if s["name"] == "Starred")
    assert made["rule"] == {"field": "vip", "op": "eq", "value": True}
    row = page.locator(f'#custom-segment-list [data-segment-id="{made["id"]}"]')
    await expect(row.locator(".count")).to_have_text("2", timeout=WAIT_MS)

    # The same name again: the 409's words next to the name.
    await builder.locator("#segment-name").fill("starred")
    await builder.get_by_role("button", name="Save segment").click()
    said = builder.locator("#rule-errors p, #segment-name-error:not(:empty)")
    await expect(said).to_have_count(1, timeout=WAIT_MS)
    await expect(said).not_to_be_empty()
    await expect(page.locator("#custom-segment-list .segment-row")).to_have_count(1)

    await row.get_by_role("button", name="Preview").click()
    preview = page.locator("#segment-preview")
    await expect(preview.locator(".member")).to_have_count(2, timeout=WAIT_MS)

    await row.get_by_role("button", name="Delete").click()
    await row.get_by_role("button", name="Really delete?").click()
    await expect(page.locator("#custom-segment-list")).to_contain_text(
        "No segments of your own yet.", timeout=WAIT_MS
    )
    gone = await http.get(f"/v1/segments/{made['id']}", headers=shop.auth)
    assert gone.status_code == 404
    assert watched.exceptions == [] and watched.csp_violations() == []
    await context.close()


async def test_segment_names_are_shown_as_text_and_a_viewer_cannot_save_or_delete(
    system: System,
    http: httpx.AsyncClient,
    browser: Browser,
) -> None:
    shop = await new_shop(system, http)
    name = f"VIPs {SCRIPT}{IMG}"
    made = await post(
        http, shop, "/v1/segments", {"name": name, "rule": {"segment": "vip"}, "description": IMG}
    )
    viewer = await new_manager(http, shop.api_key, "viewer")
    for email, can_edit in ((shop.owner, True), (viewer, False)):
        context = await browser.new_context(viewport={"width": 360, "height": 740})
        page = await context.new_page()
        watched = watch(page)
        await open_segments(page, system, email)
        row = page.locator(f'#custom-segment-list [data-segment-id="{made["id"]}"]')
        await expect(row.locator(".segment-name")).to_have_text(name, timeout=WAIT_MS)
        await expect(row.locator(".meta")).to_contain_text(IMG)
        await row.get_by_role("button", name="Preview").click()
        await expect(page.locator("#segment-preview-title")).to_have_text(name, timeout=WAIT_MS)
        builder = page.locator("#rule-builder")
        await builder.locator('.condition[data-index="0"] .kind').select_option("segment")
        await builder.locator('.condition[data-index="0"] .value').select_option(made["id"])
        # The count is a POST that changes nothing: a viewer's builder counts too.
        await expect(builder.locator("#rule-count")).to_have_text("0", timeout=WAIT_MS)
        await expect(builder.locator('.condition[data-index="0"] .field-error')).to_be_empty()
        save = builder.get_by_role("button", name="Save segment")
        delete = row.get_by_role("button", name="Delete")
        if can_edit:
            await expect(save).to_be_enabled()
            await expect(delete).to_be_enabled()
        else:
            await expect(save).to_be_disabled()
            await expect(delete).to_be_disabled()
            # The gateway refuses it anyway, with the session's own CSRF token.
            status = await page.evaluate(
                """async (id) => {
                    const token = (await (await fetch('/v1/session')).json()).csrf_token;
                    const r = await fetch(`/v1/segments/${id}`, {method: 'DELETE',
                        headers: {'X-CSRF-Token': token}, credentials: 'same-origin'});
                    return r.status;
                }""",
                made["id"],
            )
            assert status == 403
        assert await page.evaluate("window.__xss") is None
        assert await page.locator("img").count() == 0
        assert await page.locator("script").count() == 1  # our own module, nothing else
        assert watched.csp_violations() == [] and watched.exceptions == []
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        await context.close()
    # The segment is still there.
    assert (await http.get(f"/v1/segments/{made['id']}", headers=shop.auth)).status_code == 200


async def test_a_custom_segment_is_edited_with_if_match_and_a_change_made_meanwhile_is_kept(
    system: System,
    http: httpx.AsyncClient,
    browser: Browser,
) -> None:
    shop = await shop_with_vips(system, http, vips=2, others=1)
    made = await post(
        http,
        shop,
        "/v1/segments",
        {"name": "Starred", "rule": {"field": "vip", "op": "eq", "value": True}},
    )
    odd_rule = {"attribute": "plan", "op": "ci_eq", "value": "gold"}
    odd = await post(http, shop, "/v1/segments", {"name": "Gold plan", "rule": odd_rule})
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    watched = watch(page)
    await open_segments(page, system, shop.owner)
    builder = page.locator("#rule-builder")
    row = page.locator(f'#custom-segment-list [data-segment-id="{made["id"]}"]')
    await expect(row.locator(".count")).to_have_text("2", timeout=WAIT_MS)
    await expect(page.locator("#builtin-segments .segment-row").first).to_be_visible()
    assert await page.locator("#builtin-segments button.edit").count() == 0

    # The saved rule in the builder: its condition, its name, its live count.
    await row.get_by_role("button", name="Edit").click()
    await expect(page.locator("#rule-builder-title")).to_have_text(
        "Edit “Starred”", timeout=WAIT_MS
    )
    await expect(builder.locator("#segment-name")).to_have_value("Starred")
    condition = builder.locator('.condition[data-index="0"]')
    await expect(condition.locator(".field-name")).to_have_value("vip")
    await expect(condition.locator(".value")).to_have_value("true")
    await expect(builder.locator("#rule-count")).to_have_text("2", timeout=WAIT_MS)

    await condition.locator(".value").select_option("false")
    await expect(builder.locator("#rule-count")).to_have_text("1", timeout=WAIT_MS)
    await builder.get_by_role("button", name="Save changes").click()
    await expect(builder.locator("#save-status")).to_have_text(
        "Saved changes to “Starred”.", timeout=WAIT_MS
    )
    read = (await http.get(f"/v1/segments/{made['id']}", headers=shop.auth)).json()
    assert read["rule"] == {"field": "vip", "op": "eq", "value": False}
    assert read["version"] == made["version"] + 1
    await expect(row.locator(".count")).to_have_text("1", timeout=WAIT_MS)

    # Someone changes it through the API meanwhile: saving is refused in words, and the
    # other change stays.
    theirs = await http.patch(
        f"/v1/segments/{made['id']}",
        json={"name": "Stars", "rule": {"field": "vip", "op": "eq", "value": True}},
        headers={**shop.auth, "If-Match": f'"{read["version"]}"'},
    )
    assert theirs.status_code == 200, theirs.text
    await builder.locator("#segment-name").fill("Mine")
    await builder.get_by_role("button", name="Save changes").click()
    await expect(builder.locator("#edit-conflict")).to_contain_text(
        "Someone else changed this segment", timeout=WAIT_MS
    )
    kept = (await http.get(f"/v1/segments/{made['id']}", headers=shop.auth)).json()
    assert (kept["name"], kept["rule"]["value"], kept["version"]) == (
        "Stars",
        True,
        read["version"] + 1,
    )
    await builder.get_by_role("button", name="Reload it").click()
    await expect(builder.locator("#segment-name")).to_have_value("Stars", timeout=WAIT_MS)
    await expect(condition.locator(".value")).to_have_value("true")
    await expect(builder.locator("#edit-conflict")).to_be_empty()

    # A rule the builder cannot show is shown read-only, whole; Cancel is a new segment again.
    odd_row = page.locator(f'#custom-segment-list [data-segment-id="{odd["id"]}"]')
    await odd_row.get_by_role("button", name="Edit").click()
    await expect(builder.locator("#rule-unsupported")).to_be_visible(timeout=WAIT_MS)
    assert (
        json.loads(await builder.locator("#rule-json-readonly").text_content() or "null")
        == odd_rule
    )
    await expect(builder.get_by_role("button", name="Save changes")).to_have_count(0)
    await builder.get_by_role("button", name="Cancel").click()
    await expect(page.locator("#rule-builder-title")).to_have_text("New segment", timeout=WAIT_MS)
    await expect(builder.locator("#segment-name")).to_have_value("")
    await expect(builder.get_by_role("button", name="Save segment")).to_be_enabled()
    assert watched.exceptions == [] and watched.csp_violations() == []
    await context.close()

    viewer = await new_manager(http, shop.api_key, "viewer")
    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    await open_segments(page, system, viewer)
    edits = page.locator("#custom-segment-list button.edit")
    await expect(edits).to_have_count(2, timeout=WAIT_MS)
    for index in range(2):
        await expect(edits.nth(index)).to_be_disabled()
    assert await page.locator("#custom-segment-list button.edit:enabled").count() == 0
    await context.close()
