"""The tracking endpoints with a fake publisher: answers, headers, and what gets published."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from nudge.contacts.v1.contacts_pb2 import (
    CONSENT_PURPOSE_TARGETED_MESSAGES,
    Preferences,
    SetPreferencesRequest,
)
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import links
from services.common.events import deterministic_id
from services.common.topics import TRACKING_EVENTS
from services.tracking.adapters.kafka import Pending
from services.tracking.bootstrap import create_app
from services.tracking.config import Settings
from services.tracking.entrypoints.http import MAX_FORM_FIELDS, PIXEL, confirm_body, done_body

SECRET = "unit-secret"
WS, MSG, CONTACT = (str(uuid.uuid4()) for _ in range(3))
PROBLEM = "application/problem+json"


@dataclass
class FakePublisher:
    published: list[tuple[str, str, Envelope]] = field(default_factory=list)
    failure: BaseException | None = None
    broker_count: int = 1

    def offer(self, pending: Pending) -> None:
        if self.failure:
            raise self.failure
        self.published.append((pending.topic, pending.key, pending.envelope))

    async def publish(self, topic: str, key: str, envelope: Envelope) -> None:
        if self.failure:
            raise self.failure
        self.published.append((topic, key, envelope))

    async def brokers(self) -> int:
        if self.failure:
            raise self.failure
        return self.broker_count


@dataclass
class Tracking:
    http: httpx.AsyncClient
    publisher: FakePublisher


@pytest.fixture
async def tracking() -> AsyncIterator[Tracking]:
    publisher = FakePublisher()
    app = create_app(Settings(link_secret=SECRET, publish_timeout_s=1), publisher)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        yield Tracking(http, publisher)


async def test_the_pixel_is_an_uncached_gif_and_publishes_the_open(tracking: Tracking) -> None:
    path = links.sign_open(SECRET, WS, MSG, CONTACT)
    answer = await tracking.http.get(path, headers={"User-Agent": "Thunderbird/128.0"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/gif"
    assert "no-store" in answer.headers["cache-control"]
    assert answer.content == PIXEL
    [(topic, key, envelope)] = tracking.publisher.published
    assert (topic, key, envelope.workspace_id) == (TRACKING_EVENTS, CONTACT, WS)
    assert envelope.WhichOneof("payload") == "message_opened"
    opened = envelope.message_opened
    assert (opened.message_id, opened.contact_id, opened.machine_open) == (MSG, CONTACT, False)


async def test_a_proxy_open_is_flagged(tracking: Tracking) -> None:
    path = links.sign_open(SECRET, WS, MSG, CONTACT)
    await tracking.http.get(path, headers={"User-Agent": "Mozilla/5.0"})
    assert tracking.publisher.published[0][2].message_opened.machine_open


async def test_forged_and_misused_tokens_are_404_problems(tracking: Tracking) -> None:
    click = links.sign_click(SECRET, WS, MSG, CONTACT, "https://shop.example/")
    other_secret = links.sign_open("another-secret", WS, MSG, CONTACT)
    open_token = links.sign_open(SECRET, WS, MSG, CONTACT).removeprefix("/o/")
    for path in (
        other_secret,
        "/o/AAAA.gif",
        click[:-2] + "xx",
        f"/c/{open_token.removesuffix('.gif')}",  # an open token on the click route
        f"/u/{open_token.removesuffix('.gif')}",
    ):
        answer = await tracking.http.get(path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"] == PROBLEM
        assert answer.json()["detail"] == "no such link"
    assert tracking.publisher.published == []


async def test_a_click_redirects_and_publishes(tracking: Tracking) -> None:
    url = "https://shop.example/sale?utm_campaign=spring"
    answer = await tracking.http.get(
        links.sign_click(SECRET, WS, MSG, CONTACT, url), headers={"User-Agent": "Firefox"}
    )
    assert answer.status_code == 302
    assert answer.headers["location"] == url
    assert "no-store" in answer.headers["cache-control"]
    clicked = tracking.publisher.published[0][2].link_clicked
    assert (clicked.url, clicked.message_id, clicked.user_agent) == (url, MSG, "Firefox")


async def test_a_lost_click_still_redirects_and_a_lost_open_still_shows(tracking: Tracking) -> None:
    tracking.publisher.failure = ConnectionError("broker down")
    click = await tracking.http.get(
        links.sign_click(SECRET, WS, MSG, CONTACT, "https://shop.example/")
    )
    assert click.status_code == 302
    pixel = await tracking.http.get(links.sign_open(SECRET, WS, MSG, CONTACT))
    assert (pixel.status_code, pixel.content) == (200, PIXEL)


async def test_the_preference_page_asks_and_does_not_unsubscribe(tracking: Tracking) -> None:
    answer = await tracking.http.get(links.sign_unsubscribe(SECRET, WS, MSG, CONTACT))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert '<form method="post">' in answer.text
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert tracking.publisher.published == []


async def test_one_click_unsubscribe_publishes_with_one_click(tracking: Tracking) -> None:
    path = links.sign_unsubscribe(SECRET, WS, MSG, CONTACT)
    answer = await tracking.http.post(path, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    [(_, key, envelope)] = tracking.publisher.published
    assert key == CONTACT
    requested = envelope.unsubscribe_requested
    assert (requested.message_id, requested.contact_id, requested.one_click) == (MSG, CONTACT, True)


async def test_the_pages_button_unsubscribes_without_one_click(tracking: Tracking) -> None:
    path = links.sign_unsubscribe(SECRET, WS, MSG, CONTACT)
    answer = await tracking.http.post(path, data={"confirm": "unsubscribe"})
    assert answer.status_code == 200
    assert not tracking.publisher.published[0][2].unsubscribe_requested.one_click


async def test_an_unsubscribe_that_cannot_be_published_is_a_503(tracking: Tracking) -> None:
    tracking.publisher.failure = ConnectionError("broker down")
    path = links.sign_unsubscribe(SECRET, WS, MSG, CONTACT)
    answer = await tracking.http.post(path, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 503


async def test_an_oversized_unsubscribe_body_is_refused(tracking: Tracking) -> None:
    path = links.sign_unsubscribe(SECRET, WS, MSG, CONTACT)
    answer = await tracking.http.post(path, content=b"x" * 10_000)
    assert answer.status_code == 413
    assert tracking.publisher.published == []


async def test_healthz_follows_kafka(tracking: Tracking) -> None:
    ok = await tracking.http.get("/healthz")
    assert (ok.status_code, ok.json()["checks"]["kafka"]["ok"]) == (200, True)
    tracking.publisher.failure = ConnectionError("broker down")
    down = await tracking.http.get("/healthz")
    assert down.status_code == 503
    assert down.json()["status"] == "degraded"
    assert "broker down" in down.json()["checks"]["kafka"]["detail"]


async def test_each_unsubscribe_post_is_its_own_event(tracking: Tracking) -> None:
    """A later post of the same mail's link must reach contacts as a new event (a contact who
    subscribed again is unsubscribed again); repeats are harmless there, on the consent state."""
    path = links.sign_unsubscribe(SECRET, WS, MSG, CONTACT)
    for form in ({"List-Unsubscribe": "One-Click"}, {"List-Unsubscribe": "One-Click"}, {}):
        answer = await tracking.http.post(path, data=form)
        assert answer.status_code == 200
    ids = {envelope.event_id for _, _, envelope in tracking.publisher.published}
    assert len(tracking.publisher.published) == 3
    assert len(ids) == 3
    assert deterministic_id("unsubscribe", WS, MSG) not in ids


async def test_each_open_and_click_is_its_own_event(tracking: Tracking) -> None:
    pixel = links.sign_open(SECRET, WS, MSG, CONTACT)
    click = links.sign_click(SECRET, WS, MSG, CONTACT, "https://shop.example/")
    for path in (pixel, pixel, click, click):
        await tracking.http.get(path)
    ids = [envelope.event_id for _, _, envelope in tracking.publisher.published]
    assert len(set(ids)) == 4


async def test_a_form_with_too_many_fields_is_a_400_problem(tracking: Tracking) -> None:
    path = links.sign_unsubscribe(SECRET, WS, MSG, CONTACT)
    form = "&".join(f"f{i}=x" for i in range(MAX_FORM_FIELDS + 1))
    answer = await tracking.http.post(
        path, content=form, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert answer.status_code == 400
    assert answer.headers["content-type"] == PROBLEM
    problem = answer.json()
    assert problem["status"] == 400
    assert str(MAX_FORM_FIELDS) in problem["detail"]
    assert tracking.publisher.published == []
    just_enough = "&".join(["List-Unsubscribe=One-Click"] * MAX_FORM_FIELDS)
    ok = await tracking.http.post(
        path, content=just_enough, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert ok.status_code == 200


async def test_the_pages_say_what_an_unsubscribe_stops_and_what_it_does_not(
    tracking: Tracking,
) -> None:
    path = links.sign_unsubscribe(SECRET, WS, MSG, CONTACT)
    question = (await tracking.http.get(path)).text
    assert "marketing and automated e-mails from this sender" in question
    done = (await tracking.http.post(path, data={"confirm": "unsubscribe"})).text
    assert "no longer receive marketing or automated e-mails from this sender" in done
    assert "orders" in done and "will still arrive" in done


def test_the_senders_name_is_used_when_known_and_escaped() -> None:
    assert "from Shop &amp; Co &lt;3." in done_body("Shop & Co <3")
    assert "from this sender." in done_body(None)
    assert "from Shop &amp; Co &lt;3?" in confirm_body("Shop & Co <3")


def tracking_app(**settings: object) -> tuple[httpx.AsyncClient, FakePublisher, Any]:
    publisher = FakePublisher()
    app = create_app(Settings(link_secret=SECRET, **settings), publisher)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # peer 127.0.0.1
    return httpx.AsyncClient(transport=transport, base_url="http://t"), publisher, app


@pytest.mark.parametrize(
    ("trusted", "reason"),
    [(["127.0.0.1/32"], "apple_mpp"), ([], "")],
)
async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    trusted: list[str], reason: str
) -> None:
    http, publisher, app = tracking_app(trusted_proxies=trusted)
    async with app.router.lifespan_context(app), http:
        path = links.sign_open(SECRET, WS, MSG, CONTACT, issued_at=1)
        answer = await http.get(
            path, headers={"User-Agent": "Thunderbird/128.0", "X-Forwarded-For": "17.5.6.7"}
        )
        assert answer.status_code == 200
    opened = publisher.published[0][2].message_opened
    assert (opened.machine_open, opened.machine_reason) == (bool(reason), reason)


async def test_a_click_carries_its_index_and_a_scanners_network_flags_it() -> None:
    http, publisher, app = tracking_app(machine_networks=["127.0.0.0/8"])
    async with app.router.lifespan_context(app), http:
        url = "https://shop.example/a"
        path = links.sign_click(SECRET, WS, MSG, CONTACT, url, link_index=4, issued_at=1)
        answer = await http.get(path, headers={"User-Agent": "Firefox/133.0"})
        assert (answer.status_code, answer.headers["location"]) == (302, url)
    clicked = publisher.published[0][2].link_clicked
    assert (clicked.link_index, clicked.machine_click, clicked.machine_reason) == (
        4,
        True,
        "scanner_network",
    )


async def test_oversized_and_wrong_workspace_tokens_are_404_and_publish_nothing(
    tracking: Tracking,
) -> None:
    path = links.sign_click(
        SECRET, WS, MSG, CONTACT, "https://shop.example/", link_index=0, issued_at=1
    )
    token = path.removeprefix("/c/")
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[3:19] = uuid.uuid4().bytes  # the same link, claimed for another workspace
    other_workspace = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for bad in (
        "/c/" + "A" * 7000,  # longer than any token
        "/o/" + "A" * 60_000 + ".gif",
        "/c/" + other_workspace,
    ):
        answer = await tracking.http.get(bad)
        assert answer.status_code == 404, bad[:20]
        assert answer.headers["content-type"] == PROBLEM
    assert tracking.publisher.published == []


@dataclass
class FakeConsent:
    prefs: Preferences

    async def get_preferences(self, claims: links.LinkClaims) -> Preferences:
        return Preferences(
            marketing=self.prefs.marketing,
            targeted_messages=self.prefs.targeted_messages,
            automations=self.prefs.automations,
        )

    async def set_preferences(
        self, claims: links.LinkClaims, request: SetPreferencesRequest
    ) -> Preferences:
        self.prefs = Preferences(
            marketing=request.marketing,
            targeted_messages=request.targeted_messages,
            automations=request.automations,
        )
        return self.prefs

    async def confirm(self, *args: object) -> object:
        raise NotImplementedError


async def test_the_preference_page_publishes_what_a_post_changed_and_nothing_otherwise() -> None:
    publisher = FakePublisher()
    consent = FakeConsent(Preferences(marketing=True, targeted_messages=True))
    app = create_app(Settings(link_secret=SECRET), publisher, consent)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    path = links.sign_preferences(SECRET, WS, MSG, CONTACT)
    form = {"token": path.removeprefix("/p/"), "action": "save", "marketing": "on"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        assert (await http.post(path, data=form)).status_code == 200
        assert (await http.post(path, data=form)).status_code == 200  # nothing changes
    [(topic, key, envelope)] = publisher.published
    assert (topic, key, envelope.workspace_id) == (TRACKING_EVENTS, CONTACT, WS)
    changed = envelope.preferences_changed
    assert list(changed.subscribed) == []
    assert list(changed.unsubscribed) == [CONSENT_PURPOSE_TARGETED_MESSAGES]
    assert changed.message_id == MSG


async def test_a_head_request_answers_like_a_get_and_records_nothing(tracking: Tracking) -> None:
    """Link checkers send HEAD; no reader's browser does."""
    url = "https://shop.example/a"
    path = links.sign_click(SECRET, WS, MSG, CONTACT, url, link_index=0, issued_at=1)
    answer = await tracking.http.head(path)
    assert (answer.status_code, answer.headers["location"]) == (302, url)
    pixel = await tracking.http.head(links.sign_open(SECRET, WS, MSG, CONTACT))
    assert pixel.status_code == 200
    assert tracking.publisher.published == []
    assert (await tracking.http.get(path)).status_code == 302
    assert len(tracking.publisher.published) == 1
