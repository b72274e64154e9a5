"""How the guard reads delivery.events.v1 envelopes, its settings and its cache (guard.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from nudge.delivery.v1 import events_pb2
from nudge.events.v1.envelope_pb2 import Envelope

from services.common.errors import FailedPrecondition, Unauthenticated
from services.common.events import new_envelope
from services.delivery import guard
from services.delivery.config import Settings
from services.delivery.domain.guard import HOUR, Rules, hour_of

NOW = datetime(2026, 12, 1, 14, 30, tzinfo=UTC)
WS = str(uuid.uuid4())


def envelope(payload: events_pb2.MessageSent | events_pb2.MessageBounced, **kw: object) -> Envelope:
    return new_envelope(WS, payload, event_id="e-1", occurred_at=NOW - 2 * HOUR, **kw)  # type: ignore[arg-type]


def test_a_dsn_hard_bounce_is_counted_in_the_hour_it_happened() -> None:
    bounced = events_pb2.MessageBounced(message_id="m-1", permanent=True, source="dsn")
    [tally] = guard.tallies_of(envelope(bounced), NOW)
    assert (tally.key, tally.workspace_id, tally.hour) == (
        "guard:hard:m-1",
        WS,
        hour_of(NOW - 2 * HOUR),
    )
    assert (tally.sent, tally.hard_bounces, tally.complaints) == (0, 1, 0)


def test_events_of_no_workspace_or_other_kinds_count_nothing() -> None:
    sent = events_pb2.MessageSent(message_id="m-1")
    no_workspace = new_envelope("not-a-uuid", sent, event_id="e-2")
    skipped = new_envelope(WS, events_pb2.MessageSkipped(message_id="m-1"), event_id="e-3")
    assert guard.tallies_of(no_workspace, NOW) == []
    assert guard.tallies_of(skipped, NOW) == []
    assert len(guard.tallies_of(envelope(sent), NOW)) == 1


def test_the_settings_make_the_rules_and_refuse_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_GUARD_WINDOW_HOURS", "48")
    monkeypatch.setenv("DELIVERY_GUARD_MAX_COMPLAINT_RATE", "0.001")
    monkeypatch.setenv("DELIVERY_GUARD_MIN_VOLUME", "1000")
    rules = Settings().guard_rules()
    assert rules == Rules(window=timedelta(hours=48), min_volume=1000, max_complaint_rate=0.001)
    assert Settings().guard_rules().lookback == timedelta(days=15)
    monkeypatch.setenv("DELIVERY_GUARD_MAX_COMPLAINT_RATE", "0")
    with pytest.raises(ValueError, match="guard_max_complaint_rate"):
        Settings()


async def test_a_cached_suspension_refuses_without_asking_the_database() -> None:
    guard.configure(Settings(admin_token="operator-token-0123456789"))
    guard._remember(WS, "complaint rate 0.40 %")
    # No database at all: the cache answers.
    assert await guard.refusal(None, WS) == "complaint rate 0.40 %"  # type: ignore[arg-type]
    with pytest.raises(FailedPrecondition, match="suspended by the anti-spam guard"):
        await guard.ensure_may_send(None, WS)  # type: ignore[arg-type]
    guard._remember(WS, None)
    await guard.ensure_may_send(None, WS)  # type: ignore[arg-type]


def test_only_the_admin_token_may_lift() -> None:
    guard.configure(Settings(admin_token="operator-token-0123456789"))
    guard.check_admin("Admin operator-token-0123456789")
    for offered in ("", "Admin ", "Admin wrong", "Bearer operator-token-0123456789"):
        with pytest.raises(Unauthenticated):
            guard.check_admin(offered)
    guard.configure(Settings(admin_token=""))
    with pytest.raises(Unauthenticated):  # no token configured: nobody lifts
        guard.check_admin("Admin ")
