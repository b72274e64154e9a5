"""A test run started through the API is carried out by the engine itself: the triggers
service in-process (its gRPC API, its timer loop, its outbox relay) on real PostgreSQL and
Kafka. Its mail reaches delivery.requests.v1 as a test message for the manager, at once
(no waits), filled with sample run variables; a test run of the draft runs the draft."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from nudge.contacts.v1 import contacts_pb2
from nudge.delivery.v1 import delivery_pb2
from nudge.triggers.v1 import triggers_pb2, triggers_pb2_grpc

from tests.integration.conftest import RunningService, Workspace
from tests.integration.triggers.api_support import new_contact
from tests.integration.triggers.support import (
    EventProducer,
    MovableClock,
    bootstrap_servers,
    cart,
    database_url,
    delivery_requests,
)
from tests.integration.triggers.test_api_workflows import cart_definition
from tests.support import eventually, fetchval, triggers_consumed


@pytest.fixture
async def stub(
    contacts_service: RunningService, triggers_engine: RunningService
) -> AsyncIterator[triggers_pb2_grpc.WorkflowServiceStub]:
    async with grpc.aio.insecure_channel(triggers_engine.address) as channel:
        yield triggers_pb2_grpc.WorkflowServiceStub(channel)


async def test_a_test_run_of_the_draft_mails_the_manager_at_once(
    stub: triggers_pb2_grpc.WorkflowServiceStub,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    md = workspace.metadata
    published = cart_definition("Published text")
    created = await stub.CreateWorkflow(
        triggers_pb2.CreateWorkflowRequest(definition_json=json.dumps(published)), metadata=md
    )
    await stub.PublishWorkflow(
        triggers_pb2.PublishWorkflowRequest(workflow_id=created.id), metadata=md
    )
    draft = cart_definition("Draft text")
    draft["steps"][1]["message"]["subject"] = "Draft subject at {{ workspace.name }}"
    await stub.UpdateWorkflow(
        triggers_pb2.UpdateWorkflowRequest(
            workflow_id=created.id, definition_json=json.dumps(draft)
        ),
        metadata=md,
    )
    contact = await new_contact(contacts_service.address, workspace)
    run = await stub.StartTestRun(
        triggers_pb2.StartTestRunRequest(
            workflow_id=created.id,
            contact_id=contact,
            recipient="manager@example.com",
            use_draft=True,
        ),
        metadata=md,
    )

    async def completed() -> bool:
        state = await fetchval(
            database_url(), "SELECT state FROM triggers.runs WHERE id = $1", uuid.UUID(run.id)
        )
        return state == "completed"

    # The 3-hour wait is skipped: no clock moves, the run ends on its own.
    await eventually(completed, timeout=30)

    async def mailed() -> list[delivery_pb2.DeliveryRequested]:
        return [
            r
            for r in await delivery_requests(bootstrap_servers(), workspace.id)
            if r.workflow_id == created.id
        ]

    requests = await eventually(mailed, timeout=30)
    assert len(requests) == 1
    request = requests[0]
    assert request.kind == delivery_pb2.MESSAGE_KIND_TEST
    assert request.test_recipient == "manager@example.com"
    # The step's purpose, with which delivery reads the contact's data (without one, contacts
    # refused the lookup and delivery dead-lettered the mail).
    assert request.purpose == contacts_pb2.CONSENT_PURPOSE_AUTOMATIONS
    assert request.contact_id == contact
    assert request.content.subject == "Draft subject at {{ workspace.name }}"  # the draft's
    assert request.vars["cart_items"]  # sample variables, since no cart started it
    # A test run counts in no statistics.
    stats = await stub.GetWorkflowStats(
        triggers_pb2.GetWorkflowStatsRequest(workflow_id=created.id), metadata=md
    )
    assert stats.runs_started == 0


async def test_a_workflow_published_through_the_api_starts_runs_until_it_is_paused(
    stub: triggers_pb2_grpc.WorkflowServiceStub,
    workspace: Workspace,
    producer: EventProducer,
    engine_clock: MovableClock,
) -> None:
    """What the API writes on publish and pause is what the engine reads: a cart starts a
    run of version 1 that the API lists, counts and cancels; once paused, carts start none."""
    md = workspace.metadata
    created = await stub.CreateWorkflow(
        triggers_pb2.CreateWorkflowRequest(definition_json=json.dumps(cart_definition())),
        metadata=md,
    )
    await stub.PublishWorkflow(
        triggers_pb2.PublishWorkflowRequest(workflow_id=created.id), metadata=md
    )
    engine_clock.advance(seconds=5)  # past the engine's cache of live workflows
    contact = str(uuid.uuid4())
    await producer.shop(workspace.id, contact, cart("cart-1", ("p1", "Blue mug", 2, 1200)))

    async def waiting_runs() -> list[triggers_pb2.Run]:
        answer = await stub.ListRuns(
            triggers_pb2.ListRunsRequest(
                workflow_id=created.id, state=triggers_pb2.RUN_STATE_WAITING
            ),
            metadata=md,
        )
        return list(answer.runs)

    runs = await eventually(waiting_runs, timeout=30)
    assert [(r.contact_id, r.version, r.position, r.key) for r in runs] == [
        (contact, 1, "reminder", "cart-1")
    ]
    stats = await stub.GetWorkflowStats(
        triggers_pb2.GetWorkflowStatsRequest(workflow_id=created.id), metadata=md
    )
    by_step = {s.step_id: s for s in stats.steps}
    assert (by_step["wait_3h"].entered, by_step["reminder"].waiting) == (1, 1)
    assert (stats.runs_started, stats.runs_active) == (1, 1)

    cancelled = await stub.CancelRun(triggers_pb2.CancelRunRequest(run_id=runs[0].id), metadata=md)
    assert cancelled.state == triggers_pb2.RUN_STATE_CANCELLED

    await stub.PauseWorkflow(triggers_pb2.PauseWorkflowRequest(workflow_id=created.id), metadata=md)
    engine_clock.advance(seconds=5)
    other = str(uuid.uuid4())
    event_id = await producer.shop(workspace.id, other, cart("cart-2", ("p1", "Blue mug", 1, 1200)))
    await eventually(lambda: triggers_consumed(database_url(), event_id), timeout=30)
    every = await stub.ListRuns(triggers_pb2.ListRunsRequest(workflow_id=created.id), metadata=md)
    assert [r.contact_id for r in every.runs] == [contact]
