"""CheckEligibilityBatch: the same answer as CheckEligibility for every check, in the order
asked, from one query; contacts that are not there (unknown, erased, another workspace's)
answer found = false; bad batches are refused whole, naming the check."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from services.delivery.adapters.contacts import EligibilityBatcher, EligibilityClient
from tests.integration.conftest import RunningService, Workspace
from tests.integration.consent.conftest import create_contact, new_workspace, violations
from tests.support import unique

MARKETING = contacts_pb2.CONSENT_PURPOSE_MARKETING
TARGETED = contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES
AUTOMATIONS = contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
TRANSACTIONAL = contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
PURPOSES = (MARKETING, TARGETED, AUTOMATIONS, TRANSACTIONAL)
GRANTED = contacts_pb2.CONSENT_STATUS_GRANTED
WITHDRAWN = contacts_pb2.CONSENT_STATUS_WITHDRAWN
INTERNAL_TOKEN = "dev-internal-token"


def consents(channel: grpc.aio.Channel) -> contacts_pb2_grpc.ConsentServiceStub:
    return contacts_pb2_grpc.ConsentServiceStub(channel)


async def record(
    channel: grpc.aio.Channel, ws: Workspace, contact_id: str, purpose: int, status: int
) -> None:
    await consents(channel).RecordConsent(
        contacts_pb2.RecordConsentRequest(
            contact=contacts_pb2.ContactRef(contact_id=contact_id),
            purpose=purpose,  # type: ignore[arg-type]
            status=status,  # type: ignore[arg-type]
            source=contacts_pb2.CONSENT_SOURCE_FORM,
        ),
        metadata=ws.metadata,
    )


async def set_workspace(channel: grpc.aio.Channel, ws: Workspace, **fields: bool) -> None:
    await contacts_pb2_grpc.WorkspaceServiceStub(channel).UpdateWorkspaceSettings(
        contacts_pb2.UpdateWorkspaceSettingsRequest(
            settings=contacts_pb2.WorkspaceSettings(**fields),  # type: ignore[arg-type]
            update_mask=FieldMask(paths=list(fields)),
        ),
        metadata=ws.metadata,
    )


async def varied_contacts(
    channel: grpc.aio.Channel, ws: Workspace, contacts_service: RunningService
) -> dict[str, str]:
    """Contact id -> what it is: every state eligibility depends on, and ids that are not
    this workspace's contacts."""
    made: dict[str, str] = {}
    made[await create_contact(channel, ws, MARKETING, AUTOMATIONS)] = "granted"
    made[await create_contact(channel, ws)] = "never asked"
    withdrawn = await create_contact(channel, ws, MARKETING, TARGETED)
    await record(channel, ws, withdrawn, MARKETING, WITHDRAWN)
    made[withdrawn] = "withdrawn"
    email = f"{unique('sup')}@example.com"
    made[await create_contact(channel, ws, MARKETING, email=email)] = "suppressed"
    await consents(channel).AddSuppression(
        contacts_pb2.AddSuppressionRequest(
            email=email.upper(),  # the same address, as the keyed hash normalises it
            reason=contacts_pb2.SUPPRESSION_REASON_HARD_BOUNCE,
        ),
        metadata=ws.metadata,
    )
    erased = await create_contact(channel, ws, MARKETING)
    await contacts_pb2_grpc.PrivacyServiceStub(channel).EraseContact(
        contacts_pb2.EraseContactRequest(contact=contacts_pb2.ContactRef(contact_id=erased)),
        metadata=ws.metadata,
    )
    made[erased] = "erased"
    await set_workspace(channel, ws, double_opt_in=True)
    pending = await create_contact(channel, ws)
    await record(channel, ws, pending, AUTOMATIONS, GRANTED)
    made[pending] = "pending"
    await set_workspace(channel, ws, double_opt_in=False)
    made[str(uuid.uuid4())] = "unknown"
    other = await new_workspace(contacts_service)
    made[await create_contact(channel, other, MARKETING)] = "another workspace's"
    return made


