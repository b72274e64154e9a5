"""WorkflowService: what a manager does with workflows (docs/triggers.md, "API").

A workflow is a draft that is edited (Create, Update, Import), checked (Validate) and
published into immutable versions (Publish); new runs use the latest published version
while the workflow is active (Pause, Resume). Runs are the engine's: this servicer reads
them (ListRuns, GetWorkflowStats) and makes the two changes a manager may make to runs: a
test run (StartTestRun) and a cancellation (CancelRun).

Every definition that comes in goes through ``definition.parse`` before anything is written,
in one transaction with the check of the workflow's state, so a refused request changes
nothing. Drafts and versions are stored as the parsed model's JSON, so "the draft differs
from the published version" is a jsonb comparison, blind to key order and spacing. Every
query is scoped to the caller's workspace; another workspace's id, or an id that is not a
UUID at all, is NOT_FOUND.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
import grpc
from email_validator import EmailNotValidError, validate_email
from google.protobuf.timestamp_pb2 import Timestamp
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from nudge.triggers.v1 import triggers_pb2, triggers_pb2_grpc

from services.common import clock
from services.common.auth import current_actor, current_workspace, internal_metadata
from services.common.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    Validator,
)
from services.triggers import derived
from services.triggers import workflows_store as store
from services.triggers.domain import definition as definitions
from services.triggers.domain import templates
from services.triggers.domain.model import Definition

log = logging.getLogger(__name__)

# A definition is refused by its size before anything parses it.
MAX_DEFINITION_BYTES = 256 * 1024
MAX_NAME = 200
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_RECIPIENT = 254

_STATUS_NAMES = {
    triggers_pb2.WORKFLOW_STATUS_DRAFT: "draft",
    triggers_pb2.WORKFLOW_STATUS_ACTIVE: "active",
    triggers_pb2.WORKFLOW_STATUS_PAUSED: "paused",
}
_STATUS_VALUES = {name: value for value, name in _STATUS_NAMES.items()}
_RUN_STATE_NAMES = {
    triggers_pb2.RUN_STATE_ACTIVE: "active",
    triggers_pb2.RUN_STATE_WAITING: "waiting",
    triggers_pb2.RUN_STATE_COMPLETED: "completed",
    triggers_pb2.RUN_STATE_EXITED: "exited",
    triggers_pb2.RUN_STATE_CANCELLED: "cancelled",
}
_RUN_STATE_VALUES = {name: value for value, name in _RUN_STATE_NAMES.items()}

# What a test run's messages are filled with, since no event started it: one plausible value
# for each run variable its trigger provides (docs/triggers.md, "Run variables").
SAMPLE_VARS: dict[str, dict[str, str]] = {
    "cart_updated": {
        "cart_id": "test-cart",
        "cart_url": "https://shop.example/cart",
        "cart_items": "2 x Blue mug (12.00 EUR)",
        "cart_total": "24.00 EUR",
        "item_count": "2",
    },
    "order_placed": {
        "order_id": "test-order",
        "order_items": "2 x Blue mug (12.00 EUR)",
        "order_total": "24.00 EUR",
        "categories": "kitchen",
        "first_category": "kitchen",
    },
    "page_viewed": {
        "product_id": "test-product",
        "category": "kitchen",
        "url": "https://shop.example/p/test-product",
    },
    "searched": {"query": "blue mug"},
    "login_failed": {"reset_url": "https://shop.example/password/reset?token=test"},
    "segment_entered": {"segment_id": "test-segment"},
    "segment_exited": {"segment_id": "test-segment"},
    "date_reached": {"date_field": "birthday", "years": "1"},
    "value_crossed": {"total_spent": "1,000.00 EUR", "threshold": "1,000.00 EUR"},
    "inactive": {"days": "90"},
    "message_opened": {"message_id": "test-message"},
    "link_clicked": {"message_id": "test-message", "url": "https://shop.example/"},
}


# --- definitions ----------------------------------------------------------------------------


def parse_definition(text: str, field: str = "definition_json") -> Definition:
    """The definition in ``text``, or INVALID_ARGUMENT with one violation per problem."""
    if not text.strip():
        raise InvalidArgument(FieldViolation(field, "is required"))
    if len(text.encode()) > MAX_DEFINITION_BYTES:
        raise InvalidArgument(
            FieldViolation(field, f"larger than {MAX_DEFINITION_BYTES // 1024} KiB")
        )
    try:
        parsed = definitions.parse(text)
    except definitions.DefinitionInvalid as err:
        raise InvalidArgument(
            [FieldViolation(v.field, v.description) for v in err.violations]
        ) from err
    # PostgreSQL's jsonb cannot hold a NUL character ("\u0000" in a JSON string).
    if "\\u0000" in json.dumps(stored(parsed)):
        raise InvalidArgument(FieldViolation("definition", "contains a NUL character"))
    return parsed


def stored(defn: Definition) -> dict[str, Any]:
    """A definition as the workflows and workflow_versions tables hold it."""
    dumped = defn.model_dump(mode="json", by_alias=True)
    assert isinstance(dumped, dict)
    return dumped


def loaded(value: Any) -> Definition:
    """A stored definition: trusted (it was validated when written), so not re-checked
    against today's rules (an old version stays readable if a rule gets stricter)."""
    return Definition.model_validate(store.document(value))


