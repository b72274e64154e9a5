"""Ids as they cross the wire: strings that should be UUIDs."""

from __future__ import annotations

import re
import uuid

_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return False
    return True


def canonical_uuid(value: str) -> str | None:
    """``value`` as canonical UUID text (lowercase, hyphenated: what PostgreSQL returns and
    asyncpg reads as uuid in C), or None when it is no UUID. An id already canonical, as
    every service sends it, costs one regular expression instead of a uuid.UUID parse."""
    if _CANONICAL(value):
        return value
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        return None
