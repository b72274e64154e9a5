"""Consent history, the suppression list, workspace settings and eligibility counts
(ConsentService, WorkspaceService). Recording a consent is ``POST /v1/contacts/{id}/consents``
(entrypoints/contacts.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response
from google.protobuf.field_mask_pb2 import FieldMask
from nudge.contacts.v1 import contacts_pb2
from pydantic import ConfigDict, Field, StringConstraints, model_validator
from pydantic.json_schema import SkipJsonSchema

from services.gateway import convert, problems
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.paths import ContactId
from services.gateway.schemas import (
    EMAIL_PATTERN,
    NO_NUL,
    ConsentPurpose,
    ContactFilterIn,
    ResponseModel,
    StrictModel,
)

router = APIRouter(tags=["consent"])

Email = Annotated[str, StringConstraints(min_length=6, max_length=254, pattern=EMAIL_PATTERN)]
SuppressionReason = Literal["hard_bounce", "complaint", "global_unsubscribe", "erased", "manual"]
ManualReason = Literal["manual", "global_unsubscribe", "hard_bounce", "complaint"]
PageSize = Annotated[int, Query(ge=1, le=1000, description="1-1000, default 100.")]
PageToken = Annotated[str, Query(max_length=512, description="`next_page_token` of the last page.")]


def _enum(enum: object, prefix: str, name: str) -> int:
    return int(enum.Value(f"{prefix}{name.upper()}"))  # type: ignore[attr-defined]


def _name(enum: object, prefix: str, value: int) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()  # type: ignore[attr-defined]
    except ValueError:
        return "unspecified"


def _time(ts: object, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None  # type: ignore[attr-defined]


# --- history --------------------------------------------------------------------------------


class CurrentConsentOut(ResponseModel):
    purpose: str
    state: str = Field(description="`granted`, `withdrawn`, `pending` or `never_asked`.")
    since: datetime | None


class ConsentRecordOut(ResponseModel):
    id: str
    purpose: str
    status: str
    source: str
    wording: str
    actor: str
    ip: str
    user_agent: str
    recorded_at: datetime | None


class ConsentHistoryOut(ResponseModel):
    current: list[CurrentConsentOut]
    records: list[ConsentRecordOut] = Field(description="Newest first.")
    next_page_token: str


@router.get(
    "/v1/contacts/{contact_id}/consents",
    response_model=ConsentHistoryOut,
    summary="Consent history of a contact",
    responses=problems.responses(401, 404, 422, 503),
)
async def consent_history(
    contact_id: ContactId,
    caller: CallerDep,
    backends: BackendsDep,
    page_size: PageSize = 100,
    page_token: PageToken = "",
) -> ConsentHistoryOut:
    """The state per purpose now, derived from the history, and every record of it, newest
    first: the proof a regulator asks for (source, wording, actor, IP, browser, when)."""
    answer: contacts_pb2.GetConsentHistoryResponse = await caller.call(
        backends.consents.GetConsentHistory,
        contacts_pb2.GetConsentHistoryRequest(
            contact=contacts_pb2.ContactRef(contact_id=contact_id),
            page_size=page_size,
            page_token=page_token,
        ),
        service="contacts",
    )
    return ConsentHistoryOut(
        current=[
            CurrentConsentOut(
                purpose=_name(contacts_pb2.ConsentPurpose, "CONSENT_PURPOSE_", c.purpose),
                state=_name(contacts_pb2.ConsentState, "CONSENT_STATE_", c.state),
                since=_time(c.since, c.HasField("since")),
            )
            for c in answer.current
        ],
        records=[
            ConsentRecordOut(
                id=r.id,
                purpose=_name(contacts_pb2.ConsentPurpose, "CONSENT_PURPOSE_", r.purpose),
                status=_name(contacts_pb2.ConsentStatus, "CONSENT_STATUS_", r.status),
                source=_name(contacts_pb2.ConsentSource, "CONSENT_SOURCE_", r.source),
                wording=r.wording,
                actor=r.actor,
                ip=r.ip,
                user_agent=r.user_agent,
                recorded_at=_time(r.recorded_at, r.HasField("recorded_at")),
            )
            for r in answer.records
        ],
        next_page_token=answer.next_page_token,
    )


# --- suppression list -----------------------------------------------------------------------


class SuppressionIn(StrictModel):
    email: Email
    reason: ManualReason = Field("manual", description="Why; `erased` is set by erasure only.")


class SuppressionOut(ResponseModel):
    email: str = Field(description="Empty for an erased contact: only a keyed hash is kept.")
    reason: str
    created_at: datetime | None


class SuppressionsOut(ResponseModel):
    suppressions: list[SuppressionOut]
    next_page_token: str


def _suppression(s: contacts_pb2.Suppression) -> SuppressionOut:
    return SuppressionOut(
        email=s.email,
        reason=_name(contacts_pb2.SuppressionReason, "SUPPRESSION_REASON_", s.reason),
        created_at=_time(s.created_at, s.HasField("created_at")),
    )


@router.get(
    "/v1/suppressions",
    response_model=SuppressionsOut,
    summary="List the suppression list",
    responses=problems.responses(401, 422, 503),
)
async def list_suppressions(
    caller: CallerDep,
    backends: BackendsDep,
    reason: Annotated[SuppressionReason | None, Query()] = None,
    page_size: PageSize = 100,
    page_token: PageToken = "",
) -> SuppressionsOut:
    """Addresses the workspace never mails, newest first."""
    answer: contacts_pb2.ListSuppressionsResponse = await caller.call(
        backends.consents.ListSuppressions,
        contacts_pb2.ListSuppressionsRequest(
            reason=_enum(contacts_pb2.SuppressionReason, "SUPPRESSION_REASON_", reason)  # type: ignore[arg-type]
            if reason
            else 0,
            page_size=page_size,
            page_token=page_token,
        ),
        service="contacts",
    )
    return SuppressionsOut(
        suppressions=[_suppression(s) for s in answer.suppressions],
        next_page_token=answer.next_page_token,
    )


@router.post(
    "/v1/suppressions",
    status_code=201,
    response_model=SuppressionOut,
    summary="Suppress an address",
    responses={
        200: {"model": SuppressionOut, "description": "Listed already: nothing changed"},
        **problems.responses(400, 401, 413, 422, 503),
    },
)
async def add_suppression(
    body: SuppressionIn, caller: CallerDep, backends: BackendsDep, response: Response
) -> SuppressionOut:
    """Never mail this address again in the workspace (201; 200 when it was listed already)."""
    answer: contacts_pb2.AddSuppressionResponse = await caller.call(
        backends.consents.AddSuppression,
        contacts_pb2.AddSuppressionRequest(
            email=body.email,
            reason=_enum(contacts_pb2.SuppressionReason, "SUPPRESSION_REASON_", body.reason),  # type: ignore[arg-type]
        ),
        service="contacts",
    )
    if not answer.created:
        response.status_code = 200
    listed = _suppression(answer.suppression)
    if not listed.email:
        # Listed already for an erased contact (a keyed hash only): the caller gave the
        # address, so it is no secret to them; echo it, as a new entry is answered.
        listed.email = body.email.strip().lower()
    return listed


@router.delete("/v1/suppressions/", status_code=404, include_in_schema=False)
async def remove_no_suppression(caller: CallerDep) -> Response:
    """``DELETE /v1/suppressions/`` names no address (an erased entry's, which is listed
    without one, for instance): nothing is listed under it, so 404, not 405."""
    raise problems.Problem(
        404, "not-found", "Not found", "no suppression is listed without an address"
    )


@router.delete(
    "/v1/suppressions/{email}",
    status_code=204,
    summary="Lift a suppression",
    responses=problems.responses(401, 404, 409, 422, 503),
)
async def remove_suppression(
    email: Annotated[str, Path(min_length=6, max_length=254, pattern=EMAIL_PATTERN)],
    caller: CallerDep,
    backends: BackendsDep,
) -> Response:
    """Only `manual` and `global_unsubscribe` entries can be lifted (409 for the others);
    404 when the address is not listed."""
    answer: contacts_pb2.RemoveSuppressionResponse = await caller.call(
        backends.consents.RemoveSuppression,
        contacts_pb2.RemoveSuppressionRequest(email=email),
        service="contacts",
    )
    if not answer.removed:
        raise problems.Problem(404, "not-found", "Not found", "the address is not suppressed")
    return Response(status_code=204)


# --- workspace settings ---------------------------------------------------------------------


class WorkspaceSettingsOut(ResponseModel):
    workspace_id: str
    name: str
    consent_required_for_campaigns: bool
    double_opt_in: bool


class WorkspaceSettingsPatch(StrictModel):
    """Only the fields given change (JSON merge patch)."""

    # Absent = unchanged; null is not a value of any of them (the schema says so too).
    name: (
        Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
        | SkipJsonSchema[None]
    ) = None
    consent_required_for_campaigns: bool | SkipJsonSchema[None] = Field(
        None, description="Send campaigns only to consented contacts (on by default)."
    )
    double_opt_in: bool | SkipJsonSchema[None] = Field(
        None, description="Grants count once confirmed from a mail's link."
    )

    @model_validator(mode="after")
    def _no_nulls(self) -> WorkspaceSettingsPatch:
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


def _settings(s: contacts_pb2.WorkspaceSettings) -> WorkspaceSettingsOut:
    return WorkspaceSettingsOut(
        workspace_id=s.workspace_id,
        name=s.name,
        consent_required_for_campaigns=s.consent_required_for_campaigns,
        double_opt_in=s.double_opt_in,
    )


@router.get(
    "/v1/workspace/settings",
    response_model=WorkspaceSettingsOut,
    summary="Workspace settings",
    responses=problems.responses(401, 503),
)
async def get_workspace_settings(caller: CallerDep, backends: BackendsDep) -> WorkspaceSettingsOut:
    answer: contacts_pb2.WorkspaceSettings = await caller.call(
        backends.workspaces.GetWorkspaceSettings,
        contacts_pb2.GetWorkspaceSettingsRequest(),
        service="contacts",
    )
    return _settings(answer)


@router.patch(
    "/v1/workspace/settings",
    response_model=WorkspaceSettingsOut,
    summary="Change workspace settings",
    responses=problems.responses(400, 401, 413, 422, 503),
)
async def update_workspace_settings(
    body: WorkspaceSettingsPatch, caller: CallerDep, backends: BackendsDep
) -> WorkspaceSettingsOut:
    """The API key's workspace: its name, whether campaigns need consent, double opt-in."""
    given = sorted(body.model_fields_set)
    if not given:
        return await get_workspace_settings(caller, backends)
    answer: contacts_pb2.WorkspaceSettings = await caller.call(
        backends.workspaces.UpdateWorkspaceSettings,
        contacts_pb2.UpdateWorkspaceSettingsRequest(
            settings=contacts_pb2.WorkspaceSettings(
                name=body.name or "",
                consent_required_for_campaigns=bool(body.consent_required_for_campaigns),
                double_opt_in=bool(body.double_opt_in),
            ),
            update_mask=FieldMask(paths=given),
        ),
        service="contacts",
        fields=lambda f: f.removeprefix("settings."),
    )
    return _settings(answer)


