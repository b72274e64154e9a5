"""``/v1/workflows``: automations started by a customer's action or its absence
(WorkflowService of the triggers service).

A workflow is a draft (edited whole, with ``expected_revision`` against lost updates) that is
published into immutable versions; the definition is a JSON object in the
"nudge.workflow/v1" format, the same document ``/export`` gives and ``/import`` takes.
Refusals are problem+json from the service's gRPC status: a bad definition is 422 with one
field per problem (``definition.steps[1].duration``), a stale revision 409 ``conflict``, a
move the status does not allow (pausing a draft, deleting a published workflow, publishing
an unchanged draft again) 409 ``failed-precondition``, another workspace's workflow 404.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, Response
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.triggers.v1 import triggers_pb2

from services.gateway import convert, problems
from services.gateway.deps import BackendsDep, CallerDep
from services.gateway.schemas import UUID_PATTERN
from services.gateway.workflow_schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_PAGE_TOKEN,
    DraftIn,
    PublishIn,
    RunList,
    RunOut,
    RunState,
    StatsOut,
    StepStatsOut,
    TemplateList,
    TemplateOut,
    TestRunIn,
    ValidationIn,
    ValidationOut,
    VersionList,
    VersionOut,
    ViolationOut,
    WorkflowIn,
    WorkflowList,
    WorkflowOut,
    WorkflowStatus,
)

router = APIRouter(tags=["workflows"])

SERVICE = "triggers"
WorkflowId = Annotated[str, Path(min_length=1, max_length=64, description="The workflow's id.")]
RunId = Annotated[str, Path(min_length=1, max_length=64, description="The run's id.")]
Version = Annotated[int, Query(ge=0, le=2**31 - 1, description="A version; 0: the draft.")]
ERRORS = problems.responses(400, 401, 404, 409, 413, 422, 503)


# --- JSON <-> protobuf ----------------------------------------------------------------------


def _time(ts: Timestamp, present: bool) -> Any:
    return convert._time(ts, present)


def _document(text: str) -> dict[str, Any]:
    loaded = json.loads(text) if text else {}
    return loaded if isinstance(loaded, dict) else {}


def _definition_text(definition: dict[str, Any]) -> str:
    return json.dumps(definition, ensure_ascii=False)


def workflow_json(w: triggers_pb2.Workflow) -> WorkflowOut:
    return WorkflowOut(
        id=w.id,
        name=w.name,
        trigger=w.trigger,
        status=convert._enum_name(triggers_pb2.WorkflowStatus, "WORKFLOW_STATUS_", w.status),
        version=w.version,
        definition=_document(w.draft_json),
        draft_revision=w.draft_revision,
        draft_changed=w.draft_changed,
        template_id=w.template_id,
        created_at=_time(w.created_at, w.HasField("created_at")),
        updated_at=_time(w.updated_at, w.HasField("updated_at")),
        published_at=_time(w.published_at, w.HasField("published_at")),
    )


def run_json(r: triggers_pb2.Run) -> RunOut:
    return RunOut(
        id=r.id,
        workflow_id=r.workflow_id,
        version=r.version,
        contact_id=r.contact_id,
        state=convert._enum_name(triggers_pb2.RunState, "RUN_STATE_", r.state),
        position=r.position,
        started_at=_time(r.started_at, r.HasField("started_at")),
        next_wake_at=_time(r.next_wake_at, r.HasField("next_wake_at")),
        ended_at=_time(r.ended_at, r.HasField("ended_at")),
        end_reason=r.end_reason,
        test=r.test,
        key=r.key,
    )


def definition_field(field: str) -> str:
    """The service names ``definition_json`` (the text) where the body has ``definition``."""
    return "definition" if field == "definition_json" else field


def imported_field(field: str) -> str:
    """For ``/import`` the body is the definition itself: ``definition.steps[0]`` ->
    ``steps[0]``, the definition as a whole -> ``body``."""
    if field in ("definition", "definition_json"):
        return "body"
    return field.removeprefix("definition.")


# --- workflows ------------------------------------------------------------------------------


@router.post(
    "/v1/workflows",
    status_code=201,
    response_model=WorkflowOut,
    summary="Create a workflow (a draft)",
    responses=ERRORS,
)
async def create_workflow(
    body: WorkflowIn, caller: CallerDep, backends: BackendsDep, request: Request, response: Response
) -> WorkflowOut:
    """A new draft from a definition, or from a template of `/v1/workflow-templates`.
    Nothing runs until it is published."""
    answer: triggers_pb2.Workflow = await caller.call(
        backends.workflows.CreateWorkflow,
        triggers_pb2.CreateWorkflowRequest(
            definition_json=(
                _definition_text(body.definition) if "definition" in body.model_fields_set else ""
            ),
            template_id=body.template_id,
            name=body.name,
        ),
        service=SERVICE,
        fields=definition_field,
    )
    workflow = workflow_json(answer)
    response.headers["Location"] = request.app.url_path_for("get_workflow", workflow_id=workflow.id)
    return workflow


@router.get(
    "/v1/workflows",
    response_model=WorkflowList,
    summary="List workflows",
    responses=problems.responses(401, 422, 503),
)
async def list_workflows(
    caller: CallerDep,
    backends: BackendsDep,
    status: Annotated[WorkflowStatus | None, Query(description="Only these.")] = None,
    page_size: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="At most this many.")
    ] = DEFAULT_PAGE_SIZE,
    page_token: Annotated[
        str,
        Query(max_length=MAX_PAGE_TOKEN, description="`next_page_token` of the previous page."),
    ] = "",
) -> WorkflowList:
    """The workspace's workflows, newest first, a page at a time."""
    answer: triggers_pb2.ListWorkflowsResponse = await caller.call(
        backends.workflows.ListWorkflows,
        triggers_pb2.ListWorkflowsRequest(
            page_size=page_size,
            page_token=page_token,
            status=convert._enum_value(triggers_pb2.WorkflowStatus, "WORKFLOW_STATUS_", status)
            if status
            else triggers_pb2.WORKFLOW_STATUS_UNSPECIFIED,
        ),
        service=SERVICE,
    )
    return WorkflowList(
        workflows=[workflow_json(w) for w in answer.workflows],
        next_page_token=answer.next_page_token,
    )


