"""The campaigns service over real gRPC and PostgreSQL, checking segments with the real
segmentation service: drafts are validated, stored, read back and listed a page at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nudge.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.support import free_port, unique
from tests.unit.campaigns.segmentation_standin import StandInSegmentation, serving

Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
async def stub(
    campaigns_service: RunningService,
) -> AsyncIterator[campaigns_pb2_grpc.CampaignServiceStub]:
    async with grpc.aio.insecure_channel(campaigns_service.address) as ch:
        yield campaigns_pb2_grpc.CampaignServiceStub(ch)


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.BadRequest details"
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


def draft(**fields: object) -> campaigns_pb2.CreateCampaignRequest:
    values: dict[str, object] = {
        "name": "Spring sale",
        "segment_ids": ["vip", "loyal"],
        "subject": "{{ workspace.name }}: spring is here",
        "body_text": 'Hello {{ contact.first_name | default("there") }},\nnew tea has arrived.',
    }
    values.update(fields)
    return campaigns_pb2.CreateCampaignRequest(**values)  # type: ignore[arg-type]


async def create(
    stub: campaigns_pb2_grpc.CampaignServiceStub, ws: Workspace, **fields: object
) -> campaigns_pb2.Campaign:
    answer = await stub.CreateCampaign(draft(**fields), metadata=ws.metadata)
    return answer.campaign


async def new_workspace(contacts: RunningService) -> Workspace:
    async with grpc.aio.insecure_channel(contacts.address) as ch:
        answer = await contacts_pb2_grpc.WorkspaceServiceStub(ch).CreateWorkspace(
            contacts_pb2.CreateWorkspaceRequest(name="Other shop", slug=unique("camp")),
            metadata=(("authorization", "Admin test-admin-token"),),
        )
    return Workspace(id=answer.workspace_id, api_key=answer.api_key)


async def test_a_created_draft_reads_back(
    stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    campaign = await create(stub, workspace)
    assert campaign.id and campaign.workspace_id == workspace.id
    assert campaign.status == campaigns_pb2.CAMPAIGN_STATUS_DRAFT
    assert (campaign.name, list(campaign.segment_ids)) == ("Spring sale", ["vip", "loyal"])
    assert campaign.HasField("created_at") and not campaign.HasField("scheduled_at")
    again = await stub.GetCampaign(
        campaigns_pb2.GetCampaignRequest(campaign_id=campaign.id), metadata=workspace.metadata
    )
    assert again.campaign == campaign


async def test_every_bad_field_is_named_in_the_error(
    stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, workspace, name="", subject="x" * 201, body_text="", segment_ids=[])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["name", "subject", "body_text", "segment_ids"]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, workspace, segment_ids=["vip", "big_spenders", "vip"])
    assert violations(err.value) == ["segment_ids[2]", "segment_ids[1]"]  # duplicate, unknown

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, workspace, segment_ids=["vip", "big_spenders"], body_text="{% if %}")
    assert violations(err.value) == ["body_text", "segment_ids[1]"]

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(stub, workspace, segment_ids=[f"s{i}" for i in range(21)])
    assert violations(err.value) == ["segment_ids"]


async def test_another_workspaces_and_malformed_ids_are_not_found(
    stub: campaigns_pb2_grpc.CampaignServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    campaign = await create(stub, workspace)
    other = await new_workspace(contacts_service)
    for campaign_id, metadata in [
        (campaign.id, other.metadata),
        ("not-a-uuid", workspace.metadata),
        ("", workspace.metadata),
        ("00000000-0000-4000-8000-000000000000", workspace.metadata),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetCampaign(
                campaigns_pb2.GetCampaignRequest(campaign_id=campaign_id), metadata=metadata
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListCampaigns(campaigns_pb2.ListCampaignsRequest(), metadata=other.metadata)
    assert list(listed.campaigns) == []


async def test_lists_page_through_every_campaign_newest_first(
    stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    created = [await create(stub, workspace, name=f"Campaign {i}") for i in range(5)]
    pages: list[list[str]] = []
    token = ""
    while True:
        answer = await stub.ListCampaigns(
            campaigns_pb2.ListCampaignsRequest(page_size=2, page_token=token),
            metadata=workspace.metadata,
        )
        pages.append([c.name for c in answer.campaigns])
        token = answer.next_page_token
        if not token:
            break
    assert pages == [
        ["Campaign 4", "Campaign 3"],
        ["Campaign 2", "Campaign 1"],
        ["Campaign 0"],
    ]
    everything = await stub.ListCampaigns(
        campaigns_pb2.ListCampaignsRequest(), metadata=workspace.metadata
    )
    assert list(everything.campaigns) == created[::-1]
    assert everything.next_page_token == ""


async def test_bad_page_tokens_and_sizes_are_invalid_arguments(
    stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    for request, fields in [
        (campaigns_pb2.ListCampaignsRequest(page_token="garbage"), ["page_token"]),
        (campaigns_pb2.ListCampaignsRequest(page_size=101), ["page_size"]),
        (
            campaigns_pb2.ListCampaignsRequest(page_size=-1, page_token="x"),
            ["page_size", "page_token"],
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListCampaigns(request, metadata=workspace.metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err.value) == fields


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer nk_0123456789abcdef_" + "A" * 43),),
        (("authorization", "Bearer not-a-key"),),
        (("authorization", "Internal wrong-token"),),
    ],
)
async def test_calls_without_a_valid_key_are_unauthenticated(
    stub: campaigns_pb2_grpc.CampaignServiceStub, metadata: Metadata
) -> None:
    for call in (
        stub.CreateCampaign(draft(), metadata=metadata),
        stub.GetCampaign(campaigns_pb2.GetCampaignRequest(campaign_id="x"), metadata=metadata),
        stub.ListCampaigns(campaigns_pb2.ListCampaignsRequest(), metadata=metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_invalid_texts_are_named_not_internal_errors(
    stub: campaigns_pb2_grpc.CampaignServiceStub, workspace: Workspace
) -> None:
    """Texts that once reached PostgreSQL (NUL) or blew Jinja's stack (deep nesting)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await create(
            stub,
            workspace,
            name="Spring\x00sale",
            subject="Hi\x00",
            body_text="{{" + "(" * 3000 + "}}",
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == ["name", "subject", "body_text"]


