"""The web console (issue 18) in a real Chromium, over the whole system as ``make run`` starts
it: sign-in, the sign-in throttle, sign-out, CSRF and roles from the browser, the Overview
with a workspace's data and never another's, and what managers typed shown as text, never
run, at 360 px and 1280 px.

The browser is Debian's ``chromium`` driven by Playwright for Python through
``executable_path`` (Playwright's own builds cannot be downloaded on every machine). Without
a Chromium, or without Playwright, these tests are skipped and say so (``-ra`` prints why);
``apt-get install -y chromium`` brings one.

Every request of the browser comes from 127.0.0.1: each test first forgets that address's
failed sign-ins in Redis, so the per-address throttle of one test never blocks the next.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from deploy.local.supervisor import DEMO_OWNER, banner, demo_owner, demo_workspace
from tests.e2e.conftest import System
from tests.support import eventually, unique

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the dev extra installs it
    async_playwright = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# .ci/run sets NUDGE_BROWSER_TESTS=required (after installing Debian's chromium): there a
# missing browser fails these tests instead of skipping them.
REQUIRED = os.environ.get("NUDGE_BROWSER_TESTS") == "required"
pytestmark = [
    pytest.mark.skipif(
        async_playwright is None and not REQUIRED,
        reason="Playwright for Python is missing: make venv",
    ),
    pytest.mark.skipif(
        CHROMIUM is None and not REQUIRED,
        reason="no Chromium on this machine: apt-get install -y chromium (Debian's), which"
        " Playwright drives through executable_path",
    ),
]

PASSWORD = "correct horse battery staple"
WAIT_MS = 30_000  # a loaded 2-core machine: generous, and only ever waited out on failure
SCRIPT = '<script>window.__xss = "script"</script>'
IMG = '"><img src=x onerror="window.__xss = \'img\'">'


@dataclass
class Shop:
    workspace_id: str
    api_key: str
    owner: str  # the owner's e-mail; the password is PASSWORD

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert async_playwright is not None, "Playwright for Python is missing: make venv"
    assert CHROMIUM is not None, (
        "no Chromium: apt-get install -y chromium (NUDGE_BROWSER_TESTS=required)"
    )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def http(system: System) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=system.gateway, timeout=30) as client:
        yield client


@pytest.fixture(autouse=True)
async def fresh_address_throttle(system: System) -> None:
    redis = aioredis.from_url(system.env["REDIS_URL"])
    try:
        await redis.delete("nudge:login-failures:addr:127.0.0.1")
    finally:
        await redis.aclose()


async def new_shop(
    system: System, http: httpx.AsyncClient, name: str = "Bottega Ada", role: str = "owner"
) -> Shop:
    async with grpc.aio.insecure_channel(system.contacts) as channel:
        answer = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name=name, slug=unique("shop")),
            metadata=system.admin,
        )
    shop = Shop(answer.workspace_id, answer.api_key, await new_manager(http, answer.api_key, role))
    return shop


async def new_manager(http: httpx.AsyncClient, api_key: str, role: str) -> str:
    email = f"{unique('manager')}@example.com"
    made = await http.post(
        "/v1/managers",
        json={"email": email, "password": PASSWORD, "role": role},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert made.status_code == 201, made.text
    return email


async def post(http: httpx.AsyncClient, shop: Shop, path: str, body: dict[str, Any]) -> Any:
    answer = await http.post(path, json=body, headers=shop.auth)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


async def vip_count(http: httpx.AsyncClient, shop: Shop) -> int:
    answer = await http.get("/v1/segments/vip/count", headers=shop.auth)
    return int(answer.json()["count"]) if answer.status_code == 200 else -1


async def fill_shop(http: httpx.AsyncClient, shop: Shop, campaign: str, subject: str) -> None:
    """Two VIPs (counted once segmentation has them), a campaign, an active automation."""
    for _ in range(2):
        await post(
            http, shop, "/v1/contacts", {"email": f"{unique('vip')}@example.com", "vip": True}
        )
    await post(
        http,
        shop,
        "/v1/campaigns",
        {
            "name": campaign,
            "segment_ids": ["vip"],
            "subject": subject,
            "body_text": "Hello",
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
    await eventually(lambda: _is(vip_count(http, shop), 2), timeout=60)


async def _is(count: Any, expected: int) -> bool:
    return bool(await count == expected)


@dataclass
class Watched:
    """What the page reported: console errors (but the failed loads we cause: a 401 before
    sign-in, a 403 we ask for) and uncaught exceptions."""

    errors: list[str]
    exceptions: list[str]

    def csp_violations(self) -> list[str]:
        return [e for e in self.errors if "Content Security Policy" in e]


def watch(page: Page) -> Watched:
    watched = Watched([], [])
    page.on(
        "console",
        lambda message: (
            watched.errors.append(message.text)
            if message.type == "error" and "Failed to load resource" not in message.text
            else None
        ),
    )
    page.on("pageerror", lambda error: watched.exceptions.append(str(error)))
    return watched


async def sign_in(page: Page, system: System, email: str, password: str = PASSWORD) -> None:
    await page.goto(f"{system.gateway}/console")
    await page.fill("#login-email", email)
    await page.fill("#login-password", password)
    await page.get_by_role("button", name="Sign in").click()


async def screenshot(page: Page, name: str) -> None:
    """With NUDGE_CONSOLE_SCREENSHOTS=DIR, the page as the README shows it (docs/console/;
    Playwright makes the directory)."""
    folder = os.environ.get("NUDGE_CONSOLE_SCREENSHOTS")
    if folder:
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


@pytest.mark.parametrize(("width", "label"), [(1280, "desktop"), (360, "mobile")])
async def test_a_manager_signs_in_after_a_wrong_password_sees_the_overview_and_signs_out(
    system: System, http: httpx.AsyncClient, browser: Browser, width: int, label: str
) -> None:
    shop = await new_shop(system, http)
    await fill_shop(http, shop, "Thursday's producers", "Bottega Ada: three new producers")
    context = await browser.new_context(viewport={"width": width, "height": 800})
    page = await context.new_page()
    watched = watch(page)

    await sign_in(page, system, shop.owner, "not the password")
    await expect(page.locator("#login-error")).to_have_text(
        "Wrong e-mail or password.", timeout=WAIT_MS
    )
    await page.fill("#login-password", PASSWORD)
    await page.get_by_role("button", name="Sign in").click()

    await expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#workspace-name")).to_have_text("Bottega Ada")
    await expect(page.locator("#sending-state")).to_have_text("Sending is active", timeout=WAIT_MS)
    await expect(page.locator('[data-segment-id="vip"] .count')).to_have_text("2", timeout=WAIT_MS)
    await expect(page.locator(".campaign .row-title")).to_have_text(
        "Thursday's producers", timeout=WAIT_MS
    )
    await expect(page.locator(".workflow .row-title")).to_have_text(
        "Carts left behind", timeout=WAIT_MS
    )
    cookie = next(c for c in await context.cookies() if c["name"] == "nudge_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""  # scripts cannot read the session
    # Every lifecycle segment gets its count and its change (none still loading, none failed).
    await expect(page.locator(".segment .count", has_text="…")).to_have_count(0, timeout=WAIT_MS)
    await expect(page.locator(".segment .count", has_text="\u2013")).to_have_count(0)
    assert await page.evaluate("document.documentElement.scrollWidth") <= width
    # A recent campaign's name opens it (a draft: its editor).
    await page.locator(".campaign .row-title").click()
    await expect(page.locator("#campaign-name")).to_have_value(
        "Thursday's producers", timeout=WAIT_MS
    )

    await page.locator("#sign-out").click()
    await expect(page.get_by_role("heading", name="Sign in to Nudge")).to_be_visible(
        timeout=WAIT_MS
    )
    assert "nudge_session" not in [c["name"] for c in await context.cookies()]
    # The cookie the browser held is dead on the server too, whoever replays it.
    async with httpx.AsyncClient(
        base_url=system.gateway, cookies={"nudge_session": cookie["value"]}
    ) as replay:
        assert (await replay.get("/v1/session")).status_code == 401
    assert watched.errors == [] and watched.exceptions == []
    await context.close()


async def test_the_browser_shows_the_throttle_after_five_failed_sign_ins(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    context = await browser.new_context(viewport={"width": 360, "height": 740})
    page = await context.new_page()
    await page.goto(f"{system.gateway}/console")
    await page.fill("#login-email", shop.owner)
    error = page.locator("#login-error")
    for attempt in range(5):
        await page.fill("#login-password", f"wrong password {attempt}")
        await page.get_by_role("button", name="Sign in").click()
        await expect(error).to_have_text("Wrong e-mail or password.", timeout=WAIT_MS)
        await page.evaluate("document.getElementById('login-error').textContent = ''")
    await page.fill("#login-password", PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(error).to_contain_text("Too many failed sign-ins", timeout=WAIT_MS)
    await expect(page.get_by_role("heading", name="Overview")).to_have_count(0)
    # Throttled, even the right password opens no session.
    assert not [c for c in await context.cookies() if c["name"].endswith("nudge_session")]
    await context.close()


async def test_from_the_browser_a_post_needs_the_csrf_token_and_a_viewer_may_not_post(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    shop = await new_shop(system, http)
    viewer = await new_manager(http, shop.api_key, "viewer")
    fetch = """async ([path, token]) => {
        const headers = {'Content-Type': 'application/json'};
        if (token) headers['X-CSRF-Token'] = token;
        const email = 'x' + Math.random().toString(16).slice(2) + '@example.com';
        const r = await fetch(path, {method: 'POST', headers, credentials: 'same-origin',
            body: JSON.stringify({email})});
        return r.status;
    }"""
    token_of = "async () => (await (await fetch('/v1/session')).json()).csrf_token"
    for email, with_token in ((shop.owner, 201), (viewer, 403)):
        context = await browser.new_context()
        page = await context.new_page()
        await sign_in(page, system, email)
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=WAIT_MS)
        token = await page.evaluate(token_of)
        assert await page.evaluate(fetch, ["/v1/contacts", ""]) == 403  # the cookie alone
        assert await page.evaluate(fetch, ["/v1/contacts", token]) == with_token, email
        await context.close()


async def test_the_overview_never_shows_another_workspaces_data(
    system: System, http: httpx.AsyncClient, browser: Browser
) -> None:
    ours = await new_shop(system, http)
    theirs = await new_shop(system, http, name="Other shop")
    await fill_shop(http, ours, "Our campaign", "Bottega Ada news")
    await post(
        http,
        theirs,
        "/v1/campaigns",
        {"name": "Their campaign", "segment_ids": ["vip"], "subject": "Other", "body_text": "x"},
    )
    await post(http, theirs, "/v1/segments", {"name": "Their segment", "rule": {"segment": "vip"}})
    context = await browser.new_context()
    page = await context.new_page()
    await sign_in(page, system, ours.owner)
    await expect(page.locator(".campaign .row-title")).to_have_text(
        ["Our campaign"], timeout=WAIT_MS
    )
    await expect(page.locator("#custom-segments")).to_contain_text(
        "No segments of your own yet.", timeout=WAIT_MS
    )
    body = await page.locator("body").inner_text()
    assert "Their campaign" not in body and "Their segment" not in body and "Other shop" not in body
    await context.close()


@pytest.mark.parametrize("width", [360, 1280])
async def test_what_managers_typed_is_shown_as_text_and_never_runs(
    system: System, http: httpx.AsyncClient, browser: Browser, width: int
) -> None:
    shop = await new_shop(system, http, name=f"Shop {IMG}")
    await fill_shop(http, shop, f"Spring {SCRIPT}", f"Bottega {IMG}")
    await post(
        http, shop, "/v1/segments", {"name": f"VIPs {SCRIPT}{IMG}", "rule": {"segment": "vip"}}
    )
    context = await browser.new_context(viewport={"width": width, "height": 800})
    page = await context.new_page()
    watched = watch(page)
    answer = await page.goto(f"{system.gateway}/console")
    assert answer is not None
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    await sign_in(page, system, shop.owner)

    await expect(page.locator(".campaign .row-title")).to_have_text(
        f"Spring {SCRIPT}", timeout=WAIT_MS
    )
    await expect(page.locator(".campaign .subject")).to_have_text(f"Bottega {IMG}")
    await expect(page.locator("#workspace-name")).to_have_text(f"Shop {IMG}")
    await expect(page.locator("#custom-segments .segment-name")).to_have_text(
        f"VIPs {SCRIPT}{IMG}", timeout=WAIT_MS
    )
    await expect(page.locator("#custom-segments .count")).to_have_text("2", timeout=WAIT_MS)
    assert await page.evaluate("window.__xss") is None
    assert await page.locator("img").count() == 0
    assert await page.locator("script").count() == 1  # our own module, nothing else
    assert watched.csp_violations() == [] and watched.errors == []
    assert watched.exceptions == []
    # Nothing wider than the screen: no sideways scrolling at 360 px.
    assert await page.evaluate("document.documentElement.scrollWidth") <= width

    # The listener does see a violation when there is one, and the policy does block it.
    await page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__xss = \"inline\"'; document.body.append(s); }"
    )
    await eventually(lambda: bool(watched.csp_violations()), timeout=10)
    assert await page.evaluate("window.__xss") is None
    await context.close()


def cli(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    """``nudge ...`` as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_runs_demo_workspace_has_an_owner_who_signs_in(system: System, tmp_path: Path) -> None:
    """deploy/local/supervisor.py: the demo workspace's owner, created by `nudge managers
    create`, printed in the banner, kept across runs (its password in demo.json)."""
    demo = demo_workspace(tmp_path, system.env)
    owner = demo_owner(tmp_path, system.env, demo)
    assert owner["console_email"] == DEMO_OWNER
    text = banner(system.env, {**demo, **owner}, tmp_path)
    assert f"{system.gateway}/console" in text and owner["console_password"] in text
    kept = json.loads((tmp_path / "demo.json").read_text())
    assert kept["console_password"] == owner["console_password"]
    # The next `make run` finds the account and shows the same password.
    again = demo_owner(tmp_path, system.env, {**demo_workspace(tmp_path, system.env)})
    assert again["console_password"] == owner["console_password"]
    signed_in = httpx.post(
        f"{system.gateway}/v1/session",
        json={"email": DEMO_OWNER, "password": owner["console_password"]},
        timeout=30,
    )
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["manager"]["role"] == "owner"
    # The operator's CLI lists the account (internal token and --workspace, from the env).
    listed = cli(system.env, "managers", "list", "--workspace", str(demo["workspace_id"]))
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["email"], r["role"]) for r in rows] == [(DEMO_OWNER, "owner")]
    lost = cli({**system.env, "NUDGE_API_KEY": ""}, "managers", "list")
    assert lost.returncode == 2 and "--workspace" in lost.stderr