@router.post(
    "/v1/workflows:validate",
    response_model=ValidationOut,
    summary="Check a definition",
    responses=problems.responses(400, 401, 413, 422, 503),
)
async def validate_workflow(
    body: ValidationIn, caller: CallerDep, backends: BackendsDep
) -> ValidationOut:
    """Every problem that would keep it from being published (`errors`, with paths), and what
    is worth a look (`warnings`). 200 either way."""
    answer: triggers_pb2.ValidateWorkflowResponse = await caller.call(
        backends.workflows.ValidateWorkflow,
        triggers_pb2.ValidateWorkflowRequest(definition_json=_definition_text(body.definition)),
        service=SERVICE,
        fields=definition_field,
    )
    return ValidationOut(
        valid=answer.valid,
        errors=[ViolationOut(field=v.field, message=v.description) for v in answer.violations],
        warnings=[ViolationOut(field=v.field, message=v.description) for v in answer.warnings],
    )


@router.post(
    "/v1/workflows/import",
    status_code=201,
    response_model=WorkflowOut,
    summary="Import a definition",
    responses={
        200: {"model": WorkflowOut, "description": "The workflow's draft was replaced."},
        **ERRORS,
    },
)
async def import_workflow(
    definition: Annotated[dict[str, Any], Body(description="The definition, as exported.")],
    caller: CallerDep,
    backends: BackendsDep,
    request: Request,
    response: Response,
    workflow_id: Annotated[
        str,
        Query(max_length=64, description="Replace this workflow's draft instead (200)."),
    ] = "",
) -> WorkflowOut:
    """A new draft (201), or, with `workflow_id`, that workflow's new draft (200): publish it
    to use it."""
    answer: triggers_pb2.Workflow = await caller.call(
        backends.workflows.ImportWorkflow,
        triggers_pb2.ImportWorkflowRequest(
            definition_json=_definition_text(definition), workflow_id=workflow_id
        ),
        service=SERVICE,
        fields=imported_field,
    )
    workflow = workflow_json(answer)
    if workflow_id:
        response.status_code = 200
    else:
        response.headers["Location"] = request.app.url_path_for(
            "get_workflow", workflow_id=workflow.id
        )
    return workflow


@router.get(
    "/v1/workflows/{workflow_id}",
    response_model=WorkflowOut,
    summary="Get a workflow",
    responses=problems.responses(401, 404, 422, 503),
)
async def get_workflow(
    workflow_id: WorkflowId, caller: CallerDep, backends: BackendsDep
) -> WorkflowOut:
    """One workflow of the workspace, with its draft."""
    answer: triggers_pb2.Workflow = await caller.call(
        backends.workflows.GetWorkflow,
        triggers_pb2.GetWorkflowRequest(workflow_id=workflow_id),
        service=SERVICE,
    )
    return workflow_json(answer)


@router.put(
    "/v1/workflows/{workflow_id}",
    response_model=WorkflowOut,
    summary="Replace the draft",
    responses=ERRORS,
)
async def update_workflow(
    workflow_id: WorkflowId, body: DraftIn, caller: CallerDep, backends: BackendsDep
) -> WorkflowOut:
    """The whole new draft, checked as for publishing. The published version is untouched."""
    answer: triggers_pb2.Workflow = await caller.call(
        backends.workflows.UpdateWorkflow,
        triggers_pb2.UpdateWorkflowRequest(
            workflow_id=workflow_id,
            definition_json=_definition_text(body.definition),
            expected_revision=body.expected_revision,
        ),
        service=SERVICE,
        fields=definition_field,
    )
    return workflow_json(answer)


