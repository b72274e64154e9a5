"""A campaign's lifecycle over HTTP (CampaignService): change a draft, send it now or later,
pause, resume, cancel, read its transitions, and the workspace's campaign settings.

Refusals are problem+json from the service's gRPC status: a move the status does not allow
(a resumed cancelled campaign, a replayed send, a suspended workspace, a missing consent
confirmation) is 409 ``failed-precondition`` with the service's words; a bad field 422 with
the field named as the JSON names it; another workspace's campaign 404."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path
from google.protobuf import field_mask_pb2
from nudge.campaigns.v1 import campaigns_pb2

from services.gateway import convert, problems
from services.gateway.campaign_lifecycle_schemas import (
    CampaignPatchIn,
    CampaignSettingsOut,
    CampaignSettingsPatchIn,
    NoteIn,
    SendIn,
    TransitionList,
    TransitionOut,
)
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.schemas import CampaignOut

router = APIRouter(tags=["campaigns"])

CampaignId = Annotated[str, Path(min_length=1, max_length=64, description="The campaign's id.")]
SERVICE = "campaigns"


def _status(value: int) -> str:
    return convert._enum_name(campaigns_pb2.CampaignStatus, "CAMPAIGN_STATUS_", value)


def update_request(campaign_id: str, body: CampaignPatchIn) -> campaigns_pb2.UpdateCampaignRequest:
    """Each member given becomes a mask path (``ab_test: null`` removes the A/B test)."""
    c = convert.campaign_fields_proto(body)
    c.id = campaign_id
    c.name = body.name
    c.segment_ids.extend(body.segment_ids)
    c.subject = body.subject
    c.body_text = body.body_text
    return campaigns_pb2.UpdateCampaignRequest(
        campaign=c, update_mask=field_mask_pb2.FieldMask(paths=sorted(body.model_fields_set))
    )


@router.patch(
    "/v1/campaigns/{campaign_id}",
    response_model=CampaignOut,
    summary="Change a draft (JSON merge patch)",
    responses=problems.responses(400, 401, 404, 409, 413, 422, 503),
)
async def patch_campaign(
    campaign_id: CampaignId,
    body: Annotated[CampaignPatchIn, Body(media_type="application/merge-patch+json")],
    caller: CallerDep,
    backends: BackendsDep,
) -> CampaignOut:
    """Sets the members given (a plain JSON body works too), checked as a whole as on
    creation. Only drafts change: any other status is 409."""
    answer: campaigns_pb2.Campaign = await caller.call(
        backends.campaigns.UpdateCampaign,
        update_request(campaign_id, body),
        service=SERVICE,
        fields=convert.campaign_field,
    )
    return convert.campaign_json(answer)


@router.post(
    "/v1/campaigns/{campaign_id}/send",
    response_model=CampaignOut,
    summary="Send a draft now or at a time",
    responses=problems.responses(400, 401, 404, 409, 413, 422, 503),
)
async def send_campaign(
    campaign_id: CampaignId, caller: CallerDep, backends: BackendsDep, body: SendIn | None = None
) -> CampaignOut:
    """Draft -> sending (no `send_at`) or scheduled (`send_at`, in the future). 409 when it is
    not a draft (a replayed send), when the anti-spam guard suspended the workspace (the
    reason is in `detail`), or when contacts without consent would be mailed and
    `confirm_not_consented` does not repeat their number."""
    body = body or SendIn()
    request = campaigns_pb2.SendCampaignRequest(
        campaign_id=campaign_id, confirm_not_consented=body.confirm_not_consented
    )
    if body.send_at is not None:
        request.send_at.FromDatetime(body.send_at)
    answer: campaigns_pb2.Campaign = await caller.call(
        backends.campaigns.SendCampaign, request, service=SERVICE
    )
    return convert.campaign_json(answer)


# Pause, resume and cancel: the same shape (an optional note, the campaign back), one route
# each so that each has its own operation and description in the OpenAPI document.
_MOVES = (
    (
        "pause",
        "Pause a campaign being sent",
        "PauseCampaign",
        campaigns_pb2.PauseCampaignRequest,
        "Sending -> paused: the fan-out stops at its next batch. 409 in any other status.",
    ),
    (
        "resume",
        "Resume a paused campaign",
        "ResumeCampaign",
        campaigns_pb2.ResumeCampaignRequest,
        "Paused -> sending: the fan-out goes on where it stopped. 409 in any other status\n"
        "(a cancelled campaign cannot be resumed).",
    ),
    (
        "cancel",
        "Cancel a campaign",
        "CancelCampaign",
        campaigns_pb2.CancelCampaignRequest,
        "Draft, scheduled, sending or paused -> cancelled, for good. 409 once sent or\ncancelled.",
    ),
)


def _move_route(verb: str, summary: str, rpc: str, request: Any, doc: str) -> None:
    async def move(
        campaign_id: CampaignId,
        caller: CallerDep,
        backends: BackendsDep,
        body: NoteIn | None = None,
    ) -> CampaignOut:
        answer: campaigns_pb2.Campaign = await caller.call(
            getattr(backends.campaigns, rpc),
            request(campaign_id=campaign_id, note=(body or NoteIn()).note),
            service=SERVICE,
        )
        return convert.campaign_json(answer)

    move.__name__ = move.__qualname__ = f"{verb}_campaign"
    move.__doc__ = doc
    router.post(
        f"/v1/campaigns/{{campaign_id}}/{verb}",
        response_model=CampaignOut,
        summary=summary,
        responses=problems.responses(400, 401, 404, 409, 413, 422, 503),
    )(move)


for _move in _MOVES:
    _move_route(*_move)


@router.get(
    "/v1/campaigns/{campaign_id}/transitions",
    response_model=TransitionList,
    summary="List a campaign's status changes",
    responses=problems.responses(401, 404, 422, 503),
)
async def list_transitions(
    campaign_id: CampaignId, caller: CallerDep, backends: BackendsDep
) -> TransitionList:
    """Every status change, oldest first, with who made it and their note."""
    answer: campaigns_pb2.ListTransitionsResponse = await caller.call(
        backends.campaigns.ListTransitions,
        campaigns_pb2.ListTransitionsRequest(campaign_id=campaign_id),
        service=SERVICE,
    )
    return TransitionList(
        transitions=[
            TransitionOut(
                from_status=_status(t.from_status),
                to_status=_status(t.to_status),
                actor=t.actor,
                note=t.note,
                at=convert._time(t.at, t.HasField("at")),
            )
            for t in answer.transitions
        ]
    )


def _settings_json(s: campaigns_pb2.CampaignSettings) -> CampaignSettingsOut:
    return CampaignSettingsOut(
        frequency_cap_messages=s.frequency_cap_messages,
        frequency_cap_days=s.frequency_cap_days,
        time_zone=s.time_zone,
        default_reply_to=s.default_reply_to,
    )


@router.get(
    "/v1/campaign-settings",
    response_model=CampaignSettingsOut,
    summary="Get the workspace's campaign settings",
    responses=problems.responses(401, 503),
)
async def get_campaign_settings(caller: CallerDep, backends: BackendsDep) -> CampaignSettingsOut:
    """The frequency cap (default 1 message per 30 days), the time zone (default UTC) and the
    default Reply-To (default none)."""
    answer: campaigns_pb2.CampaignSettings = await caller.call(
        backends.campaigns.GetCampaignSettings,
        campaigns_pb2.GetCampaignSettingsRequest(),
        service=SERVICE,
    )
    return _settings_json(answer)


@router.patch(
    "/v1/campaign-settings",
    response_model=CampaignSettingsOut,
    summary="Change the workspace's campaign settings (JSON merge patch)",
    responses=problems.responses(400, 401, 413, 422, 503),
)
async def patch_campaign_settings(
    body: Annotated[CampaignSettingsPatchIn, Body(media_type="application/merge-patch+json")],
    caller: CallerDep,
    backends: BackendsDep,
) -> CampaignSettingsOut:
    """Sets the members given; the time zone must be an IANA zone (`Europe/Berlin`), the
    default Reply-To an e-mail address or empty. A campaign's own `reply_to` wins over the
    default, which is read when the campaign is sent (and by its test sends)."""
    answer: campaigns_pb2.CampaignSettings = await caller.call(
        backends.campaigns.UpdateCampaignSettings,
        campaigns_pb2.UpdateCampaignSettingsRequest(
            settings=campaigns_pb2.CampaignSettings(
                frequency_cap_messages=body.frequency_cap_messages,
                frequency_cap_days=body.frequency_cap_days,
                time_zone=body.time_zone,
                default_reply_to=body.default_reply_to,
            ),
            update_mask=field_mask_pb2.FieldMask(paths=sorted(body.model_fields_set)),
        ),
        service=SERVICE,
        fields=lambda f: f.removeprefix("settings."),
    )
    return _settings_json(answer)
