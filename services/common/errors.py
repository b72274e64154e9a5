"""Domain errors, raised by handlers and mapped once to gRPC status and HTTP problem+json.

Handlers raise these instead of touching transport details; the gRPC error interceptor
(:mod:`services.common.grpc_server`) and the gateway turn them into the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
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


class Aborted(NudgeError):
    """A concurrent change got there first (an ``expected_version`` that is not current):
    the caller reads again and retries."""


class Unavailable(NudgeError):
    """A dependency (another service, Redis) does not answer: the caller may retry."""


class PermanentError(Exception):
    """An event no retry can ever handle (malformed data): consumers log it and move on,
    instead of retrying it forever and blocking its partition."""


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

    def strings(self, message: Message, path: str, max_length: int) -> None:
        """Every string anywhere in ``message``: at most ``max_length`` characters and no NUL
        (PostgreSQL refuses NUL in text, and an oversized key breaks its index: either would
        fail a consumer on every retry)."""
        for field, value in message.ListFields():
            name = f"{path}.{field.name}" if path else field.name
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if field.message_type is not None and field.message_type.GetOptions().map_entry:
                    items = [(f"{name}[{k}]", k, v) for k, v in value.items()]
                    for item_path, key, item in items:
                        self._string(item_path, str(key), max_length)
                        if isinstance(item, Message):
                            self.strings(item, item_path, max_length)
                        elif isinstance(item, str):
                            self._string(item_path, item, max_length)
                elif field.is_repeated:
                    for i, item in enumerate(value):
                        self.strings(item, f"{name}[{i}]", max_length)
                else:
                    self.strings(value, name, max_length)
            elif field.type == FieldDescriptor.TYPE_STRING:
                if field.is_repeated:
                    for i, item in enumerate(value):
                        self._string(f"{name}[{i}]", item, max_length)
                else:
                    self._string(name, value, max_length)

    def _string(self, path: str, value: str, max_length: int) -> None:
        self.check("\x00" not in value, path, "contains a NUL character")
        self.check(len(value) <= max_length, path, f"longer than {max_length} characters")

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)