@router.delete(
    "/v1/workflows/{workflow_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a draft never published",
    responses=problems.responses(401, 404, 409, 422, 503),
)
async def delete_workflow(
    workflow_id: WorkflowId, caller: CallerDep, backends: BackendsDep
) -> None:
    """Only a workflow never published: a published one is paused instead (409)."""
    await caller.call(
        backends.workflows.DeleteWorkflow,
        triggers_pb2.DeleteWorkflowRequest(workflow_id=workflow_id),
        service=SERVICE,
    )


@router.post(
    "/v1/workflows/{workflow_id}/publish",
    response_model=WorkflowOut,
    summary="Publish the draft",
    responses=ERRORS,
)
async def publish_workflow(
    workflow_id: WorkflowId,
    caller: CallerDep,
    backends: BackendsDep,
    body: PublishIn | None = None,
) -> WorkflowOut:
    """The draft becomes the next version and the workflow active: new runs use it, runs
    already going keep theirs. 409 when the draft has not changed since the last version."""
    answer: triggers_pb2.Workflow = await caller.call(
        backends.workflows.PublishWorkflow,
        triggers_pb2.PublishWorkflowRequest(
            workflow_id=workflow_id, expected_revision=(body or PublishIn()).expected_revision
        ),
        service=SERVICE,
    )
    return workflow_json(answer)


@router.post(
    "/v1/workflows/{workflow_id}/pause",
    response_model=WorkflowOut,
    summary="Pause an active workflow",
    responses=ERRORS,
)
async def pause_workflow(
    workflow_id: WorkflowId, caller: CallerDep, backends: BackendsDep
) -> WorkflowOut:
    """Active -> paused: no new runs; runs going hold at their next step. 409 otherwise."""
    answer: triggers_pb2.Workflow = await caller.call(
        backends.workflows.PauseWorkflow,
        triggers_pb2.PauseWorkflowRequest(workflow_id=workflow_id),
        service=SERVICE,
    )
    return workflow_json(answer)


@router.post(
    "/v1/workflows/{workflow_id}/resume",
    response_model=WorkflowOut,
    summary="Resume a paused workflow",
    responses=ERRORS,
)
async def resume_workflow(
    workflow_id: WorkflowId, caller: CallerDep, backends: BackendsDep
) -> WorkflowOut:
    """Paused -> active. 409 otherwise."""
    answer: triggers_pb2.Workflow = await caller.call(
        backends.workflows.ResumeWorkflow,
        triggers_pb2.ResumeWorkflowRequest(workflow_id=workflow_id),
        service=SERVICE,
    )
    return workflow_json(answer)


@router.get(
    "/v1/workflows/{workflow_id}/versions",
    response_model=VersionList,
    summary="List published versions",
    responses=problems.responses(401, 404, 422, 503),
)
async def list_versions(
    workflow_id: WorkflowId, caller: CallerDep, backends: BackendsDep
) -> VersionList:
    """Every version published, newest first, with who published it."""
    answer: triggers_pb2.ListWorkflowVersionsResponse = await caller.call(
        backends.workflows.ListWorkflowVersions,
        triggers_pb2.ListWorkflowVersionsRequest(workflow_id=workflow_id),
        service=SERVICE,
    )
    return VersionList(
        versions=[
            VersionOut(
                version=v.version,
                definition=_document(v.definition_json),
                published_at=_time(v.published_at, v.HasField("published_at")),
                published_by=v.published_by,
            )
            for v in answer.versions
        ]
    )


@router.get(
    "/v1/workflows/{workflow_id}/export",
    response_model=dict[str, Any],
    summary="Export a definition",
    responses=problems.responses(401, 404, 422, 503),
)
async def export_workflow(
    workflow_id: WorkflowId, caller: CallerDep, backends: BackendsDep, version: Version = 0
) -> Response:
    """The definition of a version (0: the draft) as canonical JSON: stable key order,
    two-space indent, so that exports diff well in a repository."""
    answer: triggers_pb2.ExportWorkflowResponse = await caller.call(
        backends.workflows.ExportWorkflow,
        triggers_pb2.ExportWorkflowRequest(workflow_id=workflow_id, version=version),
        service=SERVICE,
    )
    return Response(content=answer.definition_json, media_type="application/json")


