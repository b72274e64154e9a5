"""CountEligible: for a filter, how many contacts may be mailed for a purpose and why the
others may not, each counted once; the SQL agrees with CheckEligibility contact by contact.
And the workspace settings it depends on (GetWorkspaceSettings / UpdateWorkspaceSettings)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from tests.integration.conftest import RunningService, Workspace
from tests.integration.consent.conftest import create_contact, new_workspace, violations
from tests.support import unique

MARKETING = contacts_pb2.CONSENT_PURPOSE_MARKETING
TARGETED = contacts_pb2.CONSENT_PURPOSE_TARGETED_MESSAGES
AUTOMATIONS = contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
TRANSACTIONAL = contacts_pb2.CONSENT_PURPOSE_TRANSACTIONAL
GRANTED = contacts_pb2.CONSENT_STATUS_GRANTED
WITHDRAWN = contacts_pb2.CONSENT_STATUS_WITHDRAWN


def stub(channel: grpc.aio.Channel) -> contacts_pb2_grpc.ConsentServiceStub:
    return contacts_pb2_grpc.ConsentServiceStub(channel)


async def set_settings(
    channel: grpc.aio.Channel, ws: Workspace, paths: list[str], **fields: object
) -> contacts_pb2.WorkspaceSettings:
    answer: contacts_pb2.WorkspaceSettings = await contacts_pb2_grpc.WorkspaceServiceStub(
        channel
    ).UpdateWorkspaceSettings(
        contacts_pb2.UpdateWorkspaceSettingsRequest(
            settings=contacts_pb2.WorkspaceSettings(**fields),  # type: ignore[arg-type]
            update_mask=FieldMask(paths=paths),
        ),
        metadata=ws.metadata,
    )
    return answer


async def audience(channel: grpc.aio.Channel, ws: Workspace, tag: str) -> dict[str, str]:
    """Contacts tagged ``tag`` in every state that matters: contact id -> what it is."""
    contacts: dict[str, str] = {}
    stub_ = stub(channel)

    async def make(name: str, *consents: int, email: str = "") -> str:
        contact_id = await create_contact(channel, ws, *consents, email=email)
        await contacts_pb2_grpc.ContactServiceStub(channel).ModifyTags(
            contacts_pb2.ModifyTagsRequest(
                contact=contacts_pb2.ContactRef(contact_id=contact_id), add=[tag]
            ),
            metadata=ws.metadata,
        )
        contacts[contact_id] = name
        return contact_id

    await make("granted", MARKETING, AUTOMATIONS)
    await make("granted too", MARKETING)
    await make("never asked")
    withdrawn = await make("withdrawn", MARKETING, AUTOMATIONS)
    for purpose in (MARKETING, AUTOMATIONS):
        await stub_.RecordConsent(
            contacts_pb2.RecordConsentRequest(
                contact=contacts_pb2.ContactRef(contact_id=withdrawn),
                purpose=purpose,  # type: ignore[arg-type]
                status=WITHDRAWN,
                source=contacts_pb2.CONSENT_SOURCE_FORM,
            ),
            metadata=ws.metadata,
        )
    # Suppressed and withdrawn: counted once, as suppressed.
    email = f"{unique('sup')}@example.com"
    suppressed = await make("suppressed", MARKETING, email=email)
    await stub_.RecordConsent(
        contacts_pb2.RecordConsentRequest(
            contact=contacts_pb2.ContactRef(contact_id=suppressed),
            purpose=MARKETING,
            status=WITHDRAWN,
            source=contacts_pb2.CONSENT_SOURCE_FORM,
        ),
        metadata=ws.metadata,
    )
    await stub_.AddSuppression(
        contacts_pb2.AddSuppressionRequest(email=email), metadata=ws.metadata
    )
    await make("untagged is not counted")
    await contacts_pb2_grpc.ContactServiceStub(channel).ModifyTags(
        contacts_pb2.ModifyTagsRequest(
            contact=contacts_pb2.ContactRef(contact_id=list(contacts)[-1]), remove=[tag]
        ),
        metadata=ws.metadata,
    )
    contacts.pop(list(contacts)[-1])
    return contacts


async def count(
    channel: grpc.aio.Channel, ws: Workspace, purpose: int, tag: str
) -> tuple[int, int, dict[str, int]]:
    answer = await stub(channel).CountEligible(
        contacts_pb2.CountEligibleRequest(
            purpose=purpose,  # type: ignore[arg-type]
            filter=contacts_pb2.ContactFilter(tags_all=[tag]),
        ),
        metadata=ws.metadata,
    )
    return answer.total, answer.eligible, {i.reason: i.count for i in answer.ineligible}


async def test_count_eligible_by_reason_agrees_with_check_eligibility(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    tag = "audience"
    contacts = await audience(channel, workspace, tag)
    assert len(contacts) == 5
    await set_settings(
        channel, workspace, ["consent_required_for_campaigns"], consent_required_for_campaigns=True
    )

    total, eligible, ineligible = await count(channel, workspace, MARKETING, tag)
    assert (total, eligible) == (5, 2)
    assert ineligible == {
        "no_consent": 1,
        "consent_withdrawn": 1,
        "consent_pending": 0,
        "suppressed": 1,
    }

    # The set-based count and the one-contact answer are one rule, for every purpose and
    # both values of the workspace's setting.
    for required in (True, False):
        await set_settings(
            channel,
            workspace,
            ["consent_required_for_campaigns"],
            consent_required_for_campaigns=required,
        )
        for purpose in (MARKETING, TARGETED, AUTOMATIONS, TRANSACTIONAL):
            expected: dict[str, int] = {
                "no_consent": 0,
                "consent_withdrawn": 0,
                "consent_pending": 0,
                "suppressed": 0,
            }
            eligible_one_by_one = 0
            for contact_id in contacts:
                answer = await stub(channel).CheckEligibility(
                    contacts_pb2.CheckEligibilityRequest(contact_id=contact_id, purpose=purpose),  # type: ignore[arg-type]
                    metadata=workspace.metadata,
                )
                if answer.eligible:
                    eligible_one_by_one += 1
                else:
                    expected[answer.reason.split(":")[0]] += 1
            assert await count(channel, workspace, purpose, tag) == (
                5,
                eligible_one_by_one,
                expected,
            ), (required, purpose)


async def test_count_eligible_refuses_bad_input(
    channel: grpc.aio.Channel, workspace: Workspace
) -> None:
    for request, field in (
        (contacts_pb2.CountEligibleRequest(), "purpose"),
        (
            contacts_pb2.CountEligibleRequest(
                purpose=MARKETING, filter=contacts_pb2.ContactFilter(tags_all=["Not A Tag"])
            ),
            "filter.tags_all[0]",
        ),
        (contacts_pb2.CountEligibleRequest(purpose=MARKETING, segment_id=""), "segment_id"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub(channel).CountEligible(request, metadata=workspace.metadata)
        assert field in violations(caught.value)


async def test_another_workspace_counts_only_its_own(
    channel: grpc.aio.Channel, workspace: Workspace, contacts_service: RunningService
) -> None:
    await audience(channel, workspace, "mine")
    other = await new_workspace(contacts_service)
    assert await count(channel, other, MARKETING, "mine") == (
        0,
        0,
        {"no_consent": 0, "consent_withdrawn": 0, "consent_pending": 0, "suppressed": 0},
    )


async def test_workspace_settings_read_and_update_by_field_mask(
    channel: grpc.aio.Channel, workspace: Workspace, contacts_service: RunningService
) -> None:
    workspaces = contacts_pb2_grpc.WorkspaceServiceStub(channel)
    before = await workspaces.GetWorkspaceSettings(
        contacts_pb2.GetWorkspaceSettingsRequest(), metadata=workspace.metadata
    )
    assert before.workspace_id == workspace.id
    assert not before.double_opt_in

    after = await set_settings(channel, workspace, ["double_opt_in"], double_opt_in=True, name="")
    assert after.double_opt_in and after.name == before.name  # the mask: name left alone
    after = await set_settings(channel, workspace, ["name"], name="  New name ")
    assert (after.name, after.double_opt_in) == ("New name", True)

    other = await new_workspace(contacts_service)
    theirs = await workspaces.GetWorkspaceSettings(
        contacts_pb2.GetWorkspaceSettingsRequest(), metadata=other.metadata
    )
    assert (theirs.name, theirs.double_opt_in) == ("Other shop", False)

    for paths, fields, field in (
        (["slug"], {}, "update_mask.paths[0]"),
        (["name"], {"name": ""}, "settings.name"),
        (["name"], {"name": "x" * 1000}, "settings.name"),
        (["name", "name"], {"name": "a"}, "update_mask.paths"),
        (["double_opt_in"], {"workspace_id": other.id}, "settings.workspace_id"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await set_settings(channel, workspace, paths, **fields)
        assert field in violations(caught.value)
    unchanged = await workspaces.GetWorkspaceSettings(
        contacts_pb2.GetWorkspaceSettingsRequest(), metadata=workspace.metadata
    )
    assert unchanged == after
