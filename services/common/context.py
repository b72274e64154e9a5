"""Request-scoped context: the workspace a call or an event belongs to, for logs and queries."""

from __future__ import annotations

from contextvars import ContextVar

workspace_id_var: ContextVar[str] = ContextVar("workspace_id", default="")
event_id_var: ContextVar[str] = ContextVar("event_id", default="")
