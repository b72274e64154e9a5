"""Domain errors, raised by handlers and mapped once to gRPC status and HTTP problem+json.

Handlers raise these instead of touching transport details; the gRPC error interceptor
(:mod:`services.common.grpc_server`) and the gateway turn them into the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class NudgeError(Exception):
    """Base of the errors a caller can act on."""


class InvalidArgument(NudgeError):
    def __init__(self, violations: list[FieldViolation] | FieldViolation) -> None:
        self.violations = violations if isinstance(violations, list) else [violations]
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


class NotFound(NudgeError):
    """Also the answer for another workspace's ids, so ids never leak across tenants."""


class AlreadyExists(NudgeError):
    pass


class Unauthenticated(NudgeError):
    pass


class FailedPrecondition(NudgeError):
    pass


class Validator:
    """Collects every field violation of a request before raising, so a caller sees all."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def check(self, ok: bool, field: str, description: str) -> None:
        if not ok:
            self.violations.append(FieldViolation(field, description))

    def timestamp(self, value: Timestamp, field: str) -> datetime | None:
        """The UTC datetime of a protobuf Timestamp, or a violation when it is out of range."""
        try:
            return value.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            self.violations.append(FieldViolation(field, "not a valid timestamp"))
            return None

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)
