"""Request-scoped context: the workspace a call or an event belongs to, for logs and queries."""

from __future__ import annotations

from contextvars import ContextVar

workspace_id_var: ContextVar[str] = ContextVar("workspace_id", default="")
event_id_var: ContextVar[str] = ContextVar("event_id", default="")
# The API key id of the call being handled ("internal" for service-to-service calls), so
# that a recorded change can name who made it (campaign transitions).
key_id_var: ContextVar[str] = ContextVar("key_id", default="")
