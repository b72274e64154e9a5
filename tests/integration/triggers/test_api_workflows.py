"""WorkflowService over gRPC, on the real database and the real API-key check: the life of a
workflow (draft, publish, pause, resume, versions, export, import, delete), its refusals
(malformed, oversized, wrong type, stale, replayed, another workspace), and the manager's
view of runs (list, stats, test run, cancel)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nudge.triggers.v1 import triggers_pb2, triggers_pb2_grpc

from services.triggers.runtime import schedules
from tests.integration.conftest import RunningService, Workspace
from tests.integration.triggers.api_support import (
    WorkflowServer,
    insert_run,
    new_contact,
    workflow_server,
)


def cart_definition(name: str = "Cart reminder") -> dict[str, Any]:
    return {
        "format": "nudge.workflow/v1",
        "name": name,
        "trigger": {"event": "cart_updated", "filter": {"min_items": 1}},
        "entry": {"concurrency": "per_key", "key": "cart_id", "on_retrigger": "restart"},
        "exit_on": [{"event": "order_placed"}],
        "steps": [
            {"id": "wait_3h", "type": "wait", "duration": "PT3H"},
            {
                "id": "reminder",
                "type": "send",
                "message": {
                    "subject": "Your cart at {{ workspace.name }}",
                    "body_text": "Hi {{ contact.first_name }},\n{{ vars.cart_items }}\n"
                    "{{ vars.cart_url }}",
                },
            },
        ],
    }


def text(doc: dict[str, Any]) -> str:
    return json.dumps(doc)


@pytest.fixture(scope="module")
async def api(contacts_service: RunningService) -> AsyncIterator[WorkflowServer]:
    async with workflow_server(contacts_service.address) as server:
        yield server


class Client:
    """The stub with the workspace's key on every call."""

    def __init__(self, stub: triggers_pb2_grpc.WorkflowServiceStub, ws: Workspace) -> None:
        self.stub = stub
        self.ws = ws

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.stub, name)

        async def call(request: Any) -> Any:
            return await method(request, metadata=self.ws.metadata, timeout=10)

        return call


@pytest.fixture
async def client(api: WorkflowServer, workspace: Workspace) -> AsyncIterator[Client]:
    async with grpc.aio.insecure_channel(api.address) as channel:
        yield Client(triggers_pb2_grpc.WorkflowServiceStub(channel), workspace)


async def create(client: Client, doc: dict[str, Any] | None = None) -> triggers_pb2.Workflow:
    return await client.CreateWorkflow(
        triggers_pb2.CreateWorkflowRequest(definition_json=text(doc or cart_definition()))
    )


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)
    assert status is not None
    out: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad)
        out.update({v.field: v.description for v in bad.field_violations})
    return out


