"""The envelope every Kafka value is wrapped in, and how payloads go in and out of it."""

from __future__ import annotations

import uuid
from datetime import datetime

from google.protobuf.message import Message
from nudge.events.v1.envelope_pb2 import Envelope

from services.common import clock

# Payload message full name -> the envelope's oneof field that carries it.
_FIELD_BY_TYPE: dict[str, str] = {
    field.message_type.full_name: field.name  # type: ignore[union-attr]
    for field in Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields
}

NAMESPACE = uuid.UUID("6f1c7f5e-0c4e-4d0a-9a53-2b8f3c4d5e6f")


def deterministic_id(*parts: str) -> str:
    """A uuid5 of what caused a thing: replaying the cause yields the same id (idempotency)."""
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


def new_envelope(
    workspace_id: str,
    payload: Message,
    *,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> Envelope:
    type_name = payload.DESCRIPTOR.full_name
    field = _FIELD_BY_TYPE.get(type_name)
    if field is None:
        raise TypeError(f"{type_name} is not an envelope payload; add it to envelope.proto")
    env = Envelope(
        event_id=event_id or str(uuid.uuid4()), workspace_id=workspace_id, type=type_name
    )
    env.occurred_at.FromDatetime(occurred_at or clock.now())
    getattr(env, field).CopyFrom(payload)
    return env


def payload_of(env: Envelope) -> Message | None:
    field = env.WhichOneof("payload")
    return getattr(env, field) if field else None
