"""``nudge message ID [--json]``: where is this mail? The story of one message as a
timeline, one stage a line (time, stage, detail), from the gateway's
``GET /v1/messages/{id}?explain=true``; ``--json`` prints the API's answer as it is.

The gateway and the API key come from ``--gateway-url``/``NUDGE_GATEWAY_URL`` (default
http://127.0.0.1:8080) and ``--api-key``/``NUDGE_API_KEY``. Exit status: 0, 1 when the
gateway refuses (an unknown message: 404; a malformed id: 422) or cannot be reached, 2
without an API key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
TIMEOUT_S = 15.0

# What a ledger status means, in the words of the timeline.
_STAGE = {
    "claimed": "claimed",
    "queued": "queued",
    "sent": "sent",
    "skipped": "skipped",
    "bounced": "bounced",
    "deferred": "deferred",
    "failed": "failed",
    "unknown": "unknown",
}


def register(areas: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``nudge message`` to the command line's parser."""
    command = areas.add_parser(
        "message",
        help="the story of one mail: where it is and how it got there",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("message_id", help="the message id (as SendTransactional answers it)")
    command.add_argument("--json", action="store_true", help="print the API's JSON answer")
    command.add_argument(
        "--gateway-url", default=os.environ.get("NUDGE_GATEWAY_URL", DEFAULT_GATEWAY)
    )
    command.add_argument("--api-key", default=os.environ.get("NUDGE_API_KEY", ""))
    command.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    if not arguments.api_key:
        sys.stderr.write("nudge message: no API key: --api-key or NUDGE_API_KEY\n")
        return 2
    url = (
        f"{arguments.gateway_url.rstrip('/')}/v1/messages/"
        f"{quote(arguments.message_id, safe='')}?explain=true"
    )
    try:
        answer = httpx.get(
            url, headers={"Authorization": f"Bearer {arguments.api_key}"}, timeout=TIMEOUT_S
        )
    except httpx.HTTPError as err:
        sys.stderr.write(f"nudge message: the gateway at {arguments.gateway_url}: {err}\n")
        return 1
    if answer.status_code != 200:
        sys.stderr.write(f"nudge message: {refusal(answer)}\n")
        return 1
    story = answer.json()
    if arguments.json:
        sys.stdout.write(json.dumps(story, indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(timeline(story)) + "\n")
    return 0


def refusal(answer: httpx.Response) -> str:
    """The gateway's problem+json in one line: its title, detail and the fields it names."""
    try:
        problem = answer.json()
    except ValueError:
        return f"HTTP {answer.status_code}"
    words = [f"{answer.status_code} {problem.get('title', '')}".strip()]
    if problem.get("detail"):
        words.append(str(problem["detail"]))
    for error in problem.get("errors") or []:
        words.append(f"{error.get('field', '')}: {error.get('message', '')}")
    return ": ".join(words)


def _when(value: str | None) -> str:
    if not value:
        return "-"
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _origin(story: dict[str, Any]) -> str:
    origin = story["origin"]
    words = [f"{origin['kind']} mail"]
    if origin["campaign_id"]:
        words.append(f"of campaign {origin['campaign_id']}")
    if origin["workflow_id"]:
        words.append(f"of workflow {origin['workflow_id']}")
    if origin["run_id"]:
        words.append(f"run {origin['run_id']}")
    if origin["step_id"]:
        words.append(f"step {origin['step_id']}")
    words.append(f"to contact {story['contact_id']}")
    return " ".join(words)


def _eligibility(story: dict[str, Any]) -> str:
    decision = story["eligibility"]
    purpose = decision["purpose"]
    if not decision["checked"]:
        return decision["reason"] or "not checked"
    if decision["eligible"]:
        return f"eligible ({purpose}: consent and suppression checked)"
    return f"not eligible ({purpose}): {decision['reason']}"


def timeline(story: dict[str, Any]) -> list[str]:
    """The story as lines ``time  stage  detail``, oldest first; the trace last."""
    rows: list[tuple[str, str, str]] = [
        (story.get("requested_at") or story.get("claimed_at") or "", "requested", _origin(story))
    ]
    decision = story["eligibility"]
    if decision["checked"] or decision["reason"]:
        rows.append((decision["at"] or "", "eligibility", _eligibility(story)))
    for stage in story["stages"]:
        detail = stage["detail"]
        if stage["status"] == "claimed":
            detail = f"attempt {stage['attempt']}" + (f": {detail}" if detail else "")
        if stage["next_attempt_at"]:
            detail += f"; next attempt at {_when(stage['next_attempt_at'])}"
        rows.append((stage["at"] or "", _STAGE.get(stage["status"], stage["status"]), detail))
    for event in story["tracking"]:
        who = f"by a machine ({event['machine_reason']})" if event["machine"] else "by a person"
        detail = f"{who}: {event['url']}" if event["url"] else who
        rows.append((event["at"] or "", event["kind"], detail))
    # Stable: a stage and its eligibility at the same instant keep their order.
    rows.sort(key=lambda r: datetime.fromisoformat(r[0].replace("Z", "+00:00")) if r[0] else _MIN)
    lines = [f"message {story['message_id']}: {story['status']}"]
    lines += [f"{_when(at):<24}  {stage:<12}  {detail}".rstrip() for at, stage, detail in rows]
    trace = story["trace"]
    if trace["trace_id"]:
        lines.append(f"{'trace':<24}  {trace['trace_id']}  {trace['url']}  ({trace['command']})")
    else:
        lines.append(f"{'trace':<24}  none recorded")
    return lines


_MIN = datetime.fromisoformat("0001-01-01T00:00:00+00:00")
