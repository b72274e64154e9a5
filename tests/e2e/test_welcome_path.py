"""One path through everything: a signup, reported by the shop, becomes one welcome mail.

platform/manager → gateway (HTTP) / contacts (gRPC) → shop.events.v1 → triggers (Faust)
→ delivery.requests.v1 → delivery → SMTP → delivery.events.v1, with one trace throughout.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter

import asyncpg
import grpc
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2
from nudge.shop.v1 import shop_pb2, shop_pb2_grpc

from services.common.events import deterministic_id, new_envelope
from services.common.topics import DELIVERY_REQUESTS
from tests.e2e.conftest import System
from tests.integration.conftest import wait_grpc_serving
from tests.integration.triggers.support import publish_welcome
from tests.markers import settle
from tests.support import eventually, fetchval, unique

CLAIMED, SENT = 1, 2  # delivery.messages.status (services/delivery/domain/ledger.py)


async def new_workspace(system: System) -> tuple[str, str]:
    async with grpc.aio.insecure_channel(system.contacts) as channel:
        answer = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Bottega Ada", slug=unique("shop")),
            metadata=system.admin,
        )
    # Workflows are published rows now: the welcome letter is this workspace's workflow.
    await publish_welcome(system.env["DATABASE_URL"], answer.workspace_id)
    return answer.workspace_id, answer.api_key


def welcome_count(system: System) -> Counter[str]:
    return Counter(
        str(m["To"]) for m in system.mails() if str(m["Subject"]) == "Welcome to Bottega Ada"
    )


async def platform_signup(system: System, api_key: str, email: str, key: str) -> str:
    """A platform's path: create the contact and report its signup over gRPC."""
    metadata = (("authorization", f"Bearer {api_key}"),)
    async with grpc.aio.insecure_channel(system.contacts) as channel:
        created = await contacts_pb2_grpc.ContactServiceStub(channel).CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(email=email, first_name="Bo"),
                consents=[contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS],
            ),
            metadata=metadata,
        )
        await shop_pb2_grpc.ShopEventServiceStub(channel).TrackEvent(
            shop_pb2.TrackEventRequest(
                idempotency_key=key,
                contact=contacts_pb2.ContactRef(contact_id=created.contact.id),
                event=shop_pb2.ShopEvent(signed_up=shop_pb2.SignedUp()),
            ),
            metadata=metadata,
        )
    return created.contact.id


async def track(system: System, api_key: str, contact_id: str, event: shop_pb2.ShopEvent) -> str:
    """Report a shop event for a contact over gRPC, under a new key; returns its event id."""
    async with grpc.aio.insecure_channel(system.contacts) as channel:
        answer = await shop_pb2_grpc.ShopEventServiceStub(channel).TrackEvent(
            shop_pb2.TrackEventRequest(
                idempotency_key=unique("event"),
                contact=contacts_pb2.ContactRef(contact_id=contact_id),
                event=event,
            ),
            metadata=(("authorization", f"Bearer {api_key}"),),
        )
    return str(answer.event_id)


async def settle_contact(system: System, api_key: str, contact_id: str) -> None:
    """Wait until everything already reported for this contact went through the trigger
    engine and delivery (markers on the contact's own key: tests/markers.py)."""
    await settle(
        contacts_addr=system.contacts,
        delivery_addr=system.env["NUDGE_DELIVERY_ADDR"],
        metadata=(("authorization", f"Bearer {api_key}"),),
        database_url=system.env["DATABASE_URL"],
        contact_ids=[contact_id],
        delivered=lambda message_id: [
            m for m in system.mails() if m["X-Nudge-Message-Id"] == message_id
        ],
    )


async def ledger(system: System, workspace_id: str) -> dict[int, int]:
    conn = await asyncpg.connect(system.env["DATABASE_URL"])
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM delivery.messages"
            " WHERE workspace_id = $1::uuid GROUP BY status",
            workspace_id,
        )
    finally:
        await conn.close()
    return {r["status"]: r["n"] for r in rows}


async def status(system: System, message_id: str) -> object:
    return await fetchval(
        system.env["DATABASE_URL"],
        "SELECT status FROM delivery.messages WHERE message_id = $1::uuid",
        message_id,
    )


