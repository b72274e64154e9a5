"""The HTTP bodies of the workflow routes (services/gateway/entrypoints/workflows.py).

A definition travels as a JSON object in the "nudge.workflow/v1" format (docs/triggers.md),
the same document the export gives and the import takes. Its grammar (step types, triggers,
conditions) is the triggers service's to check: the document says "object" and describes it
in words, and the service answers 422 with one field per problem
(``definition.steps[2].duration``), exactly as over gRPC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from services.gateway.schemas import (
    NO_NUL,
    ContactUuid,
    Integral,
    ResponseModel,
    StrictModel,
    _filled_text,
)

WorkflowStatus = Literal["draft", "active", "paused"]
RunState = Literal["active", "waiting", "completed", "exited", "cancelled"]

# The triggers service's limits (services/triggers/entrypoints/grpc.py).
MAX_NAME = 200
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_PAGE_TOKEN = 200
MAX_TEMPLATE_ID = 64
MAX_RECIPIENT = 254

DEFINITION_DESCRIPTION = (
    'A workflow definition in the "nudge.workflow/v1" format: `name`, `trigger`, `entry`,'
    " `exit_on`, `send_window` and `steps` (docs/triggers.md). Checked whole by the triggers"
    " service: every problem is a 422 field error with its path, e.g."
    " `definition.steps[1].duration`. At most 256 KiB."
)

Definition = Annotated[dict[str, Any], Field(description=DEFINITION_DESCRIPTION)]
TemplateId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TEMPLATE_ID, pattern=NO_NUL)
]


class WorkflowIn(StrictModel):
    """A new draft: from a `definition`, or from a template (`template_id`), not both."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["definition"], "not": {"required": ["template_id"]}},
                {"required": ["template_id"], "not": {"required": ["definition"]}},
            ]
        }
    )

    # Absent rather than null (members given are in model_fields_set): no union in the
    # document, and a wrong type is one error naming the member.
    definition: Definition = Field(default_factory=dict)
    template_id: TemplateId = Field("", description="A template of `GET /v1/workflow-templates`.")
    name: Annotated[str, _filled_text(MAX_NAME)] = Field(
        "", description="Replaces the definition's name."
    )

    @model_validator(mode="after")
    def _one_source(self) -> WorkflowIn:
        given = {"definition", "template_id"} & self.model_fields_set
        if len(given) != 1:
            raise ValueError("give either definition or template_id")
        return self


class DraftIn(StrictModel):
    """The whole new draft."""

    definition: Definition
    expected_revision: Integral = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="The `draft_revision` read; 409 when the draft moved on since. 0: no check.",
    )


class PublishIn(StrictModel):
    expected_revision: Integral = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="The `draft_revision` read; 409 when the draft moved on since. 0: no check.",
    )


class ValidationIn(StrictModel):
    definition: Definition


class TestRunIn(StrictModel):
    contact_id: ContactUuid = Field(description="The contact whose data fills the messages.")
    recipient: Annotated[str, StringConstraints(min_length=3, max_length=MAX_RECIPIENT)] = Field(
        description="Where every message of the test run goes, marked [Test]."
    )
    use_draft: bool = Field(False, description="Run the draft instead of the published version.")


class WorkflowOut(ResponseModel):
    id: str
    name: str
    trigger: str = Field(description="The event that starts the draft's runs.")
    status: WorkflowStatus
    version: int = Field(description="The published version new runs use; 0 before the first.")
    definition: dict[str, Any] = Field(description="The draft.")
    draft_revision: int
    draft_changed: bool = Field(description="The draft differs from the published version.")
    template_id: str
    created_at: datetime | None
    updated_at: datetime | None
    published_at: datetime | None


class WorkflowList(ResponseModel):
    workflows: list[WorkflowOut]
    next_page_token: str = Field(description="Pass as `page_token` for more; empty at the end.")


class VersionOut(ResponseModel):
    version: int
    definition: dict[str, Any]
    published_at: datetime | None
    published_by: str = Field(description="Who published it: `api_key:<key id>`, `internal`.")


class VersionList(ResponseModel):
    versions: list[VersionOut] = Field(description="Newest first.")


class ViolationOut(ResponseModel):
    field: str
    message: str


class ValidationOut(ResponseModel):
    valid: bool
    errors: list[ViolationOut] = Field(description="What keeps it from being published.")
    warnings: list[ViolationOut] = Field(description="Publishable, but worth a look.")


class TemplateOut(ResponseModel):
    id: str
    name: str
    description: str
    definition: dict[str, Any]


class TemplateList(ResponseModel):
    templates: list[TemplateOut]


class RunOut(ResponseModel):
    id: str
    workflow_id: str
    version: int = Field(
        description="The version it runs; -N for a test run of the draft at revision N."
    )
    contact_id: str
    state: RunState | Literal["unspecified"]
    position: str = Field(description="The step it runs next; empty once it ended.")
    started_at: datetime | None
    next_wake_at: datetime | None
    ended_at: datetime | None
    end_reason: str
    test: bool
    key: str = Field(description="The entry key (the cart id) when the workflow has one.")


class RunList(ResponseModel):
    runs: list[RunOut]
    next_page_token: str = Field(description="Pass as `page_token` for more; empty at the end.")


class StepStatsOut(ResponseModel):
    step_id: str
    entered: int = Field(description="Times runs reached it.")
    completed: int = Field(description="Times it ran: sent, tagged, waited, branched.")
    waiting: int = Field(description="Runs asleep now that run it when they wake.")
    yes: int = Field(description="Branches: went to `then`.")
    no: int = Field(description="Branches: went to `else`.")
    skipped: int = Field(description="Sends not made: frequency cap, not repeated.")


class StatsOut(ResponseModel):
    steps: list[StepStatsOut]
    runs_started: int
    runs_active: int
    runs_completed: int
    runs_exited: int = Field(description="Ended early: exit rule, exit step, restart, cancel.")
