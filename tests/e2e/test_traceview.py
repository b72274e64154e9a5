"""The trace viewer that ``make run TRACES=jaeger`` serves on Jaeger's port
(deploy/local/traceview), in Chromium.

Jaeger itself is not started here: it is a 121 MB binary built in minutes with Go, which a
fresh clone (CI) does not have. Jaeger's HTTP API is answered instead from a recording of
the real one (``fixtures/jaeger_signup_trace.json``: ``GET /api/traces/{id}`` of a signup's
welcome mail, 19 spans across six services, recorded from Jaeger v1.76.0 under ``make run
TRACES=jaeger``), and the viewer's files are served from the repository as Jaeger serves them
(``/static/...`` from the folder, ``index.html`` for every other path). What is tested is the
viewer's own logic: the span tree, the search across services, errors, and that span data
stays text.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from playwright.async_api import Browser, Page, Route, expect

from deploy.local.jaeger import TRACEVIEW
from tests.e2e.test_console import browser, pytestmark

__all__ = ["browser", "pytestmark"]

ORIGIN = "http://jaeger.test"
RECORDED = json.loads((Path(__file__).parent / "fixtures" / "jaeger_signup_trace.json").read_text())
TRACE = RECORDED["data"][0]
WAIT_MS = 30_000


def attribute(span: dict[str, Any], key: str) -> Any:
    return next((tag["value"] for tag in span["tags"] if tag["key"] == key), None)


SMTP = next(span for span in TRACE["spans"] if span["operationName"] == "smtp send")
MESSAGE_ID = attribute(SMTP, "nudge.message_id")
SERVICES = sorted({process["serviceName"] for process in TRACE["processes"].values()})


class FakeJaegerApi:
    """Answers the viewer's requests as Jaeger v1.76.0 does, from the recorded trace; keeps
    the API requests it saw."""

    def __init__(self, trace: dict[str, Any]) -> None:
        self.trace = trace
        self.asked: list[str] = []

    async def handle(self, route: Route) -> None:
        url = urlsplit(route.request.url)
        if url.path.startswith("/static/"):
            file = TRACEVIEW / url.path.lstrip("/")
            kind = "text/css" if file.suffix == ".css" else "text/javascript"
            await route.fulfill(body=file.read_bytes(), content_type=kind)
        elif url.path.startswith("/api/"):
            self.asked.append(route.request.url)
            status, body = self.answer(url.path, parse_qs(url.query))
            await route.fulfill(status=status, json=body)
        else:
            await route.fulfill(
                body=(TRACEVIEW / "index.html").read_bytes(), content_type="text/html"
            )

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        if path == "/api/services":
            return 200, {"data": [*SERVICES, "jaeger"], "errors": None}
        if path == f"/api/traces/{self.trace['traceID']}":
            return 200, {"data": [self.trace], "errors": None}
        if path.startswith("/api/traces/"):
            return 404, {"data": None, "errors": [{"code": 404, "msg": "trace not found"}]}
        if path == "/api/traces":
            service = query["service"][0]
            tags = json.loads(query.get("tags", ["{}"])[0])
            hits = [
                span
                for span in self.trace["spans"]
                if self.trace["processes"][span["processID"]]["serviceName"] == service
                and all(attribute(span, key) == value for key, value in tags.items())
            ]
            return 200, {"data": [self.trace] if hits else [], "errors": None}
        return 404, {"data": None, "errors": [{"code": 404, "msg": "no such route"}]}


async def viewer(browser: Browser, trace: dict[str, Any] = TRACE) -> tuple[Page, FakeJaegerApi]:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    api = FakeJaegerApi(trace)
    await page.route(f"{ORIGIN}/**", api.handle)
    return page, api


async def test_a_trace_is_a_tree_of_every_span_and_a_span_opens_its_attributes(
    browser: Browser,
) -> None:
    page, _ = await viewer(browser)
    await page.goto(f"{ORIGIN}/trace/{TRACE['traceID']}")
    rows = page.locator("ol.spans > li > button.span")
    await expect(rows).to_have_count(len(TRACE["spans"]), timeout=WAIT_MS)
    assert await page.locator("h1").inner_text() == "nudge-gateway: POST /v1/events"
    facts = await page.locator(".facts").inner_text()
    assert f"{len(TRACE['spans'])} spans" in facts and f"{len(SERVICES)} services" in facts

    # Depth is the chain of parents: the hand-off sits under delivery's record, itself
    # under the triggers' evaluation, under contacts' RPC, under the gateway's request.
    def depth_of(span_id: str) -> int:
        by_id = {span["spanID"]: span for span in TRACE["spans"]}
        depth, span = 0, by_id[span_id]
        while span["references"] and span["references"][0]["spanID"] in by_id:
            depth, span = depth + 1, by_id[span["references"][0]["spanID"]]
        return depth

    indents = await page.eval_on_selector_all(
        "button.span",
        "rows => rows.map(r => [r.dataset.span, Number(r.dataset.depth)])",
    )
    assert dict(indents) == {span["spanID"]: depth_of(span["spanID"]) for span in TRACE["spans"]}
    # Rows are in tree order: each span after its parent.
    order = [span for span, _ in indents]
    for span in TRACE["spans"]:
        for ref in span["references"]:
            if ref["spanID"] in order:
                assert order.index(ref["spanID"]) < order.index(span["spanID"])

    smtp = page.locator(f"button.span[data-span='{SMTP['spanID']}']")
    assert f"message={MESSAGE_ID}" in await smtp.inner_text()
    assert await smtp.get_attribute("aria-expanded") == "false"
    await smtp.click()
    assert await smtp.get_attribute("aria-expanded") == "true"
    details = page.locator(f"li:has(> button[data-span='{SMTP['spanID']}']) .details")
    await expect(details).to_be_visible(timeout=WAIT_MS)
    text = await details.inner_text()
    assert "nudge.message_id" in text and MESSAGE_ID in text and "Process: nudge-delivery" in text
    await page.close()


async def test_a_message_id_finds_its_trace_by_asking_every_nudge_service(browser: Browser) -> None:
    page, api = await viewer(browser)
    await page.goto(f"{ORIGIN}/")
    await page.get_by_label("Trace id, or a message or contact id").fill(MESSAGE_ID)
    await page.get_by_role("button", name="Search").click()
    found = page.locator("table.results tbody tr")
    await expect(found).to_have_count(1, timeout=WAIT_MS)
    assert TRACE["traceID"] in await found.inner_text()
    asked = [parse_qs(urlsplit(url).query) for url in api.asked if "tags=" in url]
    assert sorted({q["service"][0] for q in asked}) == SERVICES  # never Jaeger's own
    assert {
        json.loads(q["tags"][0])["nudge.message_id"] for q in asked if "message" in q["tags"][0]
    } == {MESSAGE_ID}
    # The result opens the trace; Back returns to the search with its query kept.
    await found.get_by_role("link").click()
    await expect(page.locator("ol.spans > li")).to_have_count(len(TRACE["spans"]), timeout=WAIT_MS)
    await page.go_back()
    await expect(found).to_have_count(1, timeout=WAIT_MS)
    assert (
        await page.get_by_label("Trace id, or a message or contact id").input_value() == MESSAGE_ID
    )
    await page.close()


async def test_a_trace_id_opens_it_and_bad_or_unknown_ids_are_said_plainly(
    browser: Browser,
) -> None:
    page, _ = await viewer(browser)
    await page.goto(f"{ORIGIN}/")
    query = page.get_by_label("Trace id, or a message or contact id")
    await query.fill(TRACE["traceID"].upper())
    await query.press("Enter")
    await expect(page.locator("ol.spans > li")).to_have_count(len(TRACE["spans"]), timeout=WAIT_MS)
    assert page.url == f"{ORIGIN}/trace/{TRACE['traceID']}"

    await page.goto(f"{ORIGIN}/trace/{'0' * 31}1")
    alert = page.get_by_role("alert")
    await expect(alert).to_be_visible(timeout=WAIT_MS)
    assert await alert.inner_text() == "Jaeger answered 404: trace not found"

    await page.goto(f"{ORIGIN}/?q=not-an-id")
    await expect(alert).to_be_visible(timeout=WAIT_MS)
    assert "neither a trace id (hex) nor a message or contact id (UUID)" in await alert.inner_text()
    await page.close()


async def test_span_names_and_attributes_are_shown_as_text_never_run(browser: Browser) -> None:
    hostile = copy.deepcopy(TRACE)
    markup = "<img src=x onerror=\"window.__xss = 'img'\">"
    hostile["spans"][0]["operationName"] = markup
    hostile["spans"][0]["tags"].append(
        {"key": "nudge.contact_id", "type": "string", "value": markup}
    )
    page, _ = await viewer(browser, hostile)
    await page.goto(f"{ORIGIN}/trace/{TRACE['traceID']}")
    await expect(page.locator("ol.spans > li")).to_have_count(len(TRACE["spans"]), timeout=WAIT_MS)
    await page.locator("button.span").first.click()
    assert markup in await page.locator("ol.spans").inner_text()
    assert await page.locator("ol.spans img").count() == 0
    assert await page.evaluate("window.__xss") is None
    await page.close()
