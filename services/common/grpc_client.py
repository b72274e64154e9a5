"""gRPC channels to other Nudge services, with the trace context in the metadata."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors


def channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, interceptors=aio_client_interceptors())  # type: ignore[no-untyped-call]
