"""The manager's campaign flows of seeds 000, 001 and 003, end to end through the gateway, on
the whole system as ``make run`` starts it (every service a process; real PostgreSQL, Kafka
and SMTP).

- Seed 000: three built-in segments (activation, reactivation, VIP), a four-line message
  whose subject names the shop, the audience numbers, no warnings, the send, one mail per
  contact even when a contact is in two segments, and the report with open and click rates.
- Seed 003: who opened or clicked but did not order is the salesperson's call list; an order
  within five days of a click is attributed instead.
- Seed 001: a tag filter, the consent warning with the workspace's "only consented" setting
  off (the send needs the confirmed number), and the anti-spam guard's block.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import parseaddr, parsedate_to_datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from nudge.delivery.v1 import events_pb2

from services.common.events import new_envelope
from services.common.topics import DELIVERY_EVENTS
from tests.e2e.conftest import System
from tests.e2e.test_welcome_path import new_workspace
from tests.support import eventually, unique

FOUR_LINES = (
    'Hello {{ contact.first_name | default("there") }},\n'
    "three new producers join us this Thursday.\n"
    "[See what they bring](https://shop.example/producers).\n"
    "See you at the distribution!"
)
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"


def manager(system: System, api_key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=system.gateway, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    )


def ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


async def contact(http: httpx.AsyncClient, email: str, **fields: Any) -> str:
    answer = await http.post("/v1/contacts", json={"email": email, **fields})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def event(http: httpx.AsyncClient, email: str, kind: str, at: str, **data: Any) -> None:
    answer = await http.post(
        "/v1/events",
        json={
            "idempotency_key": unique("evt"),
            "type": kind,
            "contact": {"email": email},
            "occurred_at": at,
            **({"data": data} if data else {}),
        },
    )
    assert answer.status_code in (200, 201, 202), answer.text


async def segment_size(http: httpx.AsyncClient, segment_id: str) -> int:
    answer = await http.get(f"/v1/segments/{segment_id}/count")
    assert answer.status_code == 200, answer.text
    return int(answer.json()["count"])


async def sizes_reach(http: httpx.AsyncClient, expected: dict[str, int]) -> None:
    async def reached() -> bool:
        return {s: await segment_size(http, s) for s in expected} == expected

    await eventually(reached, timeout=60, interval=0.3)


def campaign_mails(system: System, subject: str) -> list[EmailMessage]:
    return [m for m in system.mails() if str(m["Subject"]) == subject]


def to(mail: EmailMessage) -> str:
    return parseaddr(str(mail["To"]))[1]


def tracked(mail: EmailMessage) -> tuple[str, str]:
    """The mail's open pixel and its first tracked link (absolute URLs)."""
    html_part = mail.get_body(("html",))
    assert html_part is not None, "a campaign mail has an HTML part (the open pixel)"
    html = html_part.get_content()
    pixel = re.search(r'src="(https?://[^"]+/o/[^"]+\.gif)"', html)
    link = re.search(r'href="(https?://[^"]+/c/[^"]+)"', html)
    assert pixel and link, html
    return pixel.group(1), link.group(1).replace("&amp;", "&")


async def human_wait(mail: EmailMessage) -> None:
    """Tracking calls an open within 2 s of the mail's issue a machine's (docs/tracking.md,
    ``too_soon``): a person reads it later. Awaits the wall clock passing the mail's Date
    (whole seconds) plus 3 s, both wall-clock readings."""
    issued = parsedate_to_datetime(str(mail["Date"])).timestamp()
    await eventually(lambda: time.time() > issued + 3, timeout=10, interval=0.1)


