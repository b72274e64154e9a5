"""The advisory lock that orders a contact's erasure against the engine's other work on the
contact (tests/integration/triggers/test_erasure_race.py).

Shared by the event paths, which may hold it on many contacts at once, exclusive for the
erasure (services/triggers/privacy.erase_contact). Without it, an event's transaction that
began before the erasure committed could pass the erasure check and write the contact's
facts back after the erasure deleted them. The timer loop only tries it (never waits) for
the contacts of the timers it claimed: a timer of a contact being erased is dropped, neither
fired nor put back (services/triggers/runtime/timers.py)."""

from __future__ import annotations


def erasure_key(w: str = "w", c: str = "c") -> str:
    """The lock's key for the workspace and contact given as SQL expressions."""
    return f"hashtextextended({w}::text || '/' || {c}::text, 0)"


ERASURE_LOCK = "pg_advisory_xact_lock{}(" + erasure_key() + ")"
"""Taking it on columns ``w`` and ``c``: ``.format('')`` exclusive, ``.format('_shared')``
shared, held until the transaction ends."""


def try_erasure_lock_shared(w: str, c: str) -> str:
    """True and held shared until the transaction ends, or false at once when an erasure of
    the contact holds it."""
    return f"pg_try_advisory_xact_lock_shared({erasure_key(w, c)})"