def workflow_id_of(value: str) -> uuid.UUID:
    """A workflow id, or NOT_FOUND: a malformed id names no workflow, like another
    workspace's id."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError):
        raise NotFound(f"no workflow {value!r}") from None


def _timestamp(at: datetime | None) -> Timestamp | None:
    if at is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


def workflow_message(row: asyncpg.Record) -> triggers_pb2.Workflow:
    draft = loaded(row["draft"])
    return triggers_pb2.Workflow(
        id=str(row["id"]),
        name=row["name"],
        trigger=draft.trigger.event,
        status=_STATUS_VALUES[row["status"]],
        version=row["published_version"],
        draft_json=definitions.export(draft),
        draft_revision=row["draft_revision"],
        draft_changed=bool(row["draft_changed"]),
        template_id=row["template_id"],
        created_at=_timestamp(row["created_at"]),
        updated_at=_timestamp(row["updated_at"]),
        published_at=_timestamp(row["published_at"]),
    )


def run_message(row: asyncpg.Record) -> triggers_pb2.Run:
    return triggers_pb2.Run(
        id=str(row["id"]),
        workflow_id=str(row["workflow_id"]),
        version=row["version"],
        contact_id=str(row["contact_id"]),
        state=_RUN_STATE_VALUES[row["state"]],
        position=row["position"] or "",
        started_at=_timestamp(row["started_at"]),
        next_wake_at=_timestamp(row["next_wake_at"]),
        ended_at=_timestamp(row["ended_at"]),
        end_reason=row["end_reason"],
        test=bool(row["test_recipient"]),
        key=row["entry_key"],
    )


def _page_size(v: Validator, requested: int) -> int:
    v.check(0 <= requested <= MAX_PAGE_SIZE, "page_size", f"must be 1-{MAX_PAGE_SIZE}")
    return requested or DEFAULT_PAGE_SIZE


def _cursor(v: Validator, token: str) -> store.Cursor | None:
    if not token:
        return None
    cursor = store.decode_token(token)
    v.check(cursor is not None, "page_token", "not a page token of this list")
    return cursor


def step_order(defn: Definition) -> list[str]:
    """Step ids in the order a manager reads them: depth first, "then" before "else"."""
    order: list[str] = []

    def walk(steps: tuple[Any, ...]) -> None:
        for step in steps:
            order.append(step.id)
            walk(getattr(step, "then", ()))
            walk(getattr(step, "otherwise", ()))

    walk(defn.steps)
    return order


class WorkflowServicer(triggers_pb2_grpc.WorkflowServiceServicer):
    """Workflows and runs of the caller's workspace."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        contacts: grpc.aio.Channel,
        internal_token: str,
        scheduled: Callable[[], None] = lambda: None,
    ) -> None:
        self.pool = pool
        self._contacts = contacts_pb2_grpc.ContactServiceStub(contacts)
        self._token = internal_token
        # Told once a publication or a resumption that left a scheduling job has committed
        # (runtime/schedules.py ScheduleLoop.wake), so that it starts at once.
        self._scheduled = scheduled

    async def _require_contact(self, workspace_id: str, contact_id: uuid.UUID) -> None:
        """A test run's contact must be one of the workspace's: with an unknown id, delivery
        would fill the mail with the sample contact's empty fields, and a typo would read as
        personalisation that does not work (a campaign's test send refuses it the same way)."""
        try:
            await self._contacts.GetContact(
                contacts_pb2.GetContactRequest(
                    contact=contacts_pb2.ContactRef(contact_id=str(contact_id))
                ),
                metadata=internal_metadata(self._token, workspace_id),
                timeout=5,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"no contact {str(contact_id)!r} in this workspace") from None
            raise Unavailable(f"contacts did not answer: {err.code().name}") from err

    # --- drafts -------------------------------------------------------------------------

    async def CreateWorkflow(
        self, request: triggers_pb2.CreateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.Workflow:
        workspace_id = current_workspace()
        v = Validator()
        v.check(
            bool(request.definition_json) != bool(request.template_id),
            "definition_json",
            "give either definition_json or template_id",
        )
        v.check(len(request.name) <= MAX_NAME, "name", f"longer than {MAX_NAME} characters")
        v.check("\x00" not in request.name, "name", "contains a NUL character")
        v.check(request.name == "" or bool(request.name.strip()), "name", "must not be only spaces")
        v.raise_if_any()
        if request.template_id:
            found = templates.template(request.template_id)
            if found is None:
                raise InvalidArgument(
                    FieldViolation(
                        "template_id",
                        "no such template; ListTemplates names them: "
                        + ", ".join(t.id for t in templates.TEMPLATES),
                    )
                )
            defn = found.definition
        else:
            defn = parse_definition(request.definition_json)
        if request.name:
            defn = defn.model_copy(update={"name": request.name})
        async with self.pool.acquire() as conn:
            row = await store.insert_workflow(
                conn,
                workspace_id,
                name=defn.name,
                draft=stored(defn),
                trigger_event=defn.trigger.event,
                template_id=request.template_id,
                now=clock.now(),
            )
        log.info("created workflow %s (%s)", row["id"], defn.trigger.event)
        return workflow_message(row)

    async def GetWorkflow(
        self, request: triggers_pb2.GetWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.Workflow:
        workspace_id = current_workspace()
        workflow_id = workflow_id_of(request.workflow_id)
        async with self.pool.acquire() as conn:
            row = await store.get_workflow(conn, workspace_id, workflow_id)
        if row is None:
            raise NotFound(f"no workflow {request.workflow_id!r}")
        return workflow_message(row)

    async def ListWorkflows(
        self, request: triggers_pb2.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.ListWorkflowsResponse:
        workspace_id = current_workspace()
        v = Validator()
        size = _page_size(v, request.page_size)
        after = _cursor(v, request.page_token)
        v.check(
            request.status == triggers_pb2.WORKFLOW_STATUS_UNSPECIFIED
            or request.status in _STATUS_NAMES,
            "status",
            "not a workflow status",
        )
        v.raise_if_any()
        async with self.pool.acquire() as conn:
            rows = await store.list_workflows(
                conn,
                workspace_id,
                status=_STATUS_NAMES.get(request.status),
                after=after,
                limit=size,
            )
        answer = triggers_pb2.ListWorkflowsResponse(
            workflows=[workflow_message(r) for r in rows[:size]]
        )
        if len(rows) > size:
            last = rows[size - 1]
            answer.next_page_token = store.encode_token(
                store.Cursor(last["created_at"], last["id"])
            )
        return answer

    async def UpdateWorkflow(
        self, request: triggers_pb2.UpdateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.Workflow:
        workspace_id = current_workspace()
        workflow_id = workflow_id_of(request.workflow_id)
        v = Validator()
        v.check(request.expected_revision >= 0, "expected_revision", "must be 0 or more")
        v.raise_if_any()
        defn = parse_definition(request.definition_json)
        return await self._replace_draft(workspace_id, workflow_id, defn, request.expected_revision)

    async def _replace_draft(
        self, workspace_id: str, workflow_id: uuid.UUID, defn: Definition, expected: int
    ) -> triggers_pb2.Workflow:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.get_workflow(conn, workspace_id, workflow_id, for_update=True)
            if row is None:
                raise NotFound(f"no workflow {str(workflow_id)!r}")
            if expected and row["draft_revision"] != expected:
                raise Aborted(
                    f"the draft is at revision {row['draft_revision']}, not {expected}:"
                    " read it again and retry"
                )
            await store.replace_draft(
                conn,
                workspace_id,
                workflow_id,
                name=defn.name,
                draft=stored(defn),
                trigger_event=defn.trigger.event,
                now=clock.now(),
            )
            row = await store.get_workflow(conn, workspace_id, workflow_id)
        assert row is not None
        return workflow_message(row)

    async def DeleteWorkflow(
        self, request: triggers_pb2.DeleteWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.DeleteWorkflowResponse:
        workspace_id = current_workspace()
        workflow_id = workflow_id_of(request.workflow_id)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.get_workflow(conn, workspace_id, workflow_id, for_update=True)
            if row is None:
                raise NotFound(f"no workflow {request.workflow_id!r}")
            if row["published_version"] > 0:
                raise FailedPrecondition(
                    "a published workflow is not deleted (its runs and history stay):"
                    " pause it instead"
                )
            await store.delete_workflow(conn, workspace_id, workflow_id)
        log.info("deleted draft workflow %s", workflow_id)
        return triggers_pb2.DeleteWorkflowResponse()

    async def ValidateWorkflow(
        self, request: triggers_pb2.ValidateWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.ValidateWorkflowResponse:
        current_workspace()  # authenticated like every call, though nothing is read
        try:
            defn = parse_definition(request.definition_json)
        except InvalidArgument as err:
            return triggers_pb2.ValidateWorkflowResponse(
                valid=False,
                violations=[
                    triggers_pb2.Violation(field=v.field, description=v.description)
                    for v in err.violations
                ],
            )
        return triggers_pb2.ValidateWorkflowResponse(
            valid=True,
            warnings=[
                triggers_pb2.Violation(field=w.field, description=w.description)
                for w in definitions.warnings(defn)
            ],
        )

    # --- versions -----------------------------------------------------------------------

    async def PublishWorkflow(
        self, request: triggers_pb2.PublishWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.Workflow:
        workspace_id = current_workspace()
        workflow_id = workflow_id_of(request.workflow_id)
        v = Validator()
        v.check(request.expected_revision >= 0, "expected_revision", "must be 0 or more")
        v.raise_if_any()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.get_workflow(conn, workspace_id, workflow_id, for_update=True)
            if row is None:
                raise NotFound(f"no workflow {request.workflow_id!r}")
            expected = request.expected_revision
            if expected and row["draft_revision"] != expected:
                raise Aborted(
                    f"the draft is at revision {row['draft_revision']}, not {expected}:"
                    " read it again and retry"
                )
            if row["published_version"] > 0 and not row["draft_changed"]:
                # A replayed publish, or nothing edited: no second identical version.
                raise FailedPrecondition(
                    f"the draft is version {row['published_version']} already;"
                    " change it before publishing again"
                )
            # Re-checked against today's rules: a draft is what goes live.
            defn = parse_definition(json.dumps(store.document(row["draft"])), "definition")
            version = row["published_version"] + 1
            await store.publish(
                conn,
                workspace_id,
                workflow_id,
                version=version,
                definition=stored(defn),
                trigger_event=defn.trigger.event,
                published_by=current_actor(),
                now=clock.now(),
            )
            # Silence and value triggers: timers and baselines for the contacts known
            # already, in this transaction, so that no event between the publication and
            # them can start a run the new version would not (a total crossed long ago).
            # Date triggers: a job, whose timers the schedule loop writes after the commit.
            await derived.schedule_workflow(
                conn, workspace_id, str(workflow_id), version, clock.now()
            )
            row = await store.get_workflow(conn, workspace_id, workflow_id)
        assert row is not None
        self._scheduled()
        log.info("published workflow %s version %d", workflow_id, version)
        return workflow_message(row)

    async def PauseWorkflow(
        self, request: triggers_pb2.PauseWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.Workflow:
        return await self._move(request.workflow_id, "active", "paused")

    async def ResumeWorkflow(
        self, request: triggers_pb2.ResumeWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.Workflow:
        return await self._move(request.workflow_id, "paused", "active")

    async def _move(self, raw_id: str, source: str, target: str) -> triggers_pb2.Workflow:
        workspace_id = current_workspace()
        workflow_id = workflow_id_of(raw_id)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.get_workflow(conn, workspace_id, workflow_id, for_update=True)
            if row is None:
                raise NotFound(f"no workflow {raw_id!r}")
            if row["status"] != source:
                raise FailedPrecondition(
                    f"the workflow is {row['status']}; only a workflow {source} can be {target}"
                    + (" (publish it first)" if row["status"] == "draft" else "")
                )
            await store.set_status(conn, workspace_id, workflow_id, target, clock.now())
            if target == "active":  # timers moved on while paused: bring them up to date
                await derived.schedule_workflow(
                    conn, workspace_id, str(workflow_id), row["published_version"], clock.now()
                )
            row = await store.get_workflow(conn, workspace_id, workflow_id)
        assert row is not None
        if target == "active":
            self._scheduled()
        log.info("workflow %s is %s", workflow_id, target)
        return workflow_message(row)

    async def ListWorkflowVersions(
        self,
        request: triggers_pb2.ListWorkflowVersionsRequest,
        context: grpc.aio.ServicerContext,
    ) -> triggers_pb2.ListWorkflowVersionsResponse:
        workspace_id = current_workspace()
        workflow_id = workflow_id_of(request.workflow_id)
        async with self.pool.acquire() as conn:
            if await store.get_workflow(conn, workspace_id, workflow_id) is None:
                raise NotFound(f"no workflow {request.workflow_id!r}")
            rows = await store.list_versions(conn, workspace_id, workflow_id)
        return triggers_pb2.ListWorkflowVersionsResponse(
            versions=[
                triggers_pb2.WorkflowVersion(
                    version=r["version"],
                    definition_json=definitions.export(loaded(r["definition"])),
                    published_at=_timestamp(r["published_at"]),
                    published_by=r["published_by"],
                )
                for r in rows
            ]
        )

    async def ExportWorkflow(
        self, request: triggers_pb2.ExportWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.ExportWorkflowResponse:
        workspace_id = current_workspace()
        workflow_id = workflow_id_of(request.workflow_id)
        if request.version < 0:
            raise InvalidArgument(FieldViolation("version", "0 (the draft) or a version"))
        async with self.pool.acquire() as conn:
            row = await store.get_workflow(conn, workspace_id, workflow_id)
            if row is None:
                raise NotFound(f"no workflow {request.workflow_id!r}")
            if request.version == 0:
                document = row["draft"]
            else:
                version = await store.get_version(conn, workspace_id, workflow_id, request.version)
                if version is None:
                    raise NotFound(f"the workflow has no version {request.version}")
                document = version["definition"]
        return triggers_pb2.ExportWorkflowResponse(
            definition_json=definitions.export(loaded(document))
        )

    async def ImportWorkflow(
        self, request: triggers_pb2.ImportWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.Workflow:
        workspace_id = current_workspace()
        if request.workflow_id:
            workflow_id = workflow_id_of(request.workflow_id)
            defn = parse_definition(request.definition_json)
            return await self._replace_draft(workspace_id, workflow_id, defn, 0)
        defn = parse_definition(request.definition_json)
        async with self.pool.acquire() as conn:
            row = await store.insert_workflow(
                conn,
                workspace_id,
                name=defn.name,
                draft=stored(defn),
                trigger_event=defn.trigger.event,
                template_id="",
                now=clock.now(),
            )
        log.info("imported workflow %s", row["id"])
        return workflow_message(row)

    async def ListTemplates(
        self, request: triggers_pb2.ListTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.ListTemplatesResponse:
        current_workspace()
        return triggers_pb2.ListTemplatesResponse(
            templates=[
                triggers_pb2.Template(
                    id=t.id,
                    name=t.name,
                    description=t.description,
                    definition_json=definitions.export(t.definition),
                )
                for t in templates.TEMPLATES
            ]
        )

    # --- runs ---------------------------------------------------------------------------

    async def ListRuns(
        self, request: triggers_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.ListRunsResponse:
        workspace_id = current_workspace()
        workflow_id = workflow_id_of(request.workflow_id) if request.workflow_id else None
        v = Validator()
        size = _page_size(v, request.page_size)
        after = _cursor(v, request.page_token)
        v.check(
            request.state == triggers_pb2.RUN_STATE_UNSPECIFIED
            or request.state in _RUN_STATE_NAMES,
            "state",
            "not a run state",
        )
        contact_id: uuid.UUID | None = None
        if request.contact_id:
            try:
                contact_id = uuid.UUID(request.contact_id)
            except ValueError:
                v.check(False, "contact_id", "not a contact id")
        v.raise_if_any()
        async with self.pool.acquire() as conn:
            if (
                workflow_id is not None
                and await store.get_workflow(conn, workspace_id, workflow_id) is None
            ):
                raise NotFound(f"no workflow {request.workflow_id!r}")
            rows = await store.list_runs(
                conn,
                workspace_id,
                workflow_id=workflow_id,
                state=_RUN_STATE_NAMES.get(request.state),
                contact_id=contact_id,
                after=after,
                limit=size,
            )
        answer = triggers_pb2.ListRunsResponse(runs=[run_message(r) for r in rows[:size]])
        if len(rows) > size:
            last = rows[size - 1]
            answer.next_page_token = store.encode_token(
                store.Cursor(last["started_at"], last["id"])
            )
        return answer

    async def CancelRun(
        self, request: triggers_pb2.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.Run:
        workspace_id = current_workspace()
        try:
            run_id = uuid.UUID(request.run_id)
        except ValueError:
            raise NotFound(f"no run {request.run_id!r}") from None
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.get_run(conn, workspace_id, run_id, for_update=True)
            if row is None:
                raise NotFound(f"no run {request.run_id!r}")
            if row["ended_at"] is not None:
                raise FailedPrecondition(f"the run has ended already ({row['state']})")
            await store.cancel_run(conn, workspace_id, run_id, clock.now())
            row = await store.get_run(conn, workspace_id, run_id)
        assert row is not None
        log.info("cancelled run %s", run_id)
        return run_message(row)

    async def GetWorkflowStats(
        self, request: triggers_pb2.GetWorkflowStatsRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.GetWorkflowStatsResponse:
        workspace_id = current_workspace()
        workflow_id = workflow_id_of(request.workflow_id)
        if request.version < 0:
            raise InvalidArgument(FieldViolation("version", "0 (every version) or a version"))
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            row = await store.get_workflow(conn, workspace_id, workflow_id)
            if row is None:
                raise NotFound(f"no workflow {request.workflow_id!r}")
            shown = request.version or row["published_version"]
            version = (
                await store.get_version(conn, workspace_id, workflow_id, shown) if shown else None
            )
            if request.version and version is None:
                raise NotFound(f"the workflow has no version {request.version}")
            steps = await store.step_counts(conn, workspace_id, workflow_id, request.version)
            waiting = await store.waiting_counts(conn, workspace_id, workflow_id, request.version)
            runs = await store.run_counts(conn, workspace_id, workflow_id, request.version)
        # Steps in the order of the version shown (the latest published, or the draft), then
        # any step only older versions had.
        defn = loaded(version["definition"] if version else row["draft"])
        order = step_order(defn)
        stats: dict[str, triggers_pb2.StepStats] = {
            step_id: triggers_pb2.StepStats(step_id=step_id) for step_id in order
        }
        for r in steps:
            s = stats.setdefault(r["step_id"], triggers_pb2.StepStats(step_id=r["step_id"]))
            s.entered, s.completed = r["entered"], r["completed"]
            s.yes, s.no, s.skipped = r["yes"], r["no"], r["skipped"]
        for r in waiting:
            s = stats.setdefault(r["step_id"], triggers_pb2.StepStats(step_id=r["step_id"]))
            s.waiting = r["waiting"]
        extra = sorted(set(stats) - set(order))
        return triggers_pb2.GetWorkflowStatsResponse(
            steps=[stats[step_id] for step_id in [*order, *extra]],
            runs_started=sum(runs.values()),
            runs_active=runs.get("active", 0) + runs.get("waiting", 0),
            runs_completed=runs.get("completed", 0),
            runs_exited=runs.get("exited", 0) + runs.get("cancelled", 0),
        )

    async def StartTestRun(
        self, request: triggers_pb2.StartTestRunRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.Run:
        workspace_id = current_workspace()
        workflow_id = workflow_id_of(request.workflow_id)
        v = Validator()
        contact_id: uuid.UUID | None = None
        try:
            contact_id = uuid.UUID(request.contact_id)
        except ValueError:
            v.check(False, "contact_id", "not a contact id")
        recipient = ""
        try:
            if len(request.recipient) > MAX_RECIPIENT:
                raise EmailNotValidError("too long")
            recipient = validate_email(request.recipient, check_deliverability=False).normalized
        except EmailNotValidError:
            v.check(False, "recipient", "not an e-mail address")
        v.raise_if_any()
        assert contact_id is not None
        await self._require_contact(workspace_id, contact_id)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await store.get_workflow(conn, workspace_id, workflow_id)
            if row is None:
                raise NotFound(f"no workflow {request.workflow_id!r}")
            if request.use_draft:
                defn = parse_definition(json.dumps(store.document(row["draft"])), "definition")
                version = await store.snapshot_draft(
                    conn,
                    workspace_id,
                    workflow_id,
                    revision=row["draft_revision"],
                    definition=stored(defn),
                    by=current_actor(),
                    now=clock.now(),
                )
            else:
                version = row["published_version"]
                if version == 0:
                    raise FailedPrecondition(
                        "the workflow was never published: test its draft (use_draft)"
                    )
                published = await store.get_version(conn, workspace_id, workflow_id, version)
                assert published is not None
                defn = loaded(published["definition"])
            run_id = await store.insert_test_run(
                conn,
                workspace_id,
                workflow_id=workflow_id,
                version=version,
                contact_id=contact_id,
                recipient=recipient,
                run_vars=SAMPLE_VARS.get(defn.trigger.event, {}),
                now=clock.now(),
            )
            run = await store.get_run(conn, workspace_id, run_id)
        assert run is not None
        log.info("started test run %s of workflow %s", run_id, workflow_id)
        return run_message(run)