async def report(http: httpx.AsyncClient, campaign_id: str) -> dict[str, Any]:
    answer = await http.get(f"/v1/campaigns/{campaign_id}/report")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_seed_000_three_segments_one_mail_each_and_the_report(system: System) -> None:
    _, api_key = await new_workspace(system)  # "Bottega Ada"
    run = uuid.uuid4().hex[:8]
    addr = {n: f"{n}-{run}@example.com" for n in ("ann", "bob", "vic", "nia", "joe")}
    async with manager(system, api_key) as http:
        # Only consented contacts get targeted messages (the setting, on).
        only = await http.patch(
            "/v1/workspace/settings", json={"consent_required_for_campaigns": True}
        )
        assert only.status_code == 200, only.text
        # Ann signed up last week and never ordered: activation.
        await contact(http, addr["ann"], first_name="Ann", consents=["targeted_messages"])
        await event(http, addr["ann"], "signed_up", ago(7))
        # Bob last ordered four months ago: reactivation.
        await contact(http, addr["bob"], first_name="Bob", consents=["targeted_messages"])
        await event(http, addr["bob"], "order_placed", ago(120), order_id=unique("o"))
        # Vic is a VIP who last ordered four months ago: in two chosen segments, one mail.
        await contact(http, addr["vic"], vip=True, consents=["targeted_messages"])
        await event(http, addr["vic"], "order_placed", ago(120), order_id=unique("o"))
        # Nia is a VIP who never agreed to targeted messages: left out.
        await contact(http, addr["nia"], vip=True)
        # Joe ordered yesterday: in none of the three.
        await contact(http, addr["joe"], consents=["targeted_messages"])
        await event(http, addr["joe"], "order_placed", ago(1), order_id=unique("o"))
        await sizes_reach(http, {"activation": 1, "reactivation": 2, "vip": 2})

        subject = "Bottega Ada: three new producers"
        created = await http.post(
            "/v1/campaigns",
            json={
                "name": "Thursday's producers",
                "segment_ids": ["activation", "reactivation", "vip"],
                "subject": subject,
                # Markdown: the text and an HTML part (where the open pixel goes).
                "body_markdown": FOUR_LINES,
            },
        )
        assert created.status_code == 201, created.text
        campaign_id = created.json()["id"]

        audience = (await http.get(f"/v1/campaigns/{campaign_id}/audience")).json()
        assert (audience["members"], audience["eligible"]) == (4, 3), audience
        assert audience["excluded"] == [{"reason": "no_consent", "count": 1}]
        shares = {
            s["source"]: (s["members"], s["also_in_other_sources"]) for s in audience["sources"]
        }
        assert shares == {"activation": (1, 0), "reactivation": (2, 1), "vip": (2, 1)}
        assert audience["confirmation_required"] is False

        check = await http.post(f"/v1/campaigns/{campaign_id}/content-check")
        assert check.status_code == 200, check.text
        assert check.json()["warnings"] == [], "four lines, the shop in the subject, a link"

        sent = await http.post(f"/v1/campaigns/{campaign_id}/send", json={})
        assert sent.status_code == 200, sent.text
        assert sent.json()["status"] in ("sending", "sent")

        async def three_mails() -> list[EmailMessage] | None:
            mails = campaign_mails(system, subject)
            return mails if len(mails) >= 3 else None

        mails = await eventually(three_mails, timeout=90, interval=0.3)

        async def finished() -> dict[str, Any] | None:
            body = await report(http, campaign_id)
            return body if body["status"] == "sent" and body["delivered"] == 3 else None

        await eventually(finished, timeout=90, interval=0.5)
        mails = campaign_mails(system, subject)
        assert Counter(to(m) for m in mails) == Counter(
            {addr["ann"]: 1, addr["bob"]: 1, addr["vic"]: 1}
        ), "one mail per contact, even for Vic in two segments; none to Nia or Joe"
        for mail in mails:
            assert "Bottega Ada" in str(mail["From"]), "the workspace's name as the sender"
        by_to = {to(m): m for m in mails}
        assert "Hello Ann," in by_to[addr["ann"]].get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "Hello there," in by_to[addr["vic"]].get_body(("plain",)).get_content()  # type: ignore[union-attr]

        # Ann opens and clicks (a person: a browser, seconds after the mail); Bob only opens.
        ann_pixel, ann_link = tracked(by_to[addr["ann"]])
        bob_pixel, _ = tracked(by_to[addr["bob"]])
        await human_wait(by_to[addr["bob"]])
        async with httpx.AsyncClient(headers={"User-Agent": BROWSER}, timeout=30) as reader:
            for url in (ann_pixel, bob_pixel):
                assert (await reader.get(url)).status_code == 200
            click = await reader.get(ann_link, follow_redirects=False)
            assert click.status_code in (302, 303, 307), click.text
            assert click.headers["location"] == "https://shop.example/producers"

        async def engaged() -> dict[str, Any] | None:
            body = await report(http, campaign_id)
            opened, clicked = body["opened"], body["clicked"]
            done = opened["unique_human"] == 2 and clicked["unique_human"] == 1
            return body if done else None

        final = await eventually(engaged, timeout=60, interval=0.5)
    assert (final["audience"], final["sent"], final["delivered"]) == (4, 3, 3)
    assert final["excluded"] == [{"reason": "no_consent", "count": 1}]
    assert final["opened"]["unique_human_rate"] == 2 / 3
    assert final["clicked"]["unique_human_rate"] == 1 / 3
    assert final["click_to_open_rate"] == 1 / 2
    assert (final["bounced"], final["complained"], final["opened"]["unique_machine"]) == (0, 0, 0)

    # Seed 003: the call list is who opened or clicked and did not order.
    async with manager(system, api_key) as http:
        calls = (await http.get(f"/v1/campaigns/{campaign_id}/engaged-non-buyers")).json()
        assert sorted(c["email"] for c in calls["contacts"]) == sorted([addr["ann"], addr["bob"]])
        # Ann orders the next day: within five days of her click, so attributed, off the list.
        await event(
            http,
            addr["ann"],
            "order_placed",
            datetime.now(UTC).isoformat(),
            order_id=unique("o"),
            total={"amount_minor": 4250, "currency": "EUR"},
        )

        async def attributed() -> dict[str, Any] | None:
            body = await report(http, campaign_id)
            return body if body["orders"]["orders"] == 1 else None

        with_order = await eventually(attributed, timeout=60, interval=0.5)
        assert with_order["orders"]["revenue"] == [{"amount_minor": 4250, "currency": "EUR"}]
        calls = (await http.get(f"/v1/campaigns/{campaign_id}/engaged-non-buyers")).json()
        assert [c["email"] for c in calls["contacts"]] == [addr["bob"]]
        csv = await http.get(f"/v1/campaigns/{campaign_id}/engaged-non-buyers.csv")
        assert csv.status_code == 200 and addr["bob"] in csv.text and addr["ann"] not in csv.text


