"""The other services' share of privacy, on real PostgreSQL, Kafka and SMTP: delivery and
triggers export what they hold about a contact (ContactDataService, internal callers only)
and forget it on ContactErased; so does campaigns (its recipients and attributions rows)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from google.protobuf.json_format import MessageToDict
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.contacts.v1 import events_pb2 as contacts_events_pb2
from nudge.privacy.v1 import privacy_pb2, privacy_pb2_grpc

from services.common.auth import internal_metadata
from services.common.db import create_pool, migrate
from services.common.events import new_envelope
from services.common.privacy import ContactErasedConsumer
from services.common.topics import DELIVERY_REQUESTS
from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.delivery.test_delivery import (
    SENT,
    automation_request,
    has_status,
    new_contact,
)
from tests.support import eventually, free_port


async def is_sent(delivery: RunningService, ws: Workspace, message_id: str) -> bool:
    """The message is SENT (a message not yet claimed is NOT_FOUND: not yet)."""
    try:
        return await has_status(delivery, ws, message_id, SENT)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise


def internal_token() -> str:
    return os.environ.get("NUDGE_INTERNAL_TOKEN", "dev-internal-token")


async def export_from(address: str, workspace_id: str, contact_id: str) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await privacy_pb2_grpc.ContactDataServiceStub(channel).ExportContactData(
            privacy_pb2.ExportContactDataRequest(contact_id=contact_id),
            metadata=internal_metadata(internal_token(), workspace_id),
        )
    return MessageToDict(answer.data)


@pytest.fixture(scope="module")
async def delivery_service(contacts_service: RunningService) -> AsyncIterator[RunningService]:
    from services.delivery.bootstrap import serve
    from services.delivery.config import Settings

    port = free_port()
    async with run_in_process(serve, Settings(grpc_port=port), port) as running:
        yield running


@pytest.fixture
async def producer(infra: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"])
    await p.start()
    yield p
    await p.stop()


async def test_delivery_exports_its_ledger_rows_and_pseudonymises_them_on_contact_erased(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    contact = await new_contact(
        contacts_service, workspace, [contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS]
    )
    message_id, value = automation_request(workspace, contact.id)
    await producer.send_and_wait(DELIVERY_REQUESTS, value, key=contact.id.encode())
    await eventually(lambda: is_sent(delivery_service, workspace, message_id), timeout=60)

    held = await export_from(delivery_service.address, workspace.id, contact.id)
    assert [(m["message_id"], m["status"]) for m in held["messages"]] == [(message_id, SENT)]
    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        # An event the broker refused, keyed by the contact: dropped by the erasure.
        await conn.execute(
            "INSERT INTO delivery.outbox_dead_letters (id, topic, key, value, headers,"
            " created_at, error) VALUES ((SELECT coalesce(max(id), 0) + 1000000 FROM"
            " delivery.outbox_dead_letters), 'delivery.events.v1', $1, $2, '{}', now(), 'x')",
            contact.id.encode(),
            contact.email.encode(),
        )
        async with grpc.aio.insecure_channel(contacts_service.address) as channel:
            await contacts_pb2_grpc.PrivacyServiceStub(channel).EraseContact(
                contacts_pb2.EraseContactRequest(
                    contact=contacts_pb2.ContactRef(contact_id=contact.id)
                ),
                metadata=workspace.metadata,
            )

        async def pseudonymised() -> bool:
            row = await conn.fetchrow(
                "SELECT contact_id, detail, status FROM delivery.messages WHERE message_id = $1",
                uuid.UUID(message_id),
            )
            return bool(row and str(row["contact_id"]) != contact.id and row["detail"] == "erased")

        await eventually(pseudonymised, timeout=60)
        assert not await conn.fetchval(
            "SELECT count(*) FROM delivery.outbox_dead_letters WHERE key = $1",
            contact.id.encode(),
        )
    finally:
        await conn.close()
    # The message still counts as sent; nothing is held about the contact any more.
    assert await has_status(delivery_service, workspace, message_id, SENT)
    assert await export_from(delivery_service.address, workspace.id, contact.id) == {}


async def test_delivery_exports_only_to_nudges_own_services_and_only_the_workspaces_rows(
    delivery_service: RunningService,
    contacts_service: RunningService,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    contact = await new_contact(
        contacts_service, workspace, [contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS]
    )
    message_id, value = automation_request(workspace, contact.id)
    await producer.send_and_wait(DELIVERY_REQUESTS, value, key=contact.id.encode())
    await eventually(lambda: is_sent(delivery_service, workspace, message_id), timeout=60)

    async with grpc.aio.insecure_channel(delivery_service.address) as channel:
        stub = privacy_pb2_grpc.ContactDataServiceStub(channel)
        request = privacy_pb2.ExportContactDataRequest(contact_id=contact.id)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ExportContactData(request, metadata=workspace.metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ExportContactData(
                privacy_pb2.ExportContactDataRequest(contact_id="not-a-uuid"),
                metadata=internal_metadata(internal_token(), workspace.id),
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "contact_id" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ExportContactData(request, metadata=internal_metadata(internal_token()))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Another workspace asking about this contact's id finds nothing.
    assert await export_from(delivery_service.address, str(uuid.uuid4()), contact.id) == {}
    assert (await export_from(delivery_service.address, workspace.id, contact.id))["messages"]


async def test_triggers_forgets_the_runs_and_pending_events_of_an_erased_contact_only(
    infra: dict[str, str],
) -> None:
    from services.triggers import privacy
    from services.triggers.bootstrap import MIGRATIONS
    from services.triggers.handlers import SCHEMA

    url = infra["DATABASE_URL"]
    await migrate(url, SCHEMA, MIGRATIONS)
    pool = await create_pool(url, SCHEMA, max_size=2)
    workspace_id = str(uuid.uuid4())
    erased, kept = uuid.uuid4(), uuid.uuid4()
    try:
        welcome, winback, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        ws = uuid.UUID(workspace_id)
        async with pool.acquire() as conn:
            for contact_id, workflow in ((erased, welcome), (erased, winback), (kept, other)):
                run_id = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO runs (workspace_id, id, workflow_id, version, contact_id, state,"
                    " trigger_event_id, started_at, updated_at)"
                    " VALUES ($1, $2, $3, 1, $4, 'waiting', 'e', now(), now())",
                    ws,
                    run_id,
                    workflow,
                    contact_id,
                )
                await conn.execute(
                    "INSERT INTO timers (timer_key, workspace_id, contact_id, workflow_id, run_id,"
                    " kind, due_at) VALUES ($1, $2, $3, $4, $5, 'run', now())",
                    f"run/{run_id}",
                    ws,
                    contact_id,
                    workflow,
                    run_id,
                )
                await conn.execute(
                    "INSERT INTO contact_facts (workspace_id, contact_id, tags) VALUES ($1, $2,"
                    " '{vip}') ON CONFLICT DO NOTHING",
                    ws,
                    contact_id,
                )
            await conn.execute(
                "INSERT INTO outbox_dead_letters (id, topic, key, value, headers, created_at,"
                " error) VALUES ((SELECT coalesce(max(id), 0) + 1000000 FROM"
                " outbox_dead_letters), 'delivery.requests.v1', $1, 'x', '{}', now(), 'x')",
                str(erased).encode(),
            )
            before = await privacy.export_contact(conn, workspace_id, erased)
            assert sorted(r["workflow_id"] for r in before["runs"]) == sorted(
                [str(welcome), str(winback)]
            )
            assert len(before["timers"]) == 2
            assert before["contact_facts"][0]["tags"] == ["vip"]

        consumer = ContactErasedConsumer(pool, privacy.CONSUMER, privacy.erase_contact)
        event = new_envelope(
            workspace_id,
            contacts_events_pb2.ContactErased(contact_id=str(erased), version=7),
        )
        await consumer(event, None)  # type: ignore[arg-type]
        await consumer(event, None)  # type: ignore[arg-type]  # a redelivery
        assert consumer.erased == 1

        async with pool.acquire() as conn:
            assert await privacy.export_contact(conn, workspace_id, erased) == {}
            assert (await privacy.export_contact(conn, workspace_id, kept))["runs"]
            assert not await conn.fetchval(
                "SELECT count(*) FROM timers WHERE contact_id = $1", erased
            )
            assert not await conn.fetchval(
                "SELECT count(*) FROM outbox_dead_letters WHERE key = $1", str(erased).encode()
            )
    finally:
        await pool.close()


async def test_campaigns_exports_its_recipient_rows_and_pseudonymises_them_on_contact_erased(
    contacts_service: RunningService, workspace: Workspace
) -> None:
    from services.campaigns.bootstrap import serve
    from services.campaigns.config import Settings

    contact = await new_contact(
        contacts_service, workspace, [contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES]
    )
    other = await new_contact(
        contacts_service, workspace, [contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES]
    )
    port = free_port()
    async with run_in_process(serve, Settings(grpc_port=port), port) as campaigns:
        conn = await asyncpg.connect(
            os.environ["DATABASE_URL"], server_settings={"search_path": "campaigns"}
        )
        try:
            # A sent campaign reached both contacts; one ordered after a click.
            campaign = uuid.uuid4()
            ws = uuid.UUID(workspace.id)
            await conn.execute(
                "INSERT INTO campaigns (id, workspace_id, name, segment_ids, subject, body_text,"
                " status, created_at, updated_at) VALUES ($1, $2, 'Spring', '{vip}', 's', 't',"
                " 4, now(), now())",
                campaign,
                ws,
            )
            for who in (contact.id, other.id):
                await conn.execute(
                    "INSERT INTO recipients (workspace_id, campaign_id, contact_id, message_id,"
                    " requested_at) VALUES ($1, $2, $3, $4, now())",
                    ws,
                    campaign,
                    uuid.UUID(who),
                    uuid.uuid4(),
                )
            await conn.execute(
                "INSERT INTO attributions (workspace_id, order_id, campaign_id, contact_id,"
                " variant, holdout, amount_minor, currency, placed_at)"
                " VALUES ($1, 'o-1', $2, $3, 0, false, 1200, 'EUR', now())",
                ws,
                campaign,
                uuid.UUID(contact.id),
            )
            held = await export_from(campaigns.address, workspace.id, contact.id)
            assert [r["campaign_id"] for r in held["recipients"]] == [str(campaign)]
            assert [a["order_id"] for a in held["attributions"]] == ["o-1"]

            async with grpc.aio.insecure_channel(contacts_service.address) as channel:
                await contacts_pb2_grpc.PrivacyServiceStub(channel).EraseContact(
                    contacts_pb2.EraseContactRequest(
                        contact=contacts_pb2.ContactRef(contact_id=contact.id)
                    ),
                    metadata=workspace.metadata,
                )

            async def forgotten() -> bool:
                return not await conn.fetchval(
                    "SELECT count(*) FROM recipients WHERE contact_id = $1",
                    uuid.UUID(contact.id),
                )

            await eventually(forgotten, timeout=60)
            # Still two recipients and one order: the report does not change after the fact,
            # and the pseudonym is the same in both tables.
            aliases = await conn.fetch(
                "SELECT contact_id FROM recipients WHERE campaign_id = $1 AND contact_id <> $2",
                campaign,
                uuid.UUID(other.id),
            )
            assert len(aliases) == 1
            attributed_to = await conn.fetchval(
                "SELECT contact_id FROM attributions WHERE workspace_id = $1 AND order_id = 'o-1'",
                ws,
            )
            assert attributed_to == aliases[0]["contact_id"]
            assert await export_from(campaigns.address, workspace.id, contact.id) == {}
            assert await export_from(campaigns.address, workspace.id, other.id) != {}
        finally:
            await conn.close()