async def assert_refused(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


async def count_workflows(api: WorkflowServer, ws: Workspace) -> int:
    return int(
        await api.pool.fetchval(
            "SELECT count(*) FROM workflows WHERE workspace_id = $1", uuid.UUID(ws.id)
        )
    )


# --- the life of a workflow -----------------------------------------------------------------


async def test_a_workflow_goes_from_draft_to_published_versions_paused_and_resumed(
    client: Client, api: WorkflowServer
) -> None:
    created = await create(client)
    assert created.status == triggers_pb2.WORKFLOW_STATUS_DRAFT
    assert (created.version, created.draft_revision, created.trigger) == (0, 1, "cart_updated")
    assert created.draft_changed  # nothing published yet
    assert json.loads(created.draft_json)["steps"][0]["id"] == "wait_3h"

    edited = cart_definition("Cart reminder, edited")
    updated = await client.UpdateWorkflow(
        triggers_pb2.UpdateWorkflowRequest(
            workflow_id=created.id, definition_json=text(edited), expected_revision=1
        )
    )
    assert (updated.name, updated.draft_revision) == ("Cart reminder, edited", 2)

    published = await client.PublishWorkflow(
        triggers_pb2.PublishWorkflowRequest(workflow_id=created.id, expected_revision=2)
    )
    assert published.status == triggers_pb2.WORKFLOW_STATUS_ACTIVE
    assert (published.version, published.draft_changed) == (1, False)
    assert published.HasField("published_at")
    row = await api.pool.fetchrow(
        "SELECT status, published_version, trigger_event FROM workflows"
        " WHERE workspace_id = $1 AND id = $2",
        uuid.UUID(client.ws.id),
        uuid.UUID(created.id),
    )
    assert dict(row) == {
        "status": "active",
        "published_version": 1,
        "trigger_event": "cart_updated",
    }

    # The draft stays, and moves on without touching version 1.
    second = cart_definition("Cart reminder v2")
    second["steps"][0]["duration"] = "PT2H"
    moved = await client.UpdateWorkflow(
        triggers_pb2.UpdateWorkflowRequest(workflow_id=created.id, definition_json=text(second))
    )
    assert moved.draft_changed and moved.version == 1
    v2 = await client.PublishWorkflow(triggers_pb2.PublishWorkflowRequest(workflow_id=created.id))
    assert v2.version == 2

    versions = await client.ListWorkflowVersions(
        triggers_pb2.ListWorkflowVersionsRequest(workflow_id=created.id)
    )
    assert [v.version for v in versions.versions] == [2, 1]
    key_id = client.ws.api_key.split("_")[1]
    assert {v.published_by for v in versions.versions} == {f"api_key:{key_id}"}
    assert json.loads(versions.versions[1].definition_json)["name"] == "Cart reminder, edited"

    paused = await client.PauseWorkflow(triggers_pb2.PauseWorkflowRequest(workflow_id=created.id))
    assert paused.status == triggers_pb2.WORKFLOW_STATUS_PAUSED
    await assert_refused(
        client.PauseWorkflow(triggers_pb2.PauseWorkflowRequest(workflow_id=created.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    resumed = await client.ResumeWorkflow(
        triggers_pb2.ResumeWorkflowRequest(workflow_id=created.id)
    )
    assert resumed.status == triggers_pb2.WORKFLOW_STATUS_ACTIVE
    await assert_refused(
        client.ResumeWorkflow(triggers_pb2.ResumeWorkflowRequest(workflow_id=created.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    # Published: kept with its runs and history, never deleted.
    await assert_refused(
        client.DeleteWorkflow(triggers_pb2.DeleteWorkflowRequest(workflow_id=created.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    got = await client.GetWorkflow(triggers_pb2.GetWorkflowRequest(workflow_id=created.id))
    assert (got.status, got.version) == (triggers_pb2.WORKFLOW_STATUS_ACTIVE, 2)


async def test_a_draft_cannot_be_paused_or_resumed(client: Client) -> None:
    created = await create(client)
    for call in (
        client.PauseWorkflow(triggers_pb2.PauseWorkflowRequest(workflow_id=created.id)),
        client.ResumeWorkflow(triggers_pb2.ResumeWorkflowRequest(workflow_id=created.id)),
    ):
        await assert_refused(call, grpc.StatusCode.FAILED_PRECONDITION)


async def test_a_never_published_draft_is_deleted(client: Client, api: WorkflowServer) -> None:
    created = await create(client)
    await client.DeleteWorkflow(triggers_pb2.DeleteWorkflowRequest(workflow_id=created.id))
    await assert_refused(
        client.GetWorkflow(triggers_pb2.GetWorkflowRequest(workflow_id=created.id)),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await count_workflows(api, client.ws) == 0


async def test_a_workflow_from_a_template_is_a_draft_of_that_template(client: Client) -> None:
    listed = await client.ListTemplates(triggers_pb2.ListTemplatesRequest())
    ids = [t.id for t in listed.templates]
    assert "abandoned_cart" in ids
    cart = next(t for t in listed.templates if t.id == "abandoned_cart")
    created = await client.CreateWorkflow(
        triggers_pb2.CreateWorkflowRequest(template_id="abandoned_cart", name="My cart flow")
    )
    assert (created.template_id, created.name, created.trigger) == (
        "abandoned_cart",
        "My cart flow",
        "cart_updated",
    )
    assert created.status == triggers_pb2.WORKFLOW_STATUS_DRAFT
    mine = json.loads(created.draft_json)
    assert mine["name"] == "My cart flow"
    assert mine["steps"] == json.loads(cart.definition_json)["steps"]
    # Publishable as it is.
    published = await client.PublishWorkflow(
        triggers_pb2.PublishWorkflowRequest(workflow_id=created.id)
    )
    assert published.version == 1


async def test_every_template_is_publishable_through_the_api(client: Client) -> None:
    listed = await client.ListTemplates(triggers_pb2.ListTemplatesRequest())
    assert len(listed.templates) >= 11
    for t in listed.templates:
        created = await client.CreateWorkflow(triggers_pb2.CreateWorkflowRequest(template_id=t.id))
        published = await client.PublishWorkflow(
            triggers_pb2.PublishWorkflowRequest(workflow_id=created.id)
        )
        assert (published.version, published.template_id) == (1, t.id), t.id
        exported = await client.ExportWorkflow(
            triggers_pb2.ExportWorkflowRequest(workflow_id=created.id, version=1)
        )
        assert exported.definition_json == t.definition_json, t.id


async def test_publishing_a_birthday_workflow_schedules_the_contacts_known_already(
    client: Client, api: WorkflowServer
) -> None:
    """A date trigger needs a timer per contact; the contacts the engine knew before the
    publication get theirs from the job it leaves (derived.schedule_workflow, worked off by
    the schedule loop: runtime/schedules.py), not at their next event. Resuming brings them
    up to date again."""
    contact = uuid.uuid4()
    await api.pool.execute(
        "INSERT INTO contact_facts (workspace_id, contact_id, birthday, time_zone)"
        " VALUES ($1, $2, '1990-03-14', 'Europe/Rome')",
        uuid.UUID(client.ws.id),
        contact,
    )
    created = await client.CreateWorkflow(
        triggers_pb2.CreateWorkflowRequest(template_id="birthday")
    )
    await client.PublishWorkflow(triggers_pb2.PublishWorkflowRequest(workflow_id=created.id))
    key = f"date/{created.id}/{contact}"
    await schedules.run_all(api.pool)  # this server runs no loop: what the workers' loop does
    due = await api.pool.fetchval("SELECT due_at FROM timers WHERE timer_key = $1", key)
    assert due is not None
    assert (due.month, due.day) == (3, 14)
    await api.pool.execute("DELETE FROM timers WHERE timer_key = $1", key)
    await client.PauseWorkflow(triggers_pb2.PauseWorkflowRequest(workflow_id=created.id))
    await client.ResumeWorkflow(triggers_pb2.ResumeWorkflowRequest(workflow_id=created.id))
    await schedules.run_all(api.pool)
    assert await api.pool.fetchval("SELECT count(*) FROM timers WHERE timer_key = $1", key) == 1


async def test_export_then_import_gives_the_same_definition(client: Client) -> None:
    created = await create(client)
    await client.PublishWorkflow(triggers_pb2.PublishWorkflowRequest(workflow_id=created.id))
    v1 = await client.ExportWorkflow(
        triggers_pb2.ExportWorkflowRequest(workflow_id=created.id, version=1)
    )
    draft = await client.ExportWorkflow(triggers_pb2.ExportWorkflowRequest(workflow_id=created.id))
    assert v1.definition_json == draft.definition_json
    assert v1.definition_json.endswith("\n")
    imported = await client.ImportWorkflow(
        triggers_pb2.ImportWorkflowRequest(definition_json=v1.definition_json)
    )
    assert imported.id != created.id
    assert imported.status == triggers_pb2.WORKFLOW_STATUS_DRAFT
    again = await client.ExportWorkflow(triggers_pb2.ExportWorkflowRequest(workflow_id=imported.id))
    assert again.definition_json == v1.definition_json
    await assert_refused(
        client.ExportWorkflow(
            triggers_pb2.ExportWorkflowRequest(workflow_id=created.id, version=7)
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_import_into_a_workflow_replaces_its_draft_only(client: Client) -> None:
    created = await create(client)
    await client.PublishWorkflow(triggers_pb2.PublishWorkflowRequest(workflow_id=created.id))
    replacement = cart_definition("Imported over")
    replaced = await client.ImportWorkflow(
        triggers_pb2.ImportWorkflowRequest(
            definition_json=text(replacement), workflow_id=created.id
        )
    )
    assert (replaced.id, replaced.name, replaced.version) == (created.id, "Imported over", 1)
    assert replaced.draft_changed and replaced.draft_revision == 2
    v1 = await client.ExportWorkflow(
        triggers_pb2.ExportWorkflowRequest(workflow_id=created.id, version=1)
    )
    assert json.loads(v1.definition_json)["name"] == "Cart reminder"


async def test_workflows_are_listed_newest_first_a_page_at_a_time(client: Client) -> None:
    made = [await create(client, cart_definition(f"Flow {i}")) for i in range(3)]
    await client.PublishWorkflow(triggers_pb2.PublishWorkflowRequest(workflow_id=made[0].id))
    first = await client.ListWorkflows(triggers_pb2.ListWorkflowsRequest(page_size=2))
    assert [w.name for w in first.workflows] == ["Flow 2", "Flow 1"]
    assert first.next_page_token
    rest = await client.ListWorkflows(
        triggers_pb2.ListWorkflowsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert [w.name for w in rest.workflows] == ["Flow 0"]
    assert rest.next_page_token == ""
    active = await client.ListWorkflows(
        triggers_pb2.ListWorkflowsRequest(status=triggers_pb2.WORKFLOW_STATUS_ACTIVE)
    )
    assert [w.id for w in active.workflows] == [made[0].id]
    err = await assert_refused(
        client.ListWorkflows(triggers_pb2.ListWorkflowsRequest(page_token="not-a-token")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in violations(err)
    err = await assert_refused(
        client.ListWorkflows(triggers_pb2.ListWorkflowsRequest(page_size=201)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_size" in violations(err)


# --- refusals -------------------------------------------------------------------------------


async def test_malformed_json_is_refused_with_its_place_and_nothing_is_written(
    client: Client, api: WorkflowServer
) -> None:
    err = await assert_refused(
        client.CreateWorkflow(triggers_pb2.CreateWorkflowRequest(definition_json='{"name": ')),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert list(violations(err)) == ["definition"]
    assert await count_workflows(api, client.ws) == 0


async def test_a_wrong_type_is_refused_with_the_path_of_the_field(
    client: Client, api: WorkflowServer
) -> None:
    doc = cart_definition()
    doc["steps"][0]["duration"] = ["three hours"]
    err = await assert_refused(create(client, doc), grpc.StatusCode.INVALID_ARGUMENT)
    assert "definition.steps[0].duration" in violations(err)
    assert await count_workflows(api, client.ws) == 0


async def test_duplicate_step_ids_are_refused(client: Client) -> None:
    doc = cart_definition()
    doc["steps"][1]["id"] = "wait_3h"
    err = await assert_refused(create(client, doc), grpc.StatusCode.INVALID_ARGUMENT)
    assert any(field.startswith("definition.steps[1]") for field in violations(err))


async def test_an_oversized_definition_is_refused_before_parsing(
    client: Client, api: WorkflowServer
) -> None:
    doc = cart_definition()
    doc["description"] = "x" * (257 * 1024)
    err = await assert_refused(create(client, doc), grpc.StatusCode.INVALID_ARGUMENT)
    assert list(violations(err)) == ["definition_json"]
    created = await create(client)
    err = await assert_refused(
        client.UpdateWorkflow(
            triggers_pb2.UpdateWorkflowRequest(workflow_id=created.id, definition_json=text(doc))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert list(violations(err)) == ["definition_json"]
    got = await client.GetWorkflow(triggers_pb2.GetWorkflowRequest(workflow_id=created.id))
    assert got.draft_revision == 1  # nothing half-written


async def test_create_needs_exactly_one_of_definition_and_template(client: Client) -> None:
    for request in (
        triggers_pb2.CreateWorkflowRequest(),
        triggers_pb2.CreateWorkflowRequest(
            definition_json=text(cart_definition()), template_id="abandoned_cart"
        ),
    ):
        err = await assert_refused(client.CreateWorkflow(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert "definition_json" in violations(err)
    err = await assert_refused(
        client.CreateWorkflow(triggers_pb2.CreateWorkflowRequest(template_id="no_such")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "template_id" in violations(err)


async def test_a_stale_revision_is_aborted_and_the_draft_is_kept(client: Client) -> None:
    created = await create(client)
    await client.UpdateWorkflow(
        triggers_pb2.UpdateWorkflowRequest(
            workflow_id=created.id,
            definition_json=text(cart_definition("First edit")),
            expected_revision=1,
        )
    )
    # A second editor who read revision 1 too.
    await assert_refused(
        client.UpdateWorkflow(
            triggers_pb2.UpdateWorkflowRequest(
                workflow_id=created.id,
                definition_json=text(cart_definition("Second edit")),
                expected_revision=1,
            )
        ),
        grpc.StatusCode.ABORTED,
    )
    await assert_refused(
        client.PublishWorkflow(
            triggers_pb2.PublishWorkflowRequest(workflow_id=created.id, expected_revision=1)
        ),
        grpc.StatusCode.ABORTED,
    )
    got = await client.GetWorkflow(triggers_pb2.GetWorkflowRequest(workflow_id=created.id))
    assert (got.name, got.draft_revision, got.version) == ("First edit", 2, 0)


async def test_a_replayed_publish_makes_no_second_version(
    client: Client, api: WorkflowServer
) -> None:
    created = await create(client)
    request = triggers_pb2.PublishWorkflowRequest(workflow_id=created.id, expected_revision=1)
    await client.PublishWorkflow(request)
    await assert_refused(client.PublishWorkflow(request), grpc.StatusCode.FAILED_PRECONDITION)
    versions = await api.pool.fetchval(
        "SELECT count(*) FROM workflow_versions WHERE workspace_id = $1 AND workflow_id = $2",
        uuid.UUID(client.ws.id),
        uuid.UUID(created.id),
    )
    assert versions == 1


async def test_another_workspace_sees_nothing_of_a_workflow(
    api: WorkflowServer, client: Client, contacts_service: RunningService
) -> None:
    from tests.integration.gateway.conftest import new_workspace

    created = await create(client)
    await client.PublishWorkflow(triggers_pb2.PublishWorkflowRequest(workflow_id=created.id))
    run_id = await insert_run(
        api.pool, client.ws.id, created.id, started_at=datetime.now(UTC), position="reminder"
    )
    other = Client(client.stub, await new_workspace(contacts_service))
    # Its own contact: the workflow, not the contact, is what the test run cannot find.
    others_contact = await new_contact(api.contacts_address, other.ws)
    wid = created.id
    calls = [
        other.GetWorkflow(triggers_pb2.GetWorkflowRequest(workflow_id=wid)),
        other.UpdateWorkflow(
            triggers_pb2.UpdateWorkflowRequest(
                workflow_id=wid, definition_json=text(cart_definition())
            )
        ),
        other.PublishWorkflow(triggers_pb2.PublishWorkflowRequest(workflow_id=wid)),
        other.PauseWorkflow(triggers_pb2.PauseWorkflowRequest(workflow_id=wid)),
        other.DeleteWorkflow(triggers_pb2.DeleteWorkflowRequest(workflow_id=wid)),
        other.ListWorkflowVersions(triggers_pb2.ListWorkflowVersionsRequest(workflow_id=wid)),
        other.ExportWorkflow(triggers_pb2.ExportWorkflowRequest(workflow_id=wid, version=1)),
        other.ImportWorkflow(
            triggers_pb2.ImportWorkflowRequest(
                workflow_id=wid, definition_json=text(cart_definition())
            )
        ),
        other.ListRuns(triggers_pb2.ListRunsRequest(workflow_id=wid)),
        other.GetWorkflowStats(triggers_pb2.GetWorkflowStatsRequest(workflow_id=wid)),
        other.StartTestRun(
            triggers_pb2.StartTestRunRequest(
                workflow_id=wid, contact_id=others_contact, recipient="m@example.com"
            )
        ),
        other.CancelRun(triggers_pb2.CancelRunRequest(run_id=run_id)),
        client.GetWorkflow(triggers_pb2.GetWorkflowRequest(workflow_id="not-a-uuid")),
        client.CancelRun(triggers_pb2.CancelRunRequest(run_id="not-a-uuid")),
    ]
    for call in calls:
        await assert_refused(call, grpc.StatusCode.NOT_FOUND)
    assert (await other.ListWorkflows(triggers_pb2.ListWorkflowsRequest())).workflows == []
    got = await client.GetWorkflow(triggers_pb2.GetWorkflowRequest(workflow_id=wid))
    assert (got.status, got.draft_revision) == (triggers_pb2.WORKFLOW_STATUS_ACTIVE, 1)
    state = await api.pool.fetchval("SELECT state FROM runs WHERE id = $1", uuid.UUID(run_id))
    assert state == "waiting"


async def test_validate_reports_problems_and_warnings_without_failing(client: Client) -> None:
    doc = cart_definition()
    doc["steps"][1]["id"] = "wait_3h"
    bad = await client.ValidateWorkflow(
        triggers_pb2.ValidateWorkflowRequest(definition_json=text(doc))
    )
    assert not bad.valid and bad.violations
    no_exit = cart_definition()
    no_exit["exit_on"] = []
    good = await client.ValidateWorkflow(
        triggers_pb2.ValidateWorkflowRequest(definition_json=text(no_exit))
    )
    assert good.valid and not good.violations
    assert any(w.field.startswith("definition.exit_on") for w in good.warnings)


# --- runs -----------------------------------------------------------------------------------


async def published(client: Client) -> triggers_pb2.Workflow:
    created = await create(client)
    return await client.PublishWorkflow(triggers_pb2.PublishWorkflowRequest(workflow_id=created.id))


async def test_runs_are_listed_by_state_and_contact_a_page_at_a_time(
    client: Client, api: WorkflowServer
) -> None:
    wf = await published(client)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    contact = str(uuid.uuid4())
    waiting = await insert_run(
        api.pool, client.ws.id, wf.id, started_at=t0, position="reminder", contact_id=contact
    )
    done = await insert_run(
        api.pool, client.ws.id, wf.id, started_at=t0 + timedelta(1), state="completed"
    )
    exited = await insert_run(
        api.pool, client.ws.id, wf.id, started_at=t0 + timedelta(2), state="exited"
    )
    page = await client.ListRuns(triggers_pb2.ListRunsRequest(workflow_id=wf.id, page_size=2))
    assert [r.id for r in page.runs] == [exited, done]
    rest = await client.ListRuns(
        triggers_pb2.ListRunsRequest(
            workflow_id=wf.id, page_size=2, page_token=page.next_page_token
        )
    )
    assert [r.id for r in rest.runs] == [waiting] and rest.next_page_token == ""
    run = rest.runs[0]
    assert (run.state, run.position, run.contact_id, run.version, run.test) == (
        triggers_pb2.RUN_STATE_WAITING,
        "reminder",
        contact,
        1,
        False,
    )
    by_state = await client.ListRuns(
        triggers_pb2.ListRunsRequest(workflow_id=wf.id, state=triggers_pb2.RUN_STATE_COMPLETED)
    )
    assert [r.id for r in by_state.runs] == [done]
    by_contact = await client.ListRuns(
        triggers_pb2.ListRunsRequest(workflow_id=wf.id, contact_id=contact)
    )
    assert [r.id for r in by_contact.runs] == [waiting]
    err = await assert_refused(
        client.ListRuns(triggers_pb2.ListRunsRequest(workflow_id=wf.id, contact_id="nope")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "contact_id" in violations(err)


async def test_stats_count_steps_and_runs_of_real_runs_only(
    client: Client, api: WorkflowServer
) -> None:
    wf = await published(client)
    now = datetime.now(UTC)
    ws = client.ws.id
    # Two runs asleep before the reminder, one that sent it, one capped, one test run.
    for _ in range(2):
        await insert_run(
            api.pool, ws, wf.id, started_at=now, position="reminder", steps=(("wait_3h", "done"),)
        )
    await insert_run(
        api.pool,
        ws,
        wf.id,
        started_at=now,
        state="completed",
        steps=(("wait_3h", "done"), ("reminder", "done")),
    )
    await insert_run(
        api.pool,
        ws,
        wf.id,
        started_at=now,
        state="exited",
        steps=(("wait_3h", "done"), ("reminder", "skipped:frequency_cap")),
    )
    await insert_run(
        api.pool,
        ws,
        wf.id,
        started_at=now,
        state="completed",
        test_recipient="m@example.com",
        steps=(("wait_3h", "done"), ("reminder", "done")),
    )
    stats = await client.GetWorkflowStats(triggers_pb2.GetWorkflowStatsRequest(workflow_id=wf.id))
    by_step = {s.step_id: s for s in stats.steps}
    assert [s.step_id for s in stats.steps] == ["wait_3h", "reminder"]
    wait, reminder = by_step["wait_3h"], by_step["reminder"]
    assert (wait.entered, wait.completed, wait.waiting) == (4, 4, 0)
    assert (reminder.entered, reminder.completed, reminder.skipped, reminder.waiting) == (
        2,
        1,
        1,
        2,
    )
    assert (stats.runs_started, stats.runs_active, stats.runs_completed, stats.runs_exited) == (
        4,
        2,
        1,
        1,
    )
    await assert_refused(
        client.GetWorkflowStats(triggers_pb2.GetWorkflowStatsRequest(workflow_id=wf.id, version=9)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_test_run_is_queued_for_the_timer_loop_with_its_recipient(
    client: Client, api: WorkflowServer
) -> None:
    created = await create(client)
    contact = await new_contact(api.contacts_address, client.ws)
    await assert_refused(
        client.StartTestRun(
            triggers_pb2.StartTestRunRequest(
                workflow_id=created.id, contact_id=contact, recipient="manager@example.com"
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    run = await client.StartTestRun(
        triggers_pb2.StartTestRunRequest(
            workflow_id=created.id,
            contact_id=contact,
            recipient="manager@example.com",
            use_draft=True,
        )
    )
    # The draft at revision 1, as a version of its own that no edit changes.
    assert run.test and run.version == -1 and run.contact_id == contact
    row = await api.pool.fetchrow(
        "SELECT r.test_recipient, r.vars, t.kind, t.due_at <= now() AS due FROM runs r"
        " JOIN timers t ON t.timer_key = 'run/' || r.id::text WHERE r.id = $1",
        uuid.UUID(run.id),
    )
    assert row is not None
    assert (row["test_recipient"], row["kind"], row["due"]) == ("manager@example.com", "run", True)
    assert json.loads(row["vars"])["cart_items"]
    snapshot = await api.pool.fetchval(
        "SELECT definition FROM workflow_versions WHERE workflow_id = $1 AND version = -1",
        uuid.UUID(created.id),
    )
    assert json.loads(snapshot)["steps"][0]["id"] == "wait_3h"
    listed = await client.ListWorkflowVersions(
        triggers_pb2.ListWorkflowVersionsRequest(workflow_id=created.id)
    )
    assert list(listed.versions) == []  # a snapshot is no published version
    err = await assert_refused(
        client.StartTestRun(
            triggers_pb2.StartTestRunRequest(
                workflow_id=created.id, contact_id="x", recipient="not an address", use_draft=True
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(violations(err)) == {"contact_id", "recipient"}


async def test_a_test_run_of_a_contact_the_workspace_does_not_have_is_not_found(
    client: Client, api: WorkflowServer, contacts_service: RunningService
) -> None:
    from tests.integration.gateway.conftest import new_workspace

    created = await create(client)
    someone_elses = await new_contact(api.contacts_address, await new_workspace(contacts_service))
    for contact in (str(uuid.uuid4()), someone_elses):
        err = await assert_refused(
            client.StartTestRun(
                triggers_pb2.StartTestRunRequest(
                    workflow_id=created.id,
                    contact_id=contact,
                    recipient="manager@example.com",
                    use_draft=True,
                )
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        assert err.details() == f"no contact {contact!r} in this workspace"
    runs = await api.pool.fetchval(
        "SELECT count(*) FROM runs WHERE workflow_id = $1", uuid.UUID(created.id)
    )
    assert runs == 0


async def test_a_cancelled_run_ends_and_its_timer_goes(client: Client, api: WorkflowServer) -> None:
    wf = await published(client)
    contact = await new_contact(api.contacts_address, client.ws)
    run = await client.StartTestRun(
        triggers_pb2.StartTestRunRequest(
            workflow_id=wf.id, contact_id=contact, recipient="manager@example.com"
        )
    )
    cancelled = await client.CancelRun(triggers_pb2.CancelRunRequest(run_id=run.id))
    assert cancelled.state == triggers_pb2.RUN_STATE_CANCELLED
    assert cancelled.end_reason == "cancelled" and cancelled.HasField("ended_at")
    timers = await api.pool.fetchval(
        "SELECT count(*) FROM timers WHERE timer_key = $1", f"run/{run.id}"
    )
    assert timers == 0
    await assert_refused(
        client.CancelRun(triggers_pb2.CancelRunRequest(run_id=run.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