async def single(
    channel: grpc.aio.Channel, ws: Workspace, contact_id: str, purpose: int
) -> contacts_pb2.EligibilityAnswer:
    """What CheckEligibility says, as a batch answer."""
    try:
        answer = await consents(channel).CheckEligibility(
            contacts_pb2.CheckEligibilityRequest(contact_id=contact_id, purpose=purpose),  # type: ignore[arg-type]
            metadata=ws.metadata,
        )
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
        return contacts_pb2.EligibilityAnswer(contact_id=contact_id, found=False)
    return contacts_pb2.EligibilityAnswer(contact_id=contact_id, found=True, eligibility=answer)


async def batch(
    channel: grpc.aio.Channel, ws: Workspace, checks: list[tuple[str, int]]
) -> list[contacts_pb2.EligibilityAnswer]:
    answer = await consents(channel).CheckEligibilityBatch(
        contacts_pb2.CheckEligibilityBatchRequest(
            checks=[
                contacts_pb2.CheckEligibilityRequest(contact_id=c, purpose=p)  # type: ignore[arg-type]
                for c, p in checks
            ]
        ),
        metadata=ws.metadata,
    )
    return list(answer.answers)


async def test_batch_agrees_with_one_check_at_a_time(
    channel: grpc.aio.Channel, workspace: Workspace, contacts_service: RunningService
) -> None:
    contacts = await varied_contacts(channel, workspace, contacts_service)
    # Every contact for every purpose, in an order that is not the contacts' (answers must
    # come back in the order asked), the same contact more than once in a batch.
    checks = [(c, p) for p in PURPOSES for c in reversed(list(contacts))]
    for required in (True, False):
        await set_workspace(channel, workspace, consent_required_for_campaigns=required)
        expected = [await single(channel, workspace, c, p) for c, p in checks]
        assert await batch(channel, workspace, checks) == expected, required

        by_kind = {
            contacts[a.contact_id]: a
            for a, (_, p) in zip(expected, checks, strict=True)
            if p == MARKETING
        }
        # The set is varied as meant: each state gives its own answer.
        assert by_kind["granted"].eligibility.eligible
        assert by_kind["granted"].eligibility.email.endswith("@example.com")
        assert by_kind["withdrawn"].eligibility.reason == "consent_withdrawn:marketing"
        assert by_kind["suppressed"].eligibility.reason == "suppressed:hard_bounce"
        assert by_kind["never asked"].eligibility.eligible == (not required)
        for gone in ("erased", "unknown", "another workspace's"):
            assert not by_kind[gone].found, gone
    pending = next(c for c, what in contacts.items() if what == "pending")
    [answer] = await batch(channel, workspace, [(pending, AUTOMATIONS)])
    assert answer.eligibility.reason == "consent_pending:automations"


async def test_exceptions_only_leaves_out_exactly_the_plainly_mailable(
    channel: grpc.aio.Channel, workspace: Workspace, contacts_service: RunningService
) -> None:
    """``exceptions_only`` (campaigns' fan-out): the full batch's answers, less those found,
    eligible, consenting and with an address, in the same order."""
    contacts = await varied_contacts(channel, workspace, contacts_service)
    checks = [(c, p) for p in PURPOSES for c in reversed(list(contacts))]
    for required in (True, False):
        await set_workspace(channel, workspace, consent_required_for_campaigns=required)
        full = await batch(channel, workspace, checks)
        response = await consents(channel).CheckEligibilityBatch(
            contacts_pb2.CheckEligibilityBatchRequest(
                checks=[
                    contacts_pb2.CheckEligibilityRequest(contact_id=c, purpose=p)  # type: ignore[arg-type]
                    for c, p in checks
                ],
                exceptions_only=True,
            ),
            metadata=workspace.metadata,
        )

        def mailable(a: contacts_pb2.EligibilityAnswer) -> bool:
            e = a.eligibility
            return a.found and e.eligible and e.consented and bool(e.email)

        assert list(response.answers) == [a for a in full if not mailable(a)], required
        # Left out: the consenting contact, and the withdrawn one for the purpose it kept.
        left_out = {contacts[a.contact_id] for a in full if mailable(a)}
        assert left_out == {"granted", "withdrawn"}, required
        # What is answered keeps its reasons: a withdrawal, a suppression, a contact gone.
        kinds = {contacts[a.contact_id] for a in response.answers}
        assert {"withdrawn", "suppressed", "erased", "unknown"} <= kinds


