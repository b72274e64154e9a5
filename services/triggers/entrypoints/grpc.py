"""The WorkflowService sidecar, served from inside the Faust worker's process."""

from __future__ import annotations

import grpc
from nudge.triggers.v1 import triggers_pb2, triggers_pb2_grpc

from services.triggers.domain.workflows import BUILT_IN


class WorkflowServicer(triggers_pb2_grpc.WorkflowServiceServicer):
    """Lists the workflows the engine runs (built-in ones until workflows can be authored)."""

    async def ListWorkflows(
        self, request: triggers_pb2.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.ListWorkflowsResponse:
        return triggers_pb2.ListWorkflowsResponse(
            workflows=[
                triggers_pb2.Workflow(
                    id=w.id,
                    name=w.name,
                    trigger=w.trigger,
                    status=triggers_pb2.WORKFLOW_STATUS_ACTIVE,
                    version=1,
                )
                for w in BUILT_IN
            ]
        )
