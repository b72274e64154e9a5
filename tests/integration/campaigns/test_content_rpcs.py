"""CheckContent, PreviewMessage and SendTestMessage over real gRPC, PostgreSQL, Kafka and the
contacts service: warnings of a stored campaign, previews for a chosen or the sample contact
and A/B variants, test sends queued for delivery, limited per hour, and every bad request
refused with a precise error (another workspace's campaign or contact is not found)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from nudge.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.topics import DELIVERY_REQUESTS
from tests.integration.campaigns.test_campaigns_grpc import new_workspace, violations
from tests.integration.conftest import RunningService, Workspace
from tests.support import unique

FOUR_LINES = (
    'Hi {{ contact.first_name | default("there") }},\n'
    "our new tea has arrived.\nTaste it at https://shop.example/tea\nTest shop"
)


@pytest.fixture
async def stub(
    campaigns_service: RunningService,
) -> AsyncIterator[campaigns_pb2_grpc.CampaignServiceStub]:
    async with grpc.aio.insecure_channel(campaigns_service.address) as ch:
        yield campaigns_pb2_grpc.CampaignServiceStub(ch)


async def create(
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    ws: Workspace,
    subject: str = "Test shop: new tea",
    body_text: str = FOUR_LINES,
    **columns: object,
) -> str:
    """A draft made through CreateCampaign; ``columns`` (body_html, reply_to, ab_test...)
    written straight into its row, as the lifecycle part's CreateCampaign will store them."""
    answer = await stub.CreateCampaign(
        campaigns_pb2.CreateCampaignRequest(
            name="Tea", segment_ids=["vip"], subject=subject, body_text=body_text
        ),
        metadata=ws.metadata,
    )
    campaign_id = answer.campaign.id
    if columns:
        conn = await asyncpg.connect(os.environ["DATABASE_URL"])
        try:
            for column, value in columns.items():
                cast = "::jsonb" if column == "ab_test" else ""
                await conn.execute(
                    f"UPDATE campaigns.campaigns SET {column} = $1{cast} WHERE id = $2",
                    json.dumps(value) if column == "ab_test" else value,
                    uuid.UUID(campaign_id),
                )
        finally:
            await conn.close()
    return campaign_id


async def new_contact(
    contacts: RunningService, ws: Workspace, first_name: str = "Ada"
) -> contacts_pb2.Contact:
    async with grpc.aio.insecure_channel(contacts.address) as ch:
        answer = await contacts_pb2_grpc.ContactServiceStub(ch).CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(
                    email=f"{unique('c')}@example.com", first_name=first_name
                ),
            ),
            metadata=ws.metadata,
        )
    return answer.contact