async def test_delivery_client_asks_in_chunks_and_keeps_the_order(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    """More checks than one call takes: the client splits them, the answers stay in order."""
    granted = await create_contact(channel, workspace, MARKETING)
    unknown = str(uuid.uuid4())
    checks = [(granted if n % 3 else unknown, MARKETING) for n in range(1001)]
    answers = await EligibilityClient(channel, INTERNAL_TOKEN).check_many(workspace.id, checks)
    assert len(answers) == 1001
    for (contact_id, _), answer in zip(checks, answers, strict=True):
        if contact_id == unknown:
            assert answer is None
        else:
            assert answer is not None and answer.eligible


async def test_concurrent_checks_go_as_one_batch_and_get_their_own_answers(
    channel: grpc.aio.Channel, workspace: Workspace, contacts_service: RunningService
) -> None:
    """Handlers that ask at the same moment share one call per workspace; each hears the
    answer one check() of its own would have given."""
    other = await new_workspace(contacts_service)
    mine = [await create_contact(channel, workspace, MARKETING) for _ in range(3)]
    mine.append(await create_contact(channel, workspace))  # never asked
    theirs = await create_contact(channel, other, MARKETING)
    asks = [(workspace.id, c, p) for c in mine for p in (MARKETING, AUTOMATIONS)]
    asks += [(other.id, theirs, MARKETING), (workspace.id, theirs, MARKETING)]
    asks *= 5
    one_by_one = EligibilityClient(channel, INTERNAL_TOKEN)
    expected = [await one_by_one.check(*ask) for ask in asks]
    batcher = EligibilityBatcher(EligibilityClient(channel, INTERNAL_TOKEN))
    assert await asyncio.gather(*(batcher.check(*ask) for ask in asks)) == expected
    assert batcher.calls == 2  # one per workspace
    assert sum(a is None for a in expected) == 5  # the other's contact, asked from mine

    refused = EligibilityBatcher(EligibilityClient(channel, "not-the-internal-token"))
    results = await asyncio.gather(
        *(refused.check(*ask) for ask in asks[:4]), return_exceptions=True
    )
    assert all(
        isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.UNAUTHENTICATED
        for r in results
    ), results


async def test_batch_refuses_bad_checks_whole(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    granted = await create_contact(channel, workspace, MARKETING)
    for checks, fields in (
        ([(granted, MARKETING), ("not-a-uuid", MARKETING)], ["checks[1].contact_id"]),
        ([("", MARKETING)], ["checks[0].contact_id"]),
        ([(granted, 0), (granted, 99)], ["checks[0].purpose", "checks[1].purpose"]),
        ([(granted, MARKETING)] * 1001, ["checks"]),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await batch(channel, workspace, checks)
        assert violations(caught.value) == fields
    assert await batch(channel, workspace, []) == []
    [answer] = await batch(channel, workspace, [(granted, MARKETING)])
    assert answer.found and answer.eligibility.eligible
    # A read: asked again (a retried call), the same answers.
    replayed = [(granted, MARKETING), (granted, TRANSACTIONAL), (granted, MARKETING)]
    assert await batch(channel, workspace, replayed) == await batch(channel, workspace, replayed)


async def test_an_id_in_another_form_uuid_reads_is_the_same_contact(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    """Services send an id's canonical text, taken as it is; every other form of it that
    uuid.UUID reads still finds the contact, and each answer names the id as it was asked."""
    granted = await create_contact(channel, workspace, MARKETING)
    key = uuid.UUID(granted)
    forms = [granted, granted.upper(), key.hex, f"{{{granted}}}", key.urn]
    answers = await batch(channel, workspace, [(f, MARKETING) for f in forms])
    assert [a.contact_id for a in answers] == forms
    assert all(a.found and a.eligibility == answers[0].eligibility for a in answers)
    assert answers[0].eligibility.eligible


async def test_batch_without_credentials_is_refused(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await consents(channel).CheckEligibilityBatch(
            contacts_pb2.CheckEligibilityBatchRequest(
                checks=[contacts_pb2.CheckEligibilityRequest(contact_id=str(uuid.uuid4()))]
            )
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
