"""Fake gRPC stubs and health checks for the gateway's unit tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from services.gateway.adapters.grpc import Backends


def rpc_error(
    code: grpc.StatusCode, details: str = "", violations: dict[str, str] | None = None
) -> grpc.aio.AioRpcError:
    """An error as a Nudge service raises it: status, message and google.rpc details."""
    status = status_pb2.Status(code=code.value[0], message=details)
    if violations:
        status.details.add().Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in violations.items()
                ]
            )
        )
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)


class FakeStub:
    """Every attribute is an RPC: it records the call, then answers what ``answers`` says
    (a message, an exception to raise, or a function of the request)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Message, Any]] = []
        self.answers: dict[str, Message | BaseException | Callable[[Message], Message]] = {}

    def __getattr__(self, method: str) -> Any:
        async def rpc(request: Message, *, metadata: Any = None, timeout: Any = None) -> Message:
            self.calls.append((method, request, metadata))
            answer = self.answers[method]
            if isinstance(answer, BaseException):
                raise answer
            if callable(answer):
                return answer(request)
            return answer

        return rpc


def fake_backends() -> Backends:
    contacts = FakeStub()
    return Backends(
        contacts=contacts,  # type: ignore[arg-type]
        consents=contacts,  # type: ignore[arg-type]
        workspaces=contacts,  # type: ignore[arg-type]
        imports=contacts,  # type: ignore[arg-type]
        privacy=contacts,  # type: ignore[arg-type]
        shop_events=contacts,  # type: ignore[arg-type]
        segments=FakeStub(),  # type: ignore[arg-type]
        campaigns=FakeStub(),  # type: ignore[arg-type]
        delivery=FakeStub(),  # type: ignore[arg-type]
        workflows=FakeStub(),  # type: ignore[arg-type]
        health={},
    )


class FakeChecks:
    def __init__(self, report: dict[str, dict[str, Any]]) -> None:
        self.report = report
        self.runs = 0

    async def run(self) -> dict[str, dict[str, Any]]:
        self.runs += 1
        return self.report