async def suspend(system: System, workspace_id: str) -> None:
    """What the anti-spam guard judges: 600 mails, then 3 spam reports (0.5 % > 0.3 %)."""
    producer = AIOKafkaProducer(bootstrap_servers=system.env["KAFKA_BOOTSTRAP_SERVERS"])
    await producer.start()
    try:
        mails = [events_pb2.MessageSent(message_id=str(uuid.uuid4())) for _ in range(600)]
        reports = [
            events_pb2.MessageComplained(message_id=str(uuid.uuid4()), feedback_type="abuse")
            for _ in range(3)
        ]
        for batch in (mails, reports):
            for payload in batch:
                key = str(uuid.uuid4())
                payload.contact_id = key
                await producer.send(
                    DELIVERY_EVENTS,
                    new_envelope(workspace_id, payload).SerializeToString(),
                    key=key.encode(),
                )
            await producer.flush()
    finally:
        await producer.stop()


async def test_seed_001_tags_the_consent_warning_and_the_anti_spam_block(
    system: System,
) -> None:
    workspace_id, api_key = await new_workspace(system)
    run = uuid.uuid4().hex[:8]
    async with manager(system, api_key) as http:
        # The shop tags the customers of its spring fair; one of them gave no consent.
        fair = [f"fair{i}-{run}@example.com" for i in range(3)]
        await contact(http, fair[0], tags=["spring-fair"], consents=["targeted_messages"])
        await contact(http, fair[1], tags=["spring-fair"], consents=["targeted_messages"])
        await contact(http, fair[2], tags=["spring-fair"])
        await contact(http, f"other-{run}@example.com", consents=["targeted_messages"])
        # "Only consented" off: the manager is warned, and must confirm the number.
        settings = await http.patch(
            "/v1/workspace/settings", json={"consent_required_for_campaigns": False}
        )
        assert settings.status_code == 200, settings.text

        subject = "Bottega Ada: thank you for coming to the fair"
        created = await http.post(
            "/v1/campaigns",
            json={
                "name": "After the fair",
                "tags_any": ["spring-fair"],
                "subject": subject,
                "body_text": "Thank you for visiting our stand.\nSee you next year!",
            },
        )
        assert created.status_code == 201, created.text
        campaign_id = created.json()["id"]

        async def all_tagged() -> dict[str, Any] | None:
            body: dict[str, Any] = (await http.get(f"/v1/campaigns/{campaign_id}/audience")).json()
            return body if body.get("members") == 3 else None

        audience = await eventually(all_tagged, timeout=60, interval=0.3)
        assert (audience["eligible"], audience["not_consented"]) == (3, 1)
        assert audience["only_consented"] is False and audience["confirmation_required"] is True

        unconfirmed = await http.post(f"/v1/campaigns/{campaign_id}/send", json={})
        assert unconfirmed.status_code == 409, unconfirmed.text
        assert unconfirmed.headers["content-type"].startswith("application/problem+json")
        assert "1 contact of this audience has not consented" in unconfirmed.json()["detail"]
        wrong = await http.post(
            f"/v1/campaigns/{campaign_id}/send", json={"confirm_not_consented": 2}
        )
        assert wrong.status_code == 409, wrong.text
        confirmed = await http.post(
            f"/v1/campaigns/{campaign_id}/send", json={"confirm_not_consented": 1}
        )
        assert confirmed.status_code == 200, confirmed.text

        async def mailed() -> list[EmailMessage] | None:
            mails = campaign_mails(system, subject)
            return mails if len(mails) >= 3 else None

        mails = await eventually(mailed, timeout=90, interval=0.3)
        assert sorted(to(m) for m in mails) == sorted(fair)

        # The anti-spam guard suspends the workspace: a second campaign cannot be sent, and
        # the manager reads why, before sending (the preview) and when trying.
        await suspend(system, workspace_id)

        async def suspended() -> dict[str, Any] | None:
            body: dict[str, Any] = (await http.get("/v1/sending-status")).json()
            return body if body["suspended"] else None

        status = await eventually(suspended, timeout=60, interval=0.3)
        second = await http.post(
            "/v1/campaigns",
            json={
                "name": "Second try",
                "tags_any": ["spring-fair"],
                "subject": "Bottega Ada: one more thing",
                "body_text": "A last word.",
            },
        )
        second_id = second.json()["id"]
        preview = (await http.get(f"/v1/campaigns/{second_id}/audience")).json()
        assert preview["sending_suspended"] is True
        assert preview["suspended_reason"] == status["reason"]
        blocked = await http.post(
            f"/v1/campaigns/{second_id}/send", json={"confirm_not_consented": 1}
        )
        assert blocked.status_code == 409, blocked.text
        assert blocked.json()["detail"] == (
            f"sending is suspended by the anti-spam guard: {status['reason']}"
        )
        assert (await http.get(f"/v1/campaigns/{second_id}")).json()["status"] == "draft"