async def test_a_signup_sent_twice_is_one_welcome_mail_on_one_trace(system: System) -> None:
    _, api_key = await new_workspace(system)
    auth = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=system.gateway, headers=auth, timeout=10) as http:
        created = await http.post(
            "/v1/contacts",
            json={"email": "ada@example.com", "first_name": "Ada", "consents": ["automations"]},
        )
        assert created.status_code == 201, created.text
        contact_id = created.json()["id"]

        # The shop reports the signup, and its retry sends the very same event again.
        trace_id = secrets.token_hex(16)
        traceparent = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        event = {
            "idempotency_key": unique("signup"),
            "type": "signed_up",
            "contact": {"email": "ada@example.com"},
        }
        sent_at = time.monotonic()
        first = await http.post("/v1/events", json=event, headers=traceparent)
        again = await http.post("/v1/events", json=event)
    assert first.status_code == again.status_code == 202, first.text
    assert first.json()["contact_id"] == contact_id
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    assert again.json()["event_id"] == first.json()["event_id"]

    await eventually(lambda: welcome_count(system)["Ada <ada@example.com>"], timeout=30)
    latency_s = time.monotonic() - sent_at
    [mail] = [m for m in system.mails() if m["To"] == "Ada <ada@example.com>"]
    assert "Hi Ada," in mail.get_payload()  # type: ignore[operator]
    assert "Bottega Ada" in str(mail["From"])

    # The same signup reported once more, by the platform over gRPC under a new key. Then a
    # marker on Ada's own key (events and delivery requests are keyed by contact): once the
    # trigger engine has handled a later event of hers, its outbox holds nothing for her, and
    # a later mail of hers is in, every replay went through both consumers.
    await track(system, api_key, contact_id, shop_pb2.ShopEvent(signed_up=shop_pb2.SignedUp()))
    await settle_contact(system, api_key, contact_id)
    assert welcome_count(system)["Ada <ada@example.com>"] == 1

    # One trace from the HTTP request to the SMTP hand-off, through Kafka and Faust.
    def traced() -> dict[str, set[str]]:
        by_service: dict[str, set[str]] = {}
        for span in system.spans():
            if span["trace_id"] == trace_id:
                by_service.setdefault(span["service"], set()).add(span["name"])
        return by_service if "smtp send" in by_service.get("nudge-delivery", set()) else {}

    spans = await eventually(traced, timeout=10)
    assert set(spans) >= {"nudge-gateway", "nudge-contacts", "nudge-triggers", "nudge-delivery"}
    assert any(name.startswith("POST /v1/events") for name in spans["nudge-gateway"])
    assert "/nudge.shop.v1.ShopEventService/TrackEvent" in spans["nudge-contacts"]
    assert "triggers evaluate" in spans["nudge-triggers"]
    assert {"delivery.requests.v1 process", "smtp send"} <= spans["nudge-delivery"]
    print(f"welcome mail reached the sink {latency_s:.2f}s after the signup event")


async def test_killing_delivery_mid_stream_mails_everyone_at_most_once(system: System) -> None:
    """Delivery dies between the claim of one message and the server's answer to its DATA.

    The SMTP server stores mail number ``HELD`` of this workspace and holds its reply; at that
    moment it is CLAIMED, and so may be others in flight (delivery handles many contacts at
    once). SIGKILL then. The server has the held mail, delivery cannot know it: it must stay
    CLAIMED (until the sweeper reports it UNKNOWN, docs/delivery.md) and never be handed over
    again (at most once); every other contact gets one mail, or none if its message was in
    flight at the kill and so is CLAIMED too."""
    workspace_id, api_key = await new_workspace(system)
    total, held_at = 40, 15
    hold = system.smtp.hold_data(
        lambda m: str(m["X-Nudge-Workspace-Id"]) == workspace_id, nth=held_at
    )
    emails = [f"{unique('k')}@example.com" for _ in range(total)]
    contact_ids = await asyncio.gather(
        *(platform_signup(system, api_key, e, unique("s")) for e in emails)
    )
    held = await asyncio.to_thread(system.smtp.wait_held, hold, 120)
    held_id = str(held["X-Nudge-Message-Id"])
    held_contact = contact_ids[emails.index(str(held["To"]).split("<")[1].rstrip(">"))]

    assert await status(system, held_id) == CLAIMED
    system.group.kill("delivery")  # SIGKILL: no commit, no clean shutdown
    at_kill = await ledger(system, workspace_id)
    assert at_kill.get(SENT, 0) < total and at_kill.get(CLAIMED, 0) >= 1, at_kill  # mid-stream
    system.smtp.release(hold)
    system.group.restart("delivery")
    # Everything may have been claimed before the kill: wait for delivery itself.
    await wait_grpc_serving(system.env["NUDGE_DELIVERY_ADDR"], timeout=120)

    async def settled() -> dict[int, int]:
        statuses = await ledger(system, workspace_id)
        assert set(statuses) <= {SENT, CLAIMED}, statuses  # shown on timeout
        assert sum(statuses.values()) == total, statuses
        # Claimed now: only what the kill interrupted (the rest went out since the restart).
        assert statuses.get(CLAIMED, 0) <= at_kill[CLAIMED], (statuses, at_kill)
        return statuses

    statuses = await eventually(settled, timeout=120, interval=0.25)
    # The held message's request was not committed: it comes again after the restart. A
    # later mail on the same key shows that it has been consumed, and refused.
    await settle_contact(system, api_key, held_contact)

    counts = welcome_count(system)
    assert {e: counts[f"Bo <{e}>"] for e in emails if counts[f"Bo <{e}>"] > 1} == {}
    unmailed = sum(1 for e in emails if counts[f"Bo <{e}>"] == 0)
    assert unmailed <= statuses[CLAIMED] - 1  # the held one reached the server
    assert system.smtp.data_attempts[held_id] == 1, "the held message was handed over again"
    assert await status(system, held_id) == CLAIMED

    async def marker_recorded() -> bool:  # the sink has it a moment before the ledger does
        return await ledger(system, workspace_id) == {
            SENT: statuses[SENT] + 1,
            **{CLAIMED: statuses[CLAIMED]},
        }

    await eventually(marker_recorded, timeout=30)


