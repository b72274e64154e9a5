"""gRPC server reflection under its released name, ``grpc.reflection.v1``.

grpcio-reflection ships only ``grpc.reflection.v1alpha``; grpcurl, Postman and grpc-js
reflection clients ask for ``v1`` first. The two protocols are the same messages under
another package (field numbers and types agree), so the v1alpha servicer answers v1 calls
as they are, and v1's file descriptor (v1alpha's, renamed) goes into the default pool so
that reflection can describe itself under both names.

The default pool (upb) cannot find a method by its full name (``pkg.Service.Method``),
which grpcurl's ``describe pkg.Service.Method`` asks for: :class:`_Pool` answers with the
service's file.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_PACKAGE = "grpc.reflection.v1"
_FILE = "grpc/reflection/v1/reflection.proto"


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE)
        return
    except KeyError:
        pass
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old_prefix = f".{reflection_pb2.DESCRIPTOR.package}."
    file.name = _FILE
    file.package = _PACKAGE
    file.ClearField("options")
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(old_prefix):
                field.type_name = f".{_PACKAGE}." + field.type_name[len(old_prefix) :]
    for service in file.service:
        for method in service.method:
            method.input_type = f".{_PACKAGE}." + method.input_type[len(old_prefix) :]
            method.output_type = f".{_PACKAGE}." + method.output_type[len(old_prefix) :]
    pool.Add(file)


class _Pool:
    """The default pool, finding methods too (see the module docstring)."""

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            if not service:
                raise
            found = self._pool.FindServiceByName(service)  # KeyError when not a service
            if method not in found.methods_by_name:
                raise
            return found.file


def enable(service_names: list[str], server: grpc.aio.Server) -> None:
    """Serve reflection as v1alpha and v1, listing ``service_names`` and both reflections."""
    _register_v1_descriptor()
    names = [*service_names, reflection.SERVICE_NAME, SERVICE_NAME]
    servicer: Any = reflection.aio.ReflectionServicer(names, pool=_Pool())
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                reflection.SERVICE_NAME,
                {"ServerReflectionInfo": _handler(servicer)},
            ),
            grpc.method_handlers_generic_handler(
                SERVICE_NAME, {"ServerReflectionInfo": _handler(servicer)}
            ),
        )
    )


def _handler(servicer: Any) -> grpc.RpcMethodHandler:
    return grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
