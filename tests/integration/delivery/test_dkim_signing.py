"""DKIM over real gRPC, PostgreSQL, Kafka and SMTP: a workspace's key signs its mail, and the
mail as the server received it verifies against the DNS record SetDkimKey answered."""

from __future__ import annotations

import logging
import uuid

import asyncpg
import dkim as dkimpy
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.delivery.v1 import delivery_pb2, delivery_pb2_grpc

from services.delivery.domain import dkim, verp
from tests.integration.conftest import RunningService, Workspace
from tests.integration.delivery.auth_support import (
    AuthDelivery,
    CaptureSmtp,
    auth_delivery,
    capture,
    mail_contact,
    new_contact,
    producer,
)
from tests.support import unique

__all__ = ["auth_delivery", "capture", "producer"]  # fixtures


def dns_for(key: delivery_pb2.DkimKey):  # type: ignore[no-untyped-def]
    """A resolver that knows one TXT record: the one the manager was told to publish."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return key.dns_record_value.encode() if name == f"{key.dns_record_name}.".encode() else None

    return lookup


def stub(delivery: AuthDelivery) -> delivery_pb2_grpc.DeliveryServiceStub:
    return delivery_pb2_grpc.DeliveryServiceStub(
        grpc.aio.insecure_channel(delivery.service.address)
    )


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.BadRequest details"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


async def test_a_mail_as_received_verifies_and_fails_once_a_signed_header_is_altered(
    auth_delivery: AuthDelivery,
    contacts_service: RunningService,
    capture: CaptureSmtp,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    key = await stub(auth_delivery).SetDkimKey(
        delivery_pb2.SetDkimKeyRequest(domain=auth_delivery.bounce_domain, selector="nudge"),
        metadata=workspace.metadata,
    )
    assert key.dns_record_name == f"nudge._domainkey.{auth_delivery.bounce_domain}"
    assert key.dns_record_value.startswith("v=DKIM1; k=rsa; p=")
    contact = await new_contact(contacts_service, workspace)

    message_id, mail = await mail_contact(producer, capture, workspace, contact)

    assert mail.raw.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=")
    assert dkimpy.verify(mail.raw, dnsfunc=dns_for(key))
    for before, after in ((b"\r\nSubject: Hello", b"\r\nSubject: Hellx"), (b"Hi Ada", b"Hi Eve")):
        assert before in mail.raw
        assert not dkimpy.verify(mail.raw.replace(before, after, 1), dnsfunc=dns_for(key))
    # The List-Unsubscribe pair is signed: a relay cannot point the button elsewhere.
    assert b"List-Unsubscribe: <" in mail.raw
    forged = mail.raw.replace(b"List-Unsubscribe: <", b"List-Unsubscribe: <https://evil/", 1)
    assert not dkimpy.verify(forged, dnsfunc=dns_for(key))
    # The envelope sender is the message's VERP address.
    key_bytes = verp.derive_key(auth_delivery.link_secret)
    assert verp.message_of(key_bytes, mail.mail_from, auth_delivery.bounce_domain) == message_id


async def test_without_a_key_for_the_from_domain_mail_goes_unsigned(
    auth_delivery: AuthDelivery,
    contacts_service: RunningService,
    capture: CaptureSmtp,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    # A key for another domain of the workspace does not sign mail from the platform domain.
    await stub(auth_delivery).SetDkimKey(
        delivery_pb2.SetDkimKeyRequest(domain="shop.example.com", selector="nudge"),
        metadata=workspace.metadata,
    )
    contact = await new_contact(contacts_service, workspace)
    _, mail = await mail_contact(producer, capture, workspace, contact)
    assert b"DKIM-Signature" not in mail.raw
    assert mail.mail_from.startswith("bounces+")


async def test_a_key_set_or_deleted_applies_to_the_next_mail(
    auth_delivery: AuthDelivery,
    contacts_service: RunningService,
    capture: CaptureSmtp,
    workspace: Workspace,
    producer: AIOKafkaProducer,
) -> None:
    """The process that answered the call drops what it cached about the domain (here: that
    it had no key), so the change does not wait for the cache to expire."""
    contact = await new_contact(contacts_service, workspace)
    _, before = await mail_contact(producer, capture, workspace, contact)
    assert b"DKIM-Signature" not in before.raw
    key = await stub(auth_delivery).SetDkimKey(
        delivery_pb2.SetDkimKeyRequest(domain=auth_delivery.bounce_domain, selector="now"),
        metadata=workspace.metadata,
    )
    _, signed = await mail_contact(producer, capture, workspace, contact)
    assert dkimpy.verify(signed.raw, dnsfunc=dns_for(key))
    await stub(auth_delivery).DeleteDkimKey(
        delivery_pb2.DeleteDkimKeyRequest(domain=auth_delivery.bounce_domain),
        metadata=workspace.metadata,
    )
    _, after = await mail_contact(producer, capture, workspace, contact)
    assert b"DKIM-Signature" not in after.raw


async def test_a_key_given_in_pem_is_used_and_its_record_answered(
    auth_delivery: AuthDelivery,
    contacts_service: RunningService,
    capture: CaptureSmtp,
    workspace: Workspace,
    producer: AIOKafkaProducer,
    caplog: pytest.LogCaptureFixture,
    infra: dict[str, str],
) -> None:
    caplog.set_level(logging.DEBUG)
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    key = await stub(auth_delivery).SetDkimKey(
        delivery_pb2.SetDkimKeyRequest(
            domain=auth_delivery.bounce_domain.upper(), selector="Ed1", private_key_pem=pem
        ),
        metadata=workspace.metadata,
    )
    assert (key.domain, key.selector) == (auth_delivery.bounce_domain, "ed1")
    assert key.dns_record_value.startswith("v=DKIM1; k=ed25519; p=")
    contact = await new_contact(contacts_service, workspace)
    _, mail = await mail_contact(producer, capture, workspace, contact)
    assert b"a=ed25519-sha256" in mail.raw.split(b"\r\n\r\n", 1)[0]
    assert dkimpy.verify(mail.raw, dnsfunc=dns_for(key))
    # Logged that it was set, never the key itself.
    assert f"DKIM key set for {auth_delivery.bounce_domain}" in caplog.text
    secret = "".join(pem.splitlines()[1:-1])
    assert secret not in caplog.text.replace("\n", "")
    # Stored sealed: the database alone does not hold the key.
    db = await asyncpg.connect(infra["DATABASE_URL"])
    try:
        stored = await db.fetchval(
            "SELECT private_key_pem FROM delivery.dkim_keys WHERE workspace_id = $1"
            " AND domain = $2",
            uuid.UUID(workspace.id),
            auth_delivery.bounce_domain,
        )
    finally:
        await db.close()
    assert stored.startswith("sealed:v1:") and "PRIVATE KEY" not in stored
    assert secret not in stored and pem.splitlines()[1] not in stored


async def test_keys_are_listed_and_deleted_per_workspace_and_never_answer_the_private_key(
    auth_delivery: AuthDelivery, contacts_service: RunningService, workspace: Workspace
) -> None:
    delivery = stub(auth_delivery)
    first = await delivery.SetDkimKey(
        delivery_pb2.SetDkimKeyRequest(domain="news.example.com", selector="s1"),
        metadata=workspace.metadata,
    )
    # A retried call (same selector, no key) answers the stored key: the record already
    # published stays valid.
    again = await delivery.SetDkimKey(
        delivery_pb2.SetDkimKeyRequest(domain="news.example.com", selector="s1"),
        metadata=workspace.metadata,
    )
    assert again == first
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await delivery.SetDkimKey(
            delivery_pb2.SetDkimKeyRequest(domain="news.example.com", selector="s2"),
            metadata=workspace.metadata,
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    listed = await delivery.ListDkimKeys(
        delivery_pb2.ListDkimKeysRequest(), metadata=workspace.metadata
    )
    assert [k.domain for k in listed.keys] == ["news.example.com"]
    assert "PRIVATE" not in str(listed) and "PRIVATE" not in str(first)

    async with grpc.aio.insecure_channel(contacts_service.address) as ch:
        made = await contacts_pb2_grpc.WorkspaceServiceStub(ch).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Other", slug=unique("other")),
            metadata=(("authorization", "Admin test-admin-token"),),
        )
    other = Workspace(made.workspace_id, made.api_key)
    assert not (
        await delivery.ListDkimKeys(delivery_pb2.ListDkimKeysRequest(), metadata=other.metadata)
    ).keys
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await delivery.DeleteDkimKey(
            delivery_pb2.DeleteDkimKeyRequest(domain="news.example.com"), metadata=other.metadata
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The other workspace may have its own key for the same domain.
    await delivery.SetDkimKey(
        delivery_pb2.SetDkimKeyRequest(domain="news.example.com", selector="s9"),
        metadata=other.metadata,
    )

    await delivery.DeleteDkimKey(
        delivery_pb2.DeleteDkimKeyRequest(domain="news.example.com"), metadata=workspace.metadata
    )
    assert not (
        await delivery.ListDkimKeys(delivery_pb2.ListDkimKeysRequest(), metadata=workspace.metadata)
    ).keys
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await delivery.DeleteDkimKey(
            delivery_pb2.DeleteDkimKeyRequest(domain="news.example.com"),
            metadata=workspace.metadata,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert [
        k.selector
        for k in (
            await delivery.ListDkimKeys(delivery_pb2.ListDkimKeysRequest(), metadata=other.metadata)
        ).keys
    ] == ["s9"]


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (delivery_pb2.SetDkimKeyRequest(domain="", selector="s"), ["domain"]),
        (delivery_pb2.SetDkimKeyRequest(domain="localhost", selector="s"), ["domain"]),
        (delivery_pb2.SetDkimKeyRequest(domain="a.example", selector="a b"), ["selector"]),
        (
            delivery_pb2.SetDkimKeyRequest(
                domain="bad domain", selector="", private_key_pem="not a key"
            ),
            ["domain", "selector", "private_key_pem"],
        ),
        (
            delivery_pb2.SetDkimKeyRequest(
                domain="a.example", selector="s", private_key_pem="-----BEGIN" + "A" * 30_000
            ),
            ["private_key_pem"],
        ),
    ],
)
async def test_bad_input_is_invalid_with_field_violations_and_writes_nothing(
    auth_delivery: AuthDelivery,
    workspace: Workspace,
    request_: delivery_pb2.SetDkimKeyRequest,
    fields: list[str],
) -> None:
    delivery = stub(auth_delivery)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await delivery.SetDkimKey(request_, metadata=workspace.metadata)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == fields
    assert not (
        await delivery.ListDkimKeys(delivery_pb2.ListDkimKeysRequest(), metadata=workspace.metadata)
    ).keys
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await delivery.DeleteDkimKey(
            delivery_pb2.DeleteDkimKeyRequest(domain="not a domain"), metadata=workspace.metadata
        )
    assert violations(err.value) == ["domain"]


async def test_a_key_sealed_under_another_secret_is_refused_clearly_and_never_signs(
    auth_delivery: AuthDelivery,
    workspace: Workspace,
    infra: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """NUDGE_DATA_KEY changed since the key was set: SetDkimKey says so instead of failing
    with INTERNAL, and the send path's cache logs it and signs nothing with garbage."""
    from services.delivery.adapters.dkim_keys import KeyCache
    from services.delivery.config import Settings
    from services.delivery.domain.sealing import Sealer

    domain = f"{unique('sealed')}.example.com"
    await stub(auth_delivery).SetDkimKey(
        delivery_pb2.SetDkimKeyRequest(domain=domain, selector="s1"), metadata=workspace.metadata
    )
    pool = await asyncpg.create_pool(
        infra["DATABASE_URL"], min_size=1, max_size=2, server_settings={"search_path": "delivery"}
    )
    assert pool is not None
    try:
        this_process = Sealer(Settings().data_key)
        assert await KeyCache(pool, this_process).get(workspace.id, domain) is not None
        foreign = Sealer("a secret this delivery does not have").seal(
            dkim.generate_rsa_key().pem, workspace_id=workspace.id, domain=domain
        )
        await pool.execute(
            "UPDATE delivery.dkim_keys SET private_key_pem = $3"
            " WHERE workspace_id = $1 AND domain = $2",
            uuid.UUID(workspace.id),
            domain,
            foreign,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub(auth_delivery).SetDkimKey(
                delivery_pb2.SetDkimKeyRequest(domain=domain, selector="s1"),
                metadata=workspace.metadata,
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "NUDGE_DATA_KEY" in (err.value.details() or "")
        with caplog.at_level(logging.ERROR):
            assert await KeyCache(pool, this_process).get(workspace.id, domain) is None
        assert "NUDGE_DATA_KEY" in caplog.text and "unsigned" in caplog.text
    finally:
        await pool.close()
