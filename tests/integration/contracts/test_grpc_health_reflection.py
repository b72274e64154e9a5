"""The standard gRPC services every port offers, as clients nobody here wrote use them:
``grpc.health.v1.Health`` (Check and the Watch stream Kubernetes-style probes and grpc-js
use) and server reflection (``v1``, which grpcurl asks for first, and ``v1alpha``), and no
Python exception text reaching a client whatever breaks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from services.common.grpc_server import build_server, mark_serving
from tests.integration.conftest import RunningService

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SECRET = "secret internals: password=hunter2"


async def next_status(call: Any) -> int:
    answer = await asyncio.wait_for(call.read(), timeout=10)
    assert answer is not grpc.aio.EOF, "the Watch stream ended"
    return int(answer.status)


async def test_watch_streams_serving_on_a_service_port(contacts_service: RunningService) -> None:
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "nudge.contacts.v1.ContactService"):
            call = stub.Watch(health_pb2.HealthCheckRequest(service=service))
            assert await next_status(call) == SERVING
            call.cancel()


class Crashing:
    """A servicer of every call shape that fails the way a bug does."""

    def add(self, _servicer: Any, server: grpc.aio.Server) -> None:
        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            raise RuntimeError(SECRET)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            yield b""
            raise RuntimeError(SECRET)

        async def writer(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.write(b"")
            raise RuntimeError(SECRET)

        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Crashing",
                    {
                        "Unary": grpc.unary_unary_rpc_method_handler(unary),
                        "ClientStream": grpc.stream_unary_rpc_method_handler(unary),
                        "ServerStream": grpc.unary_stream_rpc_method_handler(stream),
                        "BothStreams": grpc.stream_stream_rpc_method_handler(stream),
                        "Writer": grpc.unary_stream_rpc_method_handler(writer),
                    },
                ),
            )
        )


class NoKeys:
    async def verify(self, api_key: str) -> Any:
        raise AssertionError("no call here needs an API key")


@pytest.fixture
async def built() -> AsyncIterator[tuple[grpc.aio.Channel, Any]]:
    """A server from :func:`build_server`, as every service builds its own."""
    crashing = Crashing()
    server, health_servicer = build_server(
        servicers=[(crashing.add, crashing, "test.Crashing")],
        verifier=NoKeys(),  # type: ignore[arg-type]
        internal_token="token",
        policy={
            f"/test.Crashing/{m}": "none"
            for m in ("Unary", "ClientStream", "ServerStream", "BothStreams", "Writer")
        },
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await mark_serving(health_servicer, ["test.Crashing"])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, health_servicer
    finally:
        await server.stop(None)


async def test_watch_follows_status_changes(built: tuple[grpc.aio.Channel, Any]) -> None:
    channel, health_servicer = built
    call = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="test.Crashing")
    )
    assert await next_status(call) == SERVING
    await health_servicer.set("test.Crashing", NOT_SERVING)
    assert await next_status(call) == NOT_SERVING
    await health_servicer.set("test.Crashing", SERVING)
    assert await next_status(call) == SERVING
    call.cancel()


async def test_watch_of_an_unknown_service_says_so_and_keeps_watching(
    built: tuple[grpc.aio.Channel, Any],
) -> None:
    channel, health_servicer = built
    call = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="later.Service")
    )
    assert await next_status(call) == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    await health_servicer.set("later.Service", SERVING)
    assert await next_status(call) == SERVING
    call.cancel()


async def reflect(channel: grpc.aio.Channel, version: str, **request: Any) -> Any:
    """One request over ``grpc.reflection.<version>`` (the two protocols share messages)."""
    info = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = info(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=10)
    answers = [answer async for answer in call]
    assert len(answers) == 1
    return answers[0]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_and_describes_the_services(
    contacts_service: RunningService, version: str
) -> None:
    async with grpc.aio.insecure_channel(contacts_service.address) as channel:
        listed = await reflect(channel, version, list_services="")
        names = {s.name for s in listed.list_services_response.service}
        assert {
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "nudge.contacts.v1.ContactService",
        } <= names
        for symbol in (
            "nudge.contacts.v1.ContactService",
            "nudge.contacts.v1.ContactService.GetContact",  # grpcurl describe of a method
            "grpc.reflection.v1.ServerReflection",
        ):
            described = await reflect(channel, version, file_containing_symbol=symbol)
            assert described.WhichOneof("message_response") == "file_descriptor_response", symbol
            assert described.file_descriptor_response.file_descriptor_proto


@pytest.mark.parametrize(
    "method", ["Unary", "ClientStream", "ServerStream", "BothStreams", "Writer"]
)
async def test_a_bug_in_any_kind_of_call_is_internal_and_tells_nothing(
    built: tuple[grpc.aio.Channel, Any], method: str
) -> None:
    channel, _ = built
    path = f"/test.Crashing/{method}"
    received: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        if method == "Unary":
            await channel.unary_unary(path)(b"", timeout=10)
        elif method == "ClientStream":
            await channel.stream_unary(path)(iter([b""]), timeout=10)
        elif method == "BothStreams":
            async for item in channel.stream_stream(path)(iter([b""]), timeout=10):
                received.append(item)
        else:
            async for item in channel.unary_stream(path)(b"", timeout=10):
                received.append(item)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal error"
    if method in ("ServerStream", "BothStreams", "Writer"):
        assert received == [b""], "the handler ran and answered before it failed"