async def test_without_segmentation_a_draft_is_refused_as_unavailable(
    contacts_service: RunningService, workspace: Workspace
) -> None:
    from services.campaigns.bootstrap import serve
    from services.campaigns.config import Settings

    port = free_port()
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = Settings(grpc_port=port, segmentation_addr=nowhere)
    async with (
        run_in_process(serve, settings, port) as campaigns,
        grpc.aio.insecure_channel(campaigns.address) as ch,
    ):
        stub = campaigns_pb2_grpc.CampaignServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateCampaign(draft(), metadata=workspace.metadata)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        listed = await stub.ListCampaigns(
            campaigns_pb2.ListCampaignsRequest(), metadata=workspace.metadata
        )
        assert list(listed.campaigns) == []


async def test_only_a_segmentation_that_does_not_answer_is_unavailable(
    contacts_service: RunningService, workspace: Workspace
) -> None:
    """Any other failure of segmentation (a wrong internal token, a bug) is ours: INTERNAL,
    which a caller should not retry as if segmentation were merely busy."""
    from services.campaigns.bootstrap import serve
    from services.campaigns.config import Settings

    segmentation = StandInSegmentation()
    port = free_port()
    async with serving(segmentation) as address:
        settings = Settings(grpc_port=port, segmentation_addr=address)
        async with (
            run_in_process(serve, settings, port) as campaigns,
            grpc.aio.insecure_channel(campaigns.address) as ch,
        ):
            stub = campaigns_pb2_grpc.CampaignServiceStub(ch)
            for fail_with, expected in [
                (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
                (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE),
                (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL),
                (grpc.StatusCode.INTERNAL, grpc.StatusCode.INTERNAL),
            ]:
                segmentation.fail_with = fail_with
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.CreateCampaign(draft(), metadata=workspace.metadata)
                assert err.value.code() == expected, fail_with
            segmentation.fail_with = None
            created = await stub.CreateCampaign(draft(), metadata=workspace.metadata)
            listed = await stub.ListCampaigns(
                campaigns_pb2.ListCampaignsRequest(), metadata=workspace.metadata
            )
            assert list(listed.campaigns) == [created.campaign]