async def test_healthz_reports_every_dependency_and_the_broker(system: System) -> None:
    async with httpx.AsyncClient(base_url=system.gateway, timeout=10) as http:
        answer = await http.get("/healthz")
    assert answer.status_code == 200, answer.text
    checks = answer.json()["checks"]
    assert set(checks) == {
        "contacts",
        "segmentation",
        "campaigns",
        "triggers",
        "delivery",
        "tracking",
        "gateway",  # its own Redis: the console's sessions
    }
    assert all(check["ok"] for check in checks.values())
    # Each service's own dependencies, as it reports them.
    assert set(checks["delivery"]["dependencies"]) == {
        "postgres",
        "redis",
        "kafka",
        "smtp",
        "smtp_sending",  # delivery's own verdict: down while a session error pauses sending
    }
    assert all(dep["ok"] for check in checks.values() for dep in check["dependencies"].values())
    assert checks["tracking"]["dependencies"]["kafka"]["kind"] == system.env["NUDGE_KAFKA_KIND"]


@pytest.mark.parametrize("service", ["contacts", "triggers"])
async def test_a_crashed_service_comes_back_healthy(system: System, service: str) -> None:
    system.group.kill(service)
    async with httpx.AsyncClient(base_url=system.gateway, timeout=10) as http:

        async def reports_down() -> bool:
            answer = await http.get("/healthz")
            return answer.status_code == 503 and not answer.json()["checks"][service]["ok"]

        assert await eventually(reports_down, timeout=20)
        system.group.restart(service)

        async def healthy() -> bool:
            return (await http.get("/healthz")).status_code == 200

        assert await eventually(healthy, timeout=60)


async def test_one_click_unsubscribe_from_a_mail_stops_automated_mail(system: System) -> None:
    workspace_id, api_key = await new_workspace(system)
    email = f"{unique('leaving')}@example.com"
    contact_id = await platform_signup(system, api_key, email, unique("signup"))
    [welcome] = await eventually(
        lambda: [m for m in system.mails() if m["To"] == f"Bo <{email}>"], timeout=30
    )
    # What a mailbox provider does when the reader presses "Unsubscribe" (RFC 8058).
    link = "".join(str(welcome["List-Unsubscribe"]).split()).strip("<>")
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(link, content=b"List-Unsubscribe=One-Click")
    assert answer.status_code == 200, answer.text

    async def withdrawn() -> bool:
        conn = await asyncpg.connect(system.env["DATABASE_URL"])
        try:
            status = await conn.fetchval(
                "SELECT status FROM contacts.consents WHERE contact_id = $1::uuid AND purpose = 3",
                contact_id,
            )
        finally:
            await conn.close()
        return bool(status == 2)

    await eventually(withdrawn, timeout=30)
    # The next automated message for them is refused by delivery, just before SMTP.
    message_id = deterministic_id(workspace_id, unique("later"))
    later = delivery_pb2.DeliveryRequested(
        message_id=message_id,
        contact_id=contact_id,
        kind=delivery_pb2.MESSAGE_KIND_AUTOMATION,
        purpose=contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS,
        content=delivery_pb2.MessageContent(subject="We miss you", body_text="Come back"),
    )
    producer = AIOKafkaProducer(bootstrap_servers=system.env["KAFKA_BOOTSTRAP_SERVERS"])
    await producer.start()
    try:
        await producer.send_and_wait(
            DELIVERY_REQUESTS,
            new_envelope(workspace_id, later, event_id=message_id).SerializeToString(),
            key=contact_id.encode(),
        )
    finally:
        await producer.stop()

    async def ledger_detail() -> str | None:
        conn = await asyncpg.connect(system.env["DATABASE_URL"])
        try:
            detail: str | None = await conn.fetchval(
                "SELECT detail FROM delivery.messages WHERE message_id = $1::uuid AND status = 3",
                message_id,
            )
        finally:
            await conn.close()
        return detail

    assert await eventually(ledger_detail, timeout=30) == "consent_withdrawn:automations"
    assert not [m for m in system.mails() if m["Subject"] == "We miss you"]
