"""The suppression list: keyed by an HMAC of the normalised address under the workspace's
key; the address in clear only when asked; an erasure keeps the hash alone."""

from __future__ import annotations

import hashlib
import hmac

import asyncpg
import grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.contacts import suppression
from tests.integration.conftest import RunningService, Workspace
from tests.support import unique

HARD_BOUNCE = contacts_pb2.SUPPRESSION_REASON_HARD_BOUNCE
ERASED = contacts_pb2.SUPPRESSION_REASON_ERASED
MARKETING = contacts_pb2.CONSENT_PURPOSE_MARKETING


async def test_suppress_keys_the_list_by_hmac_of_the_normalised_address(
    pool: asyncpg.Pool, workspace: Workspace
) -> None:
    email = f"{unique('b')}@Example.com"
    async with pool.acquire() as conn:
        assert await suppression.suppress(
            conn, workspace.id, f"  {email} ", HARD_BOUNCE, keep_address=True
        )
        assert not await suppression.suppress(
            conn, workspace.id, email.upper(), HARD_BOUNCE, keep_address=True
        )
        key = await conn.fetchval(
            "SELECT suppression_key FROM workspaces WHERE id = $1::uuid", workspace.id
        )
        row = await conn.fetchrow(
            "SELECT address_hash, address, reason FROM suppressions WHERE workspace_id = $1::uuid",
            workspace.id,
        )
        entry = await suppression.lookup(conn, workspace.id, email.lower())
    assert len(key) == 32
    expected = hmac.new(key, email.lower().encode(), hashlib.sha256).digest()
    assert bytes(row["address_hash"]) == expected
    assert row["address"] == email.lower() and row["reason"] == HARD_BOUNCE
    assert entry is not None and entry.address == email.lower()


async def test_an_erased_address_stays_suppressed_without_the_address_in_clear(
    pool: asyncpg.Pool, workspace: Workspace, contacts_service: RunningService
) -> None:
    email = f"{unique('e')}@example.com"
    async with pool.acquire() as conn:
        # Listed for a bounce first, with its address; the erasure must drop the address.
        await suppression.suppress(conn, workspace.id, email, HARD_BOUNCE, keep_address=True)
        assert not await suppression.suppress(conn, workspace.id, email, ERASED, keep_address=False)
        rows = await conn.fetch(
            "SELECT address, reason FROM suppressions WHERE workspace_id = $1::uuid", workspace.id
        )
        clear = await conn.fetchval(
            "SELECT count(*) FROM suppressions WHERE position($1 in coalesce(address, '')) > 0",
            email,
        )
    assert [(r["address"], r["reason"]) for r in rows] == [(None, ERASED)]
    assert clear == 0

    # A new contact with the erased address is not mailed: CheckEligibility reads the hash.
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        created = await contacts_pb2_grpc.ContactServiceStub(channel).CreateContact(
            contacts_pb2.CreateContactRequest(
                contact=contacts_pb2.Contact(email=email.upper()), consents=[MARKETING]
            ),
            metadata=workspace.metadata,
        )
        answer = await contacts_pb2_grpc.ConsentServiceStub(channel).CheckEligibility(
            contacts_pb2.CheckEligibilityRequest(contact_id=created.contact.id, purpose=MARKETING),
            metadata=workspace.metadata,
        )
    assert not answer.eligible
    assert answer.reason.startswith("suppressed")


async def test_the_same_address_is_hashed_apart_in_two_workspaces(
    pool: asyncpg.Pool, workspace: Workspace, contacts_service: RunningService
) -> None:
    other = await _another_workspace(contacts_service)
    email = f"{unique('x')}@example.com"
    async with pool.acquire() as conn:
        assert await suppression.suppress(conn, workspace.id, email, ERASED, keep_address=False)
        assert await suppression.lookup(conn, other, email) is None
        assert await suppression.suppress(conn, other, email, ERASED, keep_address=False)
        hashes = await conn.fetch(
            "SELECT address_hash FROM suppressions WHERE workspace_id = ANY($1::uuid[])",
            [workspace.id, other],
        )
    assert len({bytes(h["address_hash"]) for h in hashes}) == 2


async def _another_workspace(contacts_service: RunningService) -> str:
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        answer = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Other shop", slug=unique("ws")),
            metadata=(("authorization", "Admin test-admin-token"),),
        )
    return str(answer.workspace_id)