@router.get(
    "/v1/workflow-templates",
    response_model=TemplateList,
    summary="List workflow templates",
    responses=problems.responses(401, 503),
)
async def list_templates(caller: CallerDep, backends: BackendsDep) -> TemplateList:
    """Ready-made workflows (abandoned cart, welcome, post-purchase...) to create from."""
    answer: triggers_pb2.ListTemplatesResponse = await caller.call(
        backends.workflows.ListTemplates, triggers_pb2.ListTemplatesRequest(), service=SERVICE
    )
    return TemplateList(
        templates=[
            TemplateOut(
                id=t.id,
                name=t.name,
                description=t.description,
                definition=_document(t.definition_json),
            )
            for t in answer.templates
        ]
    )


# --- runs -----------------------------------------------------------------------------------


@router.get(
    "/v1/workflows/{workflow_id}/runs",
    response_model=RunList,
    summary="List a workflow's runs",
    responses=problems.responses(401, 404, 422, 503),
)
async def list_runs(
    workflow_id: WorkflowId,
    caller: CallerDep,
    backends: BackendsDep,
    state: Annotated[RunState | None, Query(description="Only runs in this state.")] = None,
    contact_id: Annotated[
        str, Query(pattern=f"^$|{UUID_PATTERN}", description="Only this contact's runs.")
    ] = "",
    page_size: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="At most this many.")
    ] = DEFAULT_PAGE_SIZE,
    page_token: Annotated[
        str,
        Query(max_length=MAX_PAGE_TOKEN, description="`next_page_token` of the previous page."),
    ] = "",
) -> RunList:
    """Runs, newest first, a page at a time."""
    answer: triggers_pb2.ListRunsResponse = await caller.call(
        backends.workflows.ListRuns,
        triggers_pb2.ListRunsRequest(
            workflow_id=workflow_id,
            state=convert._enum_value(triggers_pb2.RunState, "RUN_STATE_", state)
            if state
            else triggers_pb2.RUN_STATE_UNSPECIFIED,
            contact_id=contact_id,
            page_size=page_size,
            page_token=page_token,
        ),
        service=SERVICE,
    )
    return RunList(runs=[run_json(r) for r in answer.runs], next_page_token=answer.next_page_token)


@router.get(
    "/v1/workflows/{workflow_id}/stats",
    response_model=StatsOut,
    summary="Per-step counts of a workflow",
    responses=problems.responses(401, 404, 422, 503),
)
async def workflow_stats(
    workflow_id: WorkflowId,
    caller: CallerDep,
    backends: BackendsDep,
    version: Annotated[
        int, Query(ge=0, le=2**31 - 1, description="A version; 0: every version.")
    ] = 0,
) -> StatsOut:
    """How many runs reached, ran, skipped each step, which way branches went, how many
    wait at each step now; test runs are left out."""
    answer: triggers_pb2.GetWorkflowStatsResponse = await caller.call(
        backends.workflows.GetWorkflowStats,
        triggers_pb2.GetWorkflowStatsRequest(workflow_id=workflow_id, version=version),
        service=SERVICE,
    )
    return StatsOut(
        steps=[
            StepStatsOut(
                step_id=s.step_id,
                entered=s.entered,
                completed=s.completed,
                waiting=s.waiting,
                yes=s.yes,
                no=s.no,
                skipped=s.skipped,
            )
            for s in answer.steps
        ],
        runs_started=answer.runs_started,
        runs_active=answer.runs_active,
        runs_completed=answer.runs_completed,
        runs_exited=answer.runs_exited,
    )


@router.post(
    "/v1/workflows/{workflow_id}/test-runs",
    status_code=201,
    response_model=RunOut,
    summary="Start a test run",
    responses=ERRORS,
)
async def start_test_run(
    workflow_id: WorkflowId, body: TestRunIn, caller: CallerDep, backends: BackendsDep
) -> RunOut:
    """Runs the published version (or the draft, `use_draft`) for one contact of the
    workspace (404 for an id it does not have) at once, without waits; every message goes to
    `recipient`, marked [Test]."""
    answer: triggers_pb2.Run = await caller.call(
        backends.workflows.StartTestRun,
        triggers_pb2.StartTestRunRequest(
            workflow_id=workflow_id,
            contact_id=body.contact_id,
            recipient=body.recipient,
            use_draft=body.use_draft,
        ),
        service=SERVICE,
    )
    return run_json(answer)


@router.post(
    "/v1/workflow-runs/{run_id}/cancel",
    response_model=RunOut,
    summary="Cancel a run",
    responses=ERRORS,
)
async def cancel_run(run_id: RunId, caller: CallerDep, backends: BackendsDep) -> RunOut:
    """Ends a run where it stands: it sends nothing more. 409 when it has ended already."""
    answer: triggers_pb2.Run = await caller.call(
        backends.workflows.CancelRun,
        triggers_pb2.CancelRunRequest(run_id=run_id),
        service=SERVICE,
    )
    return run_json(answer)
