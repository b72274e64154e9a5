"""The WorkflowService sidecar, served from inside the Faust worker's process."""

from __future__ import annotations

import grpc
from nudge.triggers.v1 import triggers_pb2, triggers_pb2_grpc


class WorkflowServicer(triggers_pb2_grpc.WorkflowServiceServicer):
    """Placeholder until the workflow API lands: the hard-coded welcome is gone (workflows
    are published rows now), so nothing is listed here."""

    async def ListWorkflows(
        self, request: triggers_pb2.ListWorkflowsRequest, context: grpc.aio.ServicerContext
    ) -> triggers_pb2.ListWorkflowsResponse:
        return triggers_pb2.ListWorkflowsResponse()
