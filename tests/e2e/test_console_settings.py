"""The console's Settings page (issue 18) in a real Chromium, over the whole system: consent
mode and frequency cap saved from the page and read back through the API (a field error next
to its field), the sender name, DKIM keys with their DNS record, API keys (the secret shown
once, revoked, then refused), the team (a viewer created from the page signs in and has
nothing to change; a manager made a viewer from the page is signed out and then refused),
the default Reply-To (set on the page, carried by a campaign that names none to the SMTP
sink), and what managers typed shown as text, never run.

Fixtures and helpers are test_console.py's (Debian's chromium through Playwright).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from playwright.async_api import Browser, Page, expect

from tests.e2e import test_console as console
from tests.e2e.conftest import System
from tests.e2e.test_console import (
    IMG,
    PASSWORD,
    SCRIPT,
    WAIT_MS,
    new_shop,
    post,
    pytestmark,
    sign_in,
    watch,
)
from tests.support import eventually, unique

# test_console.py's fixtures, found by pytest under these names.
browser = console.browser
http = console.http
fresh_address_throttle = console.fresh_address_throttle
__all__ = ["pytestmark"]


async def open_settings(page: Page, system: System, email: str) -> None:
    await sign_in(page, system, email)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=WAIT_MS)
    await page.get_by_role("link", name="Settings").click()
    await expect(page.get_by_role("heading", name="Settings", exact=True)).to_be_visible(
        timeout=WAIT_MS
    )


async def test_the_owner_changes_consent_mode_and_cap_and_the_api_reads_them_back(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    before = (await http.get("/v1/workspace/settings", headers=shop.auth)).json()
    was = before["consent_required_for_campaigns"]
    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    watched = watch(page)
    await open_settings(page, system, shop.owner)
    await expect(page.locator("#settings-sending-state")).to_have_text(
        "Sending is active", timeout=WAIT_MS
    )

    consent = page.locator("#consent-required")
    if was:
        await expect(consent).to_be_checked(timeout=WAIT_MS)
    else:
        await expect(consent).not_to_be_checked(timeout=WAIT_MS)
    await consent.set_checked(not was)
    await page.locator("#workspace-save").click()
    await expect(page.locator("#workspace-status")).to_have_text("Saved.", timeout=WAIT_MS)
    after = (await http.get("/v1/workspace/settings", headers=shop.auth)).json()
    assert after["consent_required_for_campaigns"] is (not was)
    assert after["name"] == before["name"] and after["double_opt_in"] == before["double_opt_in"]

    # A cap of 0 messages: the server's words next to the field, and nothing saved.
    await page.fill("#cap-messages", "0")
    await page.fill("#cap-days", "7")
    await page.locator("#cap-save").click()
    await expect(page.locator("#cap-messages-error")).not_to_be_empty(timeout=WAIT_MS)
    await expect(page.locator("#cap-days-error")).to_be_empty()
    await expect(page.locator("#cap-status")).to_have_class("form-status error")
    unchanged = (await http.get("/v1/campaign-settings", headers=shop.auth)).json()
    assert (unchanged["frequency_cap_messages"], unchanged["frequency_cap_days"]) == (1, 30)

    await page.fill("#cap-messages", "3")
    await page.locator("#cap-save").click()
    await expect(page.locator("#cap-status")).to_have_text("Saved.", timeout=WAIT_MS)
    await expect(page.locator("#cap-messages-error")).to_be_empty()
    cap = (await http.get("/v1/campaign-settings", headers=shop.auth)).json()
    assert (cap["frequency_cap_messages"], cap["frequency_cap_days"]) == (3, 7)

    # A fresh load shows what the server holds.
    await page.reload()
    await expect(page.locator("#cap-messages")).to_have_value("3", timeout=WAIT_MS)
    if was:
        await expect(page.locator("#consent-required")).not_to_be_checked()
    else:
        await expect(page.locator("#consent-required")).to_be_checked()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    assert watched.exceptions == [] and watched.errors == []
    await context.close()


async def test_an_api_key_is_shown_once_and_refused_once_revoked(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await open_settings(page, system, shop.owner)
    await page.fill("#key-name", "Warehouse sync")
    await page.locator("#key-create").click()
    secret = page.locator("#new-secret")
    await expect(secret).to_have_text(re.compile(r"^nk_[0-9a-f]{16}"), timeout=WAIT_MS)
    key = await secret.inner_text()
    bearer = {"Authorization": f"Bearer {key}"}
    assert (await http.get("/v1/workspace/settings", headers=bearer)).status_code == 200

    # Shown once: a reload lists the key by name, never its secret again.
    await page.reload()
    row = page.locator(".api-key", has_text="Warehouse sync")
    await expect(row).to_have_count(1, timeout=WAIT_MS)
    await expect(page.locator("#new-secret")).to_have_count(0)
    assert key not in await page.locator("body").inner_text()

    await row.get_by_role("button", name="Revoke").click()
    await expect(page.locator("#key-status")).to_have_text(
        "Revoked “Warehouse sync”: it no longer works.", timeout=WAIT_MS
    )
    await expect(row).to_have_count(0)  # the list holds the working keys

    async def refused() -> bool:
        answer = await http.get("/v1/workspace/settings", headers=bearer)
        return answer.status_code == 401

    await eventually(refused, timeout=30)
    # The workspace's own key still works: only the revoked one stopped.
    assert (await http.get("/v1/workspace/settings", headers=shop.auth)).status_code == 200

    # Rotating shows the new key once; the old one keeps working through the overlap.
    await page.fill("#key-name", "Nightly export")
    await page.locator("#key-create").click()
    await expect(secret).to_have_text(re.compile(r"^nk_[0-9a-f]{16}"), timeout=WAIT_MS)
    old = await secret.inner_text()
    await page.get_by_role("button", name="I have copied it").click()
    await expect(secret).to_have_count(0)
    export = page.locator(".api-key", has_text="Nightly export")
    await export.get_by_role("button", name="Rotate").click()
    await expect(secret).to_have_text(re.compile(r"^nk_[0-9a-f]{16}"), timeout=WAIT_MS)
    new = await secret.inner_text()
    assert new != old
    await expect(export.filter(has_text="replaced; works until")).to_have_count(1)
    for working in (old, new):
        answer = await http.get(
            "/v1/workspace/settings", headers={"Authorization": f"Bearer {working}"}
        )
        assert answer.status_code == 200
    await context.close()


async def test_a_dkim_key_shows_the_dns_record_to_publish_and_is_deleted(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    domain = f"{unique('shop')}.example"
    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    await open_settings(page, system, shop.owner)
    await page.fill("#dkim-domain", "not a domain")
    await page.locator("#dkim-create").click()
    await expect(page.locator("#dkim-status")).to_have_class("form-status error", timeout=WAIT_MS)

    await page.fill("#dkim-domain", domain)
    await page.fill("#dkim-selector", "nudge2026")
    await page.locator("#dkim-create").click()
    row = page.locator(f'.dkim-key[data-domain="{domain}"]')
    await expect(row.locator(".dns-name")).to_have_text(
        f"nudge2026._domainkey.{domain}", timeout=WAIT_MS
    )
    listed = (await http.get("/v1/dkim-keys", headers=shop.auth)).json()["keys"]
    assert [k["domain"] for k in listed] == [domain]
    await expect(row.locator(".dns-value")).to_have_text(listed[0]["dns_record_value"])
    assert listed[0]["dns_record_value"].startswith("v=DKIM1")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360

    await row.get_by_role("button", name=f"Delete the key of {domain}").click()
    await expect(row).to_have_count(0, timeout=WAIT_MS)
    assert (await http.get("/v1/dkim-keys", headers=shop.auth)).json()["keys"] == []
    await context.close()


async def test_a_viewer_created_from_the_team_signs_in_and_can_change_nothing(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    viewer = f"{unique('viewer')}@example.com"
    owner_context = await browser.new_context()
    page = await owner_context.new_page()
    await open_settings(page, system, shop.owner)
    await page.fill("#manager-new-email", viewer)
    await page.fill("#manager-new-password", "short")
    await page.select_option("#manager-new-role", "viewer")
    await page.locator("#manager-create").click()
    await expect(page.locator("#manager-new-password-error")).not_to_be_empty(timeout=WAIT_MS)
    await page.fill("#manager-new-password", PASSWORD)
    await page.locator("#manager-create").click()
    await expect(page.locator(".manager", has_text=viewer)).to_contain_text(
        "viewer", timeout=WAIT_MS
    )
    team = (await http.get("/v1/managers", headers=shop.auth)).json()["managers"]
    assert {m["email"]: m["role"] for m in team}[viewer] == "viewer"
    await owner_context.close()

    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    await open_settings(page, system, viewer)
    await expect(page.locator("#consent-required")).to_be_disabled(timeout=WAIT_MS)
    await expect(page.locator("#cap-messages")).to_be_disabled(timeout=WAIT_MS)
    await expect(page.locator("#settings-dkim")).to_contain_text(
        "No sending domain", timeout=WAIT_MS
    )
    await expect(page.locator("#read-only")).to_be_visible()
    # Nothing to press: no save, create, delete, revoke or remove; no keys nor team asked for.
    assert await page.locator("#page button").count() == 0
    assert await page.locator("#page form input:not([disabled])").count() == 0
    await expect(page.locator("#settings-keys, #settings-team")).to_have_count(0)

    # And the gateway refuses the viewer's change anyway, even with the CSRF token.
    status = await page.evaluate(
        """async () => {
            const token = (await (await fetch('/v1/session')).json()).csrf_token;
            const r = await fetch('/v1/workspace/settings', {method: 'PATCH',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': token},
                body: JSON.stringify({name: 'Changed by a viewer'})});
            return r.status;
        }"""
    )
    assert status == 403
    kept = (await http.get("/v1/workspace/settings", headers=shop.auth)).json()
    assert kept["name"] == "Bottega Ada"
    await context.close()


async def test_sender_names_and_team_emails_are_shown_as_text_and_never_run(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    # The API takes plain ASCII addresses only (no < > " '): the odd ones it takes, verbatim.
    odd = f"o_brien+{unique('x')}@example.com"
    await new_manager_named(http, shop.api_key, odd)
    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    watched = watch(page)
    await open_settings(page, system, shop.owner)
    name = f"Shop {SCRIPT}{IMG}"
    await page.fill("#sender-name", name)
    await page.locator("#workspace-save").click()
    await expect(page.locator("#workspace-status")).to_have_text("Saved.", timeout=WAIT_MS)
    assert (await http.get("/v1/workspace/settings", headers=shop.auth)).json()["name"] == name
    await expect(page.locator("#workspace-name")).to_have_text(name)
    await expect(page.locator(".manager-email", has_text="o_brien+")).to_have_text(
        odd, timeout=WAIT_MS
    )
    # A manager typed markup as an e-mail: the server's refusal, quoting it, is text too.
    await page.fill("#manager-new-email", f"{SCRIPT}@example.com")
    await page.fill("#manager-new-password", PASSWORD)
    await page.locator("#manager-create").click()
    await expect(page.locator("#manager-new-email-error")).not_to_be_empty(timeout=WAIT_MS)

    await page.reload()
    await expect(page.locator("#sender-name")).to_have_value(name, timeout=WAIT_MS)
    assert await page.evaluate("window.__xss") is None
    assert await page.locator("img").count() == 0
    assert await page.locator("script").count() == 1
    assert watched.csp_violations() == [] and watched.exceptions == []
    assert await page.evaluate("document.documentElement.scrollWidth") <= 360
    await context.close()


async def new_manager_named(http: httpx.AsyncClient, api_key: str, email: str) -> None:
    made = await http.post(
        "/v1/managers",
        json={"email": email, "password": PASSWORD, "role": "manager"},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert made.status_code == 201, made.text


async def keep_count(
    system: System, workspace_id: str, segment_id: str, days_ago: int, count: int
) -> None:
    """A count segmentation kept ``days_ago`` days ago (UTC), as its first count of that day
    would have left it (migration 0060)."""
    day = datetime.now(UTC).date() - timedelta(days=days_ago)
    conn = await asyncpg.connect(system.env["DATABASE_URL"])
    try:
        await conn.execute(
            "INSERT INTO segmentation.segment_count_snapshots"
            " (workspace_id, segment_id, day, count) VALUES ($1, $2, $3, $4)",
            uuid.UUID(workspace_id),
            segment_id,
            day,
            count,
        )
    finally:
        await conn.close()


async def kept_today(system: System, workspace_id: str, segment_id: str) -> int | None:
    conn = await asyncpg.connect(system.env["DATABASE_URL"])
    try:
        value = await conn.fetchval(
            "SELECT count FROM segmentation.segment_count_snapshots"
            " WHERE workspace_id = $1 AND segment_id = $2 AND day = $3",
            uuid.UUID(workspace_id),
            segment_id,
            datetime.now(UTC).date(),
        )
    finally:
        await conn.close()
    return None if value is None else int(value)


async def test_the_overview_shows_each_segments_change_against_the_count_kept_30_days_ago(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    ours = await new_shop(system, http)
    theirs = await new_shop(system, http, name="Other shop")
    for _ in range(2):
        await post(
            http, ours, "/v1/contacts", {"email": f"{unique('vip')}@example.com", "vip": True}
        )
    mine = await post(http, ours, "/v1/segments", {"name": "My VIPs", "rule": {"segment": "vip"}})

    async def two_vips() -> bool:
        answer = await http.get("/v1/segments/vip/count", headers=ours.auth)
        return answer.status_code == 200 and answer.json()["count"] == 2

    await eventually(two_vips, timeout=60)
    # vip: 29 days ago is too recent, 45 too old; 31 days ago (5) is the one. Another
    # workspace's count of 30 days ago (99) is never ours. My VIPs had none 31 days ago.
    await keep_count(system, ours.workspace_id, "vip", 29, 50)
    await keep_count(system, ours.workspace_id, "vip", 31, 5)
    await keep_count(system, ours.workspace_id, "vip", 45, 100)
    await keep_count(system, theirs.workspace_id, "vip", 30, 99)
    await keep_count(system, ours.workspace_id, mine["id"], 30, 0)

    answer = (await http.get("/v1/segments/vip/count", headers=ours.auth)).json()
    assert answer["count"] == 2 and answer["count_30_days_ago"] == 5
    day = datetime.now(UTC).date() - timedelta(days=31)
    assert answer["count_30_days_ago_day"] == day.isoformat()
    assert await kept_today(system, ours.workspace_id, "vip") == 2  # today's, for next month
    past = (
        await http.get(
            "/v1/segments/vip/count",
            params={"as_of": datetime.now(UTC).isoformat()},
            headers=ours.auth,
        )
    ).json()
    assert past["count_30_days_ago"] is None  # a count at a given time is not today's

    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    await sign_in(page, system, ours.owner)
    await expect(page.locator('[data-segment-id="vip"] .delta')).to_have_text(
        "\u22123 in 31 days"  # a minus sign, timeout=WAIT_MS
    )
    await expect(page.locator('[data-segment-id="vip"] .change')).to_have_class("change down")
    await expect(page.locator(f'[data-segment-id="{mine["id"]}"] .delta')).to_have_text(
        "+2 in 30 days", timeout=WAIT_MS
    )
    await expect(page.locator('[data-segment-id="lost_loyal"] .delta')).to_have_text(
        "no count from 30 days ago yet", timeout=WAIT_MS
    )
    await context.close()


async def test_the_owner_makes_a_manager_a_viewer_whose_next_post_is_refused(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    manager = await console.new_manager(http, shop.api_key, "manager")
    team = (await http.get("/v1/managers", headers=shop.auth)).json()["managers"]
    manager_id = {m["email"]: m["id"] for m in team}[manager]

    manager_context = await browser.new_context()
    manager_page = await manager_context.new_page()
    await open_settings(manager_page, system, manager)
    await expect(manager_page.locator("#cap-save")).to_be_visible(timeout=WAIT_MS)

    owner_context = await browser.new_context()
    page = await owner_context.new_page()
    watched = watch(page)
    await open_settings(page, system, shop.owner)
    role = page.locator(f"#manager-{manager_id}-role")
    await expect(role).to_have_value("manager", timeout=WAIT_MS)
    await role.select_option("viewer")
    await expect(page.locator(".manager", has_text=manager)).to_contain_text(
        "viewer", timeout=WAIT_MS
    )
    await expect(page.locator(f"#manager-{manager_id}-role")).to_have_value("viewer")
    team = (await http.get("/v1/managers", headers=shop.auth)).json()["managers"]
    assert {m["email"]: m["role"] for m in team}[manager] == "viewer"

    # The page the manager still has open: its next change is refused (the session ended,
    # back to sign-in), and once signed in again the viewer may only read.
    await manager_page.fill("#cap-messages", "4")
    await manager_page.locator("#cap-save").click()
    await expect(manager_page.locator("#login-email")).to_be_visible(timeout=WAIT_MS)
    await open_settings(manager_page, system, manager)
    await expect(manager_page.locator("#read-only")).to_be_visible(timeout=WAIT_MS)
    status = await manager_page.evaluate(
        """async () => {
            const token = (await (await fetch('/v1/session')).json()).csrf_token;
            const r = await fetch('/v1/campaign-settings', {method: 'PATCH',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': token},
                body: JSON.stringify({frequency_cap_messages: 4})});
            return r.status;
        }"""
    )
    assert status == 403
    cap = (await http.get("/v1/campaign-settings", headers=shop.auth)).json()
    assert cap["frequency_cap_messages"] == 1
    # The last owner has no select of their own: another owner changes it.
    assert await page.locator(".manager", has_text=shop.owner).locator("select").count() == 0
    assert watched.exceptions == [] and watched.errors == []
    await owner_context.close()
    await manager_context.close()


async def test_a_default_reply_to_set_on_settings_answers_campaigns_that_name_none(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    default = f"{unique('replies')}@shop.example"
    context = await browser.new_context()
    page = await context.new_page()
    watched = watch(page)
    await open_settings(page, system, shop.owner)
    await page.fill("#default-reply-to", "not an address")
    await page.locator("#reply-to-save").click()
    await expect(page.locator("#default-reply-to-error")).not_to_be_empty(timeout=WAIT_MS)
    await page.fill("#default-reply-to", default)
    await page.locator("#reply-to-save").click()
    await expect(page.locator("#reply-to-status")).to_have_text("Saved.", timeout=WAIT_MS)
    await page.reload()
    await expect(page.locator("#default-reply-to")).to_have_value(default, timeout=WAIT_MS)
    assert watched.exceptions == [] and watched.errors == []
    await context.close()

    # Two campaigns to one VIP (a cap that lets both through): one names no Reply-To.
    for path, body in (
        ("/v1/workspace/settings", {"consent_required_for_campaigns": True}),
        ("/v1/campaign-settings", {"frequency_cap_messages": 5}),
    ):
        patched = await http.patch(path, json=body, headers=shop.auth)
        assert patched.status_code == 200, patched.text
    vip = f"{unique('vip')}@example.com"
    await post(
        http, shop, "/v1/contacts", {"email": vip, "vip": True, "consents": ["targeted_messages"]}
    )

    async def counted() -> bool:
        answer = await http.get("/v1/segments/vip/count", headers=shop.auth)
        return answer.status_code == 200 and answer.json()["count"] == 1

    await eventually(counted, timeout=60, interval=0.3)
    run = uuid.uuid4().hex[:8]
    subjects = {"": f"Default reply {run}", "own@shop.example": f"Own reply {run}"}
    for reply_to, subject in subjects.items():
        made = await post(
            http,
            shop,
            "/v1/campaigns",
            {
                "name": subject,
                "segment_ids": ["vip"],
                "subject": subject,
                "body_text": "Hello.",
                "reply_to": reply_to,
            },
        )
        await post(http, shop, f"/v1/campaigns/{made['id']}/send", {})

    def mails() -> dict[str, str] | None:
        found = {str(m["Subject"]): str(m["Reply-To"]) for m in system.mails()}
        wanted = {subject: found.get(subject) for subject in subjects.values()}
        return wanted if None not in wanted.values() else None  # type: ignore[return-value]

    arrived = await eventually(mails, timeout=90, interval=0.3)
    assert arrived == {subjects[""]: default, subjects["own@shop.example"]: "own@shop.example"}
