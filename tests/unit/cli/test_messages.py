"""``nudge message``'s timeline (services/cli/messages.py): pure, from an API answer."""

from __future__ import annotations

from typing import Any

from services.cli.messages import refusal, timeline


def story(**changes: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "message_id": "m-1",
        "status": "sent",
        "detail": "250 OK",
        "updated_at": "2026-12-02T10:00:09Z",
        "contact_id": "c-1",
        "origin": {
            "kind": "campaign",
            "campaign_id": "camp-1",
            "workflow_id": "",
            "run_id": "",
            "step_id": "",
        },
        "requested_at": "2026-12-02T10:00:00Z",
        "eligibility": {
            "checked": True,
            "eligible": True,
            "purpose": "marketing",
            "reason": "",
            "at": "2026-12-02T10:00:01Z",
        },
        "attempts": 2,
        "claimed_at": "2026-12-02T10:00:01Z",
        "next_attempt_at": None,
        "stages": [
            {
                "at": "2026-12-02T10:00:01Z",
                "status": "claimed",
                "detail": "",
                "attempt": 1,
                "next_attempt_at": None,
            },
            {
                "at": "2026-12-02T10:00:02Z",
                "status": "deferred",
                "detail": "451 4.3.0 busy",
                "attempt": 1,
                "next_attempt_at": "2026-12-02T10:05:00Z",
            },
            {
                "at": "2026-12-02T10:05:01Z",
                "status": "claimed",
                "detail": "",
                "attempt": 2,
                "next_attempt_at": None,
            },
            {
                "at": "2026-12-02T10:05:02Z",
                "status": "sent",
                "detail": "250 OK",
                "attempt": 2,
                "next_attempt_at": None,
            },
        ],
        # Given out of order: a scanner's click before the person's open.
        "tracking": [
            {
                "at": "2026-12-02T10:09:00Z",
                "kind": "open",
                "machine": False,
                "machine_reason": "",
                "url": "",
            },
            {
                "at": "2026-12-02T10:05:03Z",
                "kind": "click",
                "machine": True,
                "machine_reason": "too_soon",
                "url": "https://shop.example/a",
            },
        ],
        "trace": {
            "trace_id": "ab" * 16,
            "url": f"http://127.0.0.1:16686/trace/{'ab' * 16}",
            "command": f"nudge trace {'ab' * 16}",
        },
    }
    answer.update(changes)
    return answer


def test_the_timeline_is_one_stage_a_line_in_time_order_with_the_trace_last() -> None:
    lines = timeline(story())
    assert lines[0] == "message m-1: sent"
    assert [line.split()[2] for line in lines[1:-1]] == [
        "requested",
        "eligibility",
        "claimed",
        "deferred",
        "claimed",
        "sent",
        "click",
        "open",
    ]
    assert lines[1].startswith("2026-12-02 10:00:00.000Z")
    assert "of campaign camp-1 to contact c-1" in lines[1]
    assert "eligible (marketing" in lines[2]
    assert lines[4].endswith("451 4.3.0 busy; next attempt at 2026-12-02 10:05:00.000Z")
    assert lines[7].endswith("by a machine (too_soon): https://shop.example/a")
    assert lines[8].endswith("by a person")
    assert lines[-1].split()[1:3] == ["ab" * 16, f"http://127.0.0.1:16686/trace/{'ab' * 16}"]


def test_a_refused_mail_says_why_and_a_mail_without_trace_says_so() -> None:
    refused = story(
        status="skipped",
        stages=[],
        tracking=[],
        eligibility={
            "checked": True,
            "eligible": False,
            "purpose": "marketing",
            "reason": "unsubscribed",
            "at": "2026-12-02T10:00:01Z",
        },
        trace={"trace_id": "", "url": "", "command": ""},
    )
    lines = timeline(refused)
    assert lines[2].endswith("eligibility   not eligible (marketing): unsubscribed")
    assert lines[-1].split()[1:] == ["none", "recorded"]


def test_a_refusal_names_the_fields_of_the_problem() -> None:
    import httpx

    answer = httpx.Response(
        422,
        json={
            "type": "about:blank",
            "title": "Invalid request",
            "status": 422,
            "detail": "1 invalid field",
            "errors": [{"field": "message_id", "message": "not a message id (a UUID)"}],
        },
    )
    assert refusal(answer) == (
        "422 Invalid request: 1 invalid field: message_id: not a message id (a UUID)"
    )