# --- eligibility counts ---------------------------------------------------------------------


class EligibilityCountIn(StrictModel):
    """A purpose and an audience: a filter, or a segment's current members (not both)."""

    model_config = ConfigDict(json_schema_extra={"not": {"required": ["filter", "segment_id"]}})

    purpose: ConsentPurpose | Literal["transactional"]
    filter: ContactFilterIn | None = None
    segment_id: (
        Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)] | None
    ) = None

    @model_validator(mode="after")
    def _one_audience(self) -> EligibilityCountIn:
        if self.filter is not None and self.segment_id is not None:
            raise ValueError("give a filter or a segment_id, not both")
        return self


class EligibilityCountOut(ResponseModel):
    total: int
    eligible: int
    ineligible: dict[str, int] = Field(
        description="By reason: no_consent, consent_withdrawn, consent_pending, suppressed;"
        " each contact counted once."
    )


@router.post(
    "/v1/eligibility:count",
    response_model=EligibilityCountOut,
    summary="Count who may be mailed",
    responses=problems.responses(400, 401, 409, 413, 422, 503),
)
async def count_eligible(
    body: EligibilityCountIn, caller: CallerDep, backends: BackendsDep
) -> EligibilityCountOut:
    """How many contacts of the audience may be mailed for the purpose, and why the others
    may not: the warning before a send."""
    request = contacts_pb2.CountEligibleRequest(
        purpose=_enum(contacts_pb2.ConsentPurpose, "CONSENT_PURPOSE_", body.purpose)  # type: ignore[arg-type]
    )
    if body.segment_id is not None:
        request.segment_id = body.segment_id
    else:
        request.filter.CopyFrom(convert.contact_filter(body.filter or ContactFilterIn()))
    answer: contacts_pb2.CountEligibleResponse = await caller.call(
        backends.consents.CountEligible, request, service="contacts"
    )
    return EligibilityCountOut(
        total=answer.total,
        eligible=answer.eligible,
        ineligible={i.reason: i.count for i in answer.ineligible},
    )