async def requested(message_id: str, timeout: float = 30) -> delivery_pb2.DeliveryRequested:
    """The delivery request with ``message_id`` on delivery.requests.v1."""
    consumer = AIOKafkaConsumer(
        DELIVERY_REQUESTS,
        bootstrap_servers=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        envelope = Envelope.FromString(record.value or b"")
                        if envelope.event_id == message_id:
                            return envelope.delivery_requested
    finally:
        await consumer.stop()


async def test_check_content_of_a_good_message_has_no_warning(
    stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    campaign_id = await create(stub, workspace)
    answer = await stub.CheckContent(
        campaigns_pb2.CheckContentRequest(campaign_id=campaign_id), metadata=workspace.metadata
    )
    assert list(answer.warnings) == []


async def test_check_content_lists_every_warning_with_its_field(
    stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    campaign_id = await create(
        stub,
        workspace,
        subject="FREE MONEY!!!",
        body_text="Hi {{ contact.first_name }}\n2\n3\n4\n5 {{ shop }}",
        body_html='<a href="javascript:alert(1)">x</a>',
        ab_test={"subjects": ["Test shop A", "B"], "winner": -1},
    )
    answer = await stub.CheckContent(
        campaigns_pb2.CheckContentRequest(campaign_id=campaign_id), metadata=workspace.metadata
    )
    found = {(w.code, w.field) for w in answer.warnings}
    assert {
        ("spam_like", "subject"),
        ("subject_without_workspace_name", "subject"),
        ("subject_without_workspace_name", "ab_test.subjects[1]"),
        ("too_many_lines", "body_text"),
        ("missing_default", "body_text"),
        ("broken_personalisation", "body_text"),
        ("bad_link", "body_html"),
    } <= found
    assert ("subject_without_workspace_name", "ab_test.subjects[0]") not in found
    assert all(w.message for w in answer.warnings)


async def test_preview_for_a_contact_and_for_the_sample_contact(
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    campaign_id = await create(
        stub,
        workspace,
        subject='{{ workspace.name }} for {{ contact.first_name | default("you") }}',
        body_html='<p>Hi {{ contact.first_name | default("there") }}</p>',
        reply_to="owner@shop.example",
    )
    contact = await new_contact(contacts_service, workspace, first_name="<Ada>")
    answer = await stub.PreviewMessage(
        campaigns_pb2.PreviewMessageRequest(campaign_id=campaign_id, contact_id=contact.id),
        metadata=workspace.metadata,
    )
    assert answer.subject == "Test shop for <Ada>"
    assert answer.body_text.startswith("Hi <Ada>,\n")
    assert answer.body_html == "<p>Hi &lt;Ada&gt;</p>"
    assert getattr(answer, "from") == "Test shop <no-reply@nudge.localhost>"
    assert answer.reply_to == "owner@shop.example"

    sample = await stub.PreviewMessage(
        campaigns_pb2.PreviewMessageRequest(campaign_id=campaign_id), metadata=workspace.metadata
    )
    assert sample.subject == "Test shop for you"
    assert sample.body_text.startswith("Hi there,\n")


async def test_preview_of_an_ab_variant_uses_its_subject(
    stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    campaign_id = await create(
        stub, workspace, ab_test={"subjects": ["Test shop: A", "Test shop: B"], "winner": -1}
    )
    answer = await stub.PreviewMessage(
        campaigns_pb2.PreviewMessageRequest(campaign_id=campaign_id, variant=1),
        metadata=workspace.metadata,
    )
    assert answer.subject == "Test shop: B"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.PreviewMessage(
            campaigns_pb2.PreviewMessageRequest(campaign_id=campaign_id, variant=2),
            metadata=workspace.metadata,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["variant"]


async def test_a_template_attacking_the_sandbox_is_refused_in_preview(
    stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    for body in (
        "{{ ''.__class__.__mro__ }}",
        "{% for i in range(50000) %}{% for j in range(50000) %}{% endfor %}{% endfor %}",
        "{% for i in range(30000) %}0123456789{% endfor %}",
    ):
        campaign_id = await create(stub, workspace, body_text=body)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.PreviewMessage(
                campaigns_pb2.PreviewMessageRequest(campaign_id=campaign_id),
                metadata=workspace.metadata,
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, body
        check = await stub.CheckContent(
            campaigns_pb2.CheckContentRequest(campaign_id=campaign_id),
            metadata=workspace.metadata,
        )
        assert ("broken_personalisation", "body_text") in {
            (w.code, w.field) for w in check.warnings
        }


async def test_another_workspaces_campaign_or_contact_is_not_found(
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    other = await new_workspace(contacts_service)
    campaign_id = await create(stub, workspace)
    stranger = await new_contact(contacts_service, other)
    calls = [
        stub.CheckContent(
            campaigns_pb2.CheckContentRequest(campaign_id=campaign_id), metadata=other.metadata
        ),
        stub.PreviewMessage(
            campaigns_pb2.PreviewMessageRequest(campaign_id=campaign_id), metadata=other.metadata
        ),
        stub.SendTestMessage(
            campaigns_pb2.SendTestMessageRequest(campaign_id=campaign_id, email="me@example.com"),
            metadata=other.metadata,
        ),
        stub.PreviewMessage(
            campaigns_pb2.PreviewMessageRequest(campaign_id="not-a-uuid"),
            metadata=workspace.metadata,
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # A contact named in the request that is not the workspace's: the campaign exists, the
    # request is what is wrong (HTTP 422 naming the field, not a 404 of the campaign).
    for call in (
        stub.PreviewMessage(
            campaigns_pb2.PreviewMessageRequest(campaign_id=campaign_id, contact_id=stranger.id),
            metadata=workspace.metadata,
        ),
        stub.SendTestMessage(
            campaigns_pb2.SendTestMessageRequest(
                campaign_id=campaign_id, email="me@example.com", contact_id=stranger.id
            ),
            metadata=workspace.metadata,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err.value) == ["contact_id"]


async def test_a_test_send_is_queued_for_delivery_as_a_test(
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    campaign_id = await create(stub, workspace, reply_to="owner@shop.example")
    contact = await new_contact(contacts_service, workspace)
    answer = await stub.SendTestMessage(
        campaigns_pb2.SendTestMessageRequest(
            campaign_id=campaign_id, email="Manager@Shop.Example", contact_id=contact.id
        ),
        metadata=workspace.metadata,
    )
    request = await requested(answer.message_id)
    assert request.kind == delivery_pb2.MESSAGE_KIND_TEST
    assert request.test_recipient == "Manager@shop.example"
    assert (request.contact_id, request.campaign_id) == (contact.id, campaign_id)
    assert (request.from_name, request.reply_to) == ("Test shop", "owner@shop.example")
    assert request.content.subject == "Test shop: new tea"
    assert request.content.body_text == FOUR_LINES
    again = await stub.SendTestMessage(
        campaigns_pb2.SendTestMessageRequest(campaign_id=campaign_id, email="me@example.com"),
        metadata=workspace.metadata,
    )
    assert again.message_id != answer.message_id  # a fresh message each time
    assert (await requested(again.message_id)).contact_id == ""


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"email": ""}, ["email"]),
        ({"email": "not an address"}, ["email"]),
        ({"email": "a@b"}, ["email"]),
        ({"email": "x" * 250 + "@example.com"}, ["email"]),
        ({"email": "me@example.com", "contact_id": "nope"}, ["contact_id"]),
        ({"email": "bad", "contact_id": "nope", "variant": -1}, ["email", "contact_id", "variant"]),
        ({"email": "me@example.com", "variant": 1}, ["variant"]),
    ],
)
async def test_a_bad_test_send_is_refused_naming_each_field(
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    workspace: Workspace,
    fields: dict[str, object],
    expected: list[str],
) -> None:
    campaign_id = await create(stub, workspace)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SendTestMessage(
            campaigns_pb2.SendTestMessageRequest(campaign_id=campaign_id, **fields),  # type: ignore[arg-type]
            metadata=workspace.metadata,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == expected
    assert await count_test_sends(campaign_id) == 0


async def count_test_sends(campaign_id: str) -> int:
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM campaigns.test_sends WHERE campaign_id = $1",
                uuid.UUID(campaign_id),
            )
        )
    finally:
        await conn.close()


async def test_test_sends_are_limited_per_campaign_and_hour(
    stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    campaign_id = await create(stub, workspace)
    other_campaign = await create(stub, workspace)
    request = campaigns_pb2.SendTestMessageRequest(campaign_id=campaign_id, email="me@example.com")
    # Concurrent calls cannot slip past the limit together: the campaign's row is locked.
    results = await asyncio.gather(
        *(stub.SendTestMessage(request, metadata=workspace.metadata) for _ in range(25)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(results) - len(refused) == 20
    assert {r.code() for r in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert await count_test_sends(campaign_id) == 20
    # Another campaign has its own allowance.
    await stub.SendTestMessage(
        campaigns_pb2.SendTestMessageRequest(campaign_id=other_campaign, email="me@example.com"),
        metadata=workspace.metadata,
    )


async def test_a_test_send_of_content_that_cannot_render_is_refused(
    stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    campaign_id = await create(stub, workspace, body_text="{{ 1 / 0 }}")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SendTestMessage(
            campaigns_pb2.SendTestMessageRequest(campaign_id=campaign_id, email="me@example.com"),
            metadata=workspace.metadata,
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await count_test_sends(campaign_id) == 0
