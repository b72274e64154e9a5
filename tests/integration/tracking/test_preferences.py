"""The preference page and the double opt-in confirmation, served by tracking from signed
links and recorded by contacts: real tracking, contacts, PostgreSQL and Kafka."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from google.protobuf.field_mask_pb2 import FieldMask
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2

from services.common import links
from services.common.topics import DELIVERY_REQUESTS
from services.contacts.consent import CONFIRMATION_NAMESPACE
from tests.integration.conftest import RunningService, Workspace
from tests.integration.consent.conftest import create_contact, envelopes_until
from tests.integration.tracking.conftest import LINK_SECRET, HttpService, run_http
from tests.integration.tracking.test_tracking_http import all_published
from tests.support import free_port

MARKETING = contacts_pb2.CONSENT_PURPOSE_MARKETING
TARGETED = contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES
AUTOMATIONS = contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
GRANTED = contacts_pb2.CONSENT_STATUS_GRANTED
WITHDRAWN = contacts_pb2.CONSENT_STATUS_WITHDRAWN
PENDING = contacts_pb2.CONSENT_STATUS_PENDING
PREFERENCE_PAGE = contacts_pb2.CONSENT_SOURCE_PREFERENCE_PAGE
CONFIRMATION_LINK = contacts_pb2.CONSENT_SOURCE_CONFIRMATION_LINK
BROWSER = "Mozilla/5.0 (preferences test)"


@pytest.fixture(scope="module")
async def tracking(contacts_service: RunningService) -> AsyncIterator[HttpService]:
    """Tracking talking to the contacts service of this session."""
    from services.tracking.bootstrap import serve
    from services.tracking.config import Settings

    settings = Settings(
        bind_host="127.0.0.1",
        http_port=free_port(),
        link_secret=LINK_SECRET,
        contacts_addr=contacts_service.address,
    )
    async with run_http(serve, settings) as running:
        yield running


@pytest.fixture
async def channel(contacts_service: RunningService) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        yield ch


@pytest.fixture
async def web(tracking: HttpService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=tracking.base_url, timeout=10, headers={"user-agent": BROWSER}
    ) as client:
        yield client


async def history(
    channel: grpc.aio.Channel, ws: Workspace, contact_id: str
) -> contacts_pb2.GetConsentHistoryResponse:
    answer: contacts_pb2.GetConsentHistoryResponse = await contacts_pb2_grpc.ConsentServiceStub(
        channel
    ).GetConsentHistory(
        contacts_pb2.GetConsentHistoryRequest(
            contact=contacts_pb2.ContactRef(contact_id=contact_id)
        ),
        metadata=ws.metadata,
    )
    return answer


def checked(page: str) -> set[str]:
    return set(re.findall(r'name="(\w+)" value="on" checked', page))


async def test_the_preference_page_shows_and_switches_each_kind_of_mail(
    channel: grpc.aio.Channel, workspace: Workspace, web: httpx.AsyncClient
) -> None:
    contact_id = await create_contact(channel, workspace, MARKETING, TARGETED, AUTOMATIONS)
    path = links.sign_preferences(LINK_SECRET, workspace.id, str(uuid.uuid4()), contact_id)

    page = await web.get(path)
    assert page.status_code == 200
    assert checked(page.text) == {"marketing", "targeted_messages", "automations"}
    token = path.removeprefix("/p/")
    before = len((await history(channel, workspace, contact_id)).records)

    # Off: targeted messages only.
    saved = await web.post(
        path, data={"token": token, "action": "save", "marketing": "on", "automations": "on"}
    )
    assert saved.status_code == 200 and "saved" in saved.text
    assert checked(saved.text) == {"marketing", "automations"}
    answer = await history(channel, workspace, contact_id)
    assert len(answer.records) == before + 1  # the two left alone record nothing
    newest = answer.records[0]
    assert (newest.purpose, newest.status, newest.source) == (TARGETED, WITHDRAWN, PREFERENCE_PAGE)
    assert (newest.ip, newest.user_agent) == ("127.0.0.1", BROWSER)
    assert "targeted messages" in newest.wording

    # Off: automations only (targeted stays off).
    saved = await web.post(path, data={"token": token, "action": "save", "marketing": "on"})
    assert checked(saved.text) == {"marketing"}

    # Everything off, whatever boxes come with it; then back on.
    saved = await web.post(path, data={"token": token, "action": "none", "marketing": "on"})
    assert checked(saved.text) == set()
    states = {c.purpose: c.state for c in (await history(channel, workspace, contact_id)).current}
    assert set(states.values()) == {contacts_pb2.CONSENT_STATE_WITHDRAWN}
    saved = await web.post(
        path,
        data={
            "token": token,
            "action": "save",
            "marketing": "on",
            "targeted_messages": "on",
            "automations": "on",
        },
    )
    assert checked(saved.text) == {"marketing", "targeted_messages", "automations"}


async def test_a_post_without_the_signed_token_in_the_form_changes_nothing(
    channel: grpc.aio.Channel, workspace: Workspace, web: httpx.AsyncClient
) -> None:
    contact_id = await create_contact(channel, workspace, MARKETING)
    path = links.sign_preferences(LINK_SECRET, workspace.id, str(uuid.uuid4()), contact_id)
    before = await history(channel, workspace, contact_id)
    refused = await web.post(path, data={"action": "none"})
    assert refused.status_code == 403
    refused = await web.post(path, data={"token": "other", "action": "none"})
    assert refused.status_code == 403
    assert await history(channel, workspace, contact_id) == before


async def test_tampered_or_foreign_links_get_a_clear_page_and_change_nothing(
    channel: grpc.aio.Channel, workspace: Workspace, web: httpx.AsyncClient
) -> None:
    contact_id = await create_contact(channel, workspace, MARKETING)
    path = links.sign_preferences(LINK_SECRET, workspace.id, str(uuid.uuid4()), contact_id)
    token = path.removeprefix("/p/")
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for bad in (
        f"/p/{tampered}",
        links.sign_unsubscribe(LINK_SECRET, workspace.id, str(uuid.uuid4()), contact_id).replace(
            "/u/", "/p/"
        ),
        links.sign_preferences("another-secret", workspace.id, str(uuid.uuid4()), contact_id),
    ):
        page = await web.get(bad)
        assert page.status_code == 404
        assert "not valid" in page.text and page.headers["content-type"].startswith("text/html")
        bad_token = bad.removeprefix("/p/")
        posted = await web.post(bad, data={"token": bad_token, "action": "none"})
        assert posted.status_code == 404
    assert (await history(channel, workspace, contact_id)).current[0].state == (
        contacts_pb2.CONSENT_STATE_GRANTED
    )


async def turn_on_double_opt_in(channel: grpc.aio.Channel, ws: Workspace) -> None:
    await contacts_pb2_grpc.WorkspaceServiceStub(channel).UpdateWorkspaceSettings(
        contacts_pb2.UpdateWorkspaceSettingsRequest(
            settings=contacts_pb2.WorkspaceSettings(double_opt_in=True),
            update_mask=FieldMask(paths=["double_opt_in"]),
        ),
        metadata=ws.metadata,
    )


async def test_double_opt_in_grants_from_the_click_once(
    channel: grpc.aio.Channel,
    workspace: Workspace,
    web: httpx.AsyncClient,
    infra: dict[str, str],
) -> None:
    await turn_on_double_opt_in(channel, workspace)
    contact_id = await create_contact(channel, workspace)
    recorded = await contacts_pb2_grpc.ConsentServiceStub(channel).RecordConsent(
        contacts_pb2.RecordConsentRequest(
            contact=contacts_pb2.ContactRef(contact_id=contact_id),
            purpose=MARKETING,
            status=GRANTED,
            source=contacts_pb2.CONSENT_SOURCE_FORM,
            wording="Send me the newsletter",
        ),
        metadata=workspace.metadata,
    )
    assert recorded.pending_confirmation
    answer = await history(channel, workspace, contact_id)
    assert answer.records[0].status == PENDING
    eligible = await contacts_pb2_grpc.ConsentServiceStub(channel).CheckEligibility(
        contacts_pb2.CheckEligibilityRequest(contact_id=contact_id, purpose=MARKETING),
        metadata=workspace.metadata,
    )
    assert (eligible.eligible, eligible.reason) == (False, "consent_pending:marketing")

    # The confirmation mail is asked of delivery, transactional, through the outbox.
    message_id = str(uuid.uuid5(CONFIRMATION_NAMESPACE, recorded.consent_event_id))
    envelopes = await envelopes_until(
        infra,
        DELIVERY_REQUESTS,
        contact_id,
        lambda e: e.delivery_requested.message_id == message_id,
    )
    mail = envelopes[-1].delivery_requested
    assert mail.kind == delivery_pb2.MESSAGE_KIND_TRANSACTIONAL
    assert "{{ links.confirm }}" in mail.content.body_text
    assert mail.purpose == contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
    expires_at = int(mail.vars["confirm_expires_at"])
    assert expires_at > time.time() + 6 * 86400

    path = links.sign_confirm(LINK_SECRET, workspace.id, message_id, contact_id, expires_at)
    token = path.removeprefix("/k/")
    shown = await web.get(path)
    assert shown.status_code == 200 and "Confirm" in shown.text
    assert (await history(channel, workspace, contact_id)).records[0].status == PENDING

    confirmed = await web.post(path, data={"token": token})
    assert confirmed.status_code == 200 and "confirmed" in confirmed.text
    answer = await history(channel, workspace, contact_id)
    newest = answer.records[0]
    assert (newest.status, newest.source) == (GRANTED, CONFIRMATION_LINK)
    assert (newest.ip, newest.user_agent, newest.wording) == (
        "127.0.0.1",
        BROWSER,
        "Send me the newsletter",
    )
    count = len(answer.records)

    replay = await web.post(path, data={"token": token})
    assert replay.status_code == 200 and "Already confirmed" in replay.text
    assert len((await history(channel, workspace, contact_id)).records) == count


async def test_an_expired_or_tampered_confirmation_link_grants_nothing(
    channel: grpc.aio.Channel, workspace: Workspace, web: httpx.AsyncClient
) -> None:
    await turn_on_double_opt_in(channel, workspace)
    contact_id = await create_contact(channel, workspace)
    recorded = await contacts_pb2_grpc.ConsentServiceStub(channel).RecordConsent(
        contacts_pb2.RecordConsentRequest(
            contact=contacts_pb2.ContactRef(contact_id=contact_id),
            purpose=AUTOMATIONS,
            status=GRANTED,
            source=contacts_pb2.CONSENT_SOURCE_FORM,
        ),
        metadata=workspace.metadata,
    )
    message_id = str(uuid.uuid5(CONFIRMATION_NAMESPACE, recorded.consent_event_id))
    expired = links.sign_confirm(
        LINK_SECRET, workspace.id, message_id, contact_id, int(time.time()) - 1
    )
    for method in ("get", "post"):
        if method == "get":
            page = await web.get(expired)
        else:
            page = await web.post(expired, data={"token": expired.removeprefix("/k/")})
        assert page.status_code == 410 and "expired" in page.text
    valid = links.sign_confirm(
        LINK_SECRET, workspace.id, message_id, contact_id, int(time.time()) + 3600
    )
    tampered = valid[:-3] + ("A" if valid[-3] != "A" else "B") + valid[-2:]
    page = await web.post(tampered, data={"token": tampered[3:]})
    assert page.status_code == 404
    # Another contact's id in a genuine link: contacts finds no such confirmation.
    other = links.sign_confirm(
        LINK_SECRET, workspace.id, message_id, str(uuid.uuid4()), int(time.time()) + 3600
    )
    page = await web.post(other, data={"token": other[3:]})
    assert page.status_code == 404
    answer = await history(channel, workspace, contact_id)
    assert [r.status for r in answer.records] == [PENDING]


async def test_switches_changed_on_the_page_are_on_tracking_events(
    channel: grpc.aio.Channel,
    workspace: Workspace,
    web: httpx.AsyncClient,
    consumer: AIOKafkaConsumer,
) -> None:
    """PreferencesChanged names what this post switched on and off; a post that changes
    nothing publishes nothing."""
    contact_id = await create_contact(channel, workspace, MARKETING, TARGETED)
    message_id = str(uuid.uuid4())
    path = links.sign_preferences(LINK_SECRET, workspace.id, message_id, contact_id)
    token = path.removeprefix("/p/")
    form = {"token": token, "action": "save", "marketing": "on", "automations": "on"}
    assert (await web.post(path, data=form)).status_code == 200  # targeted off, automations on
    assert (await web.post(path, data=form)).status_code == 200  # the same again: no change
    form = {"token": token, "action": "none"}
    assert (await web.post(path, data=form)).status_code == 200  # everything off
    # The second post changed nothing: two events, not three (a third would be read first
    # if it existed: the events of one contact are in order on one partition).
    records = await all_published(consumer, message_id, "preferences_changed", 2)
    first, second = (envelope for _, envelope, _ in records)
    assert all(key == contact_id.encode() for key, _, _ in records)
    assert first.workspace_id == workspace.id
    changed = first.preferences_changed
    assert (list(changed.subscribed), list(changed.unsubscribed)) == ([AUTOMATIONS], [TARGETED])
    changed = second.preferences_changed
    assert list(changed.subscribed) == []
    assert sorted(changed.unsubscribed) == sorted([MARKETING, AUTOMATIONS])
