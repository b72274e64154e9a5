"""Schemathesis hooks for test_openapi_conformance: what JSON Schema cannot say.

Three kinds of rule the document states in words only, because they depend on the server's
state or clock: a campaign's segment ids must name segments the workspace has, and
``page_token`` must come from a previous page (references to existing things); subjects and
texts must parse as templates; ``signed_up_at``, ``occurred_at`` and ``recorded_at`` must
not be in the future; custom attributes must be declared in the workspace first
(``attributes`` members, the ``attribute`` query parameter of ``GET /v1/contacts``);
a segment rule must be a rule of the rule language (the document says "object" and describes
the grammar in words) and an evaluation time ``as_of`` must lie in 1900-9000; a DKIM
``private_key_pem`` must be a PEM private key (RSA of 1024 bits or more, or Ed25519).
The server answers 422 with the field otherwise. For data schemathesis generates as *valid*
(positive mode) only, segment ids become the workspace's own, page tokens are dropped,
future instants move to the past, DKIM keys are left to delivery to generate, rules become
a valid rule, overlap's segment ids the
workspace's own, a preview's or test send's A/B variant 0 (the run's campaigns have
one) and its contact the sample contact (a random id names nobody), and bodies whose
templates do not parse are dropped, so that
a 422 for valid data still means a document looser than the server. Negative data is left
alone. An erasure of an existing contact erases a spare contact instead (``before_call``),
as a revocation of the run's own key revokes a spare key.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import schemathesis
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_templates = ImmutableSandboxedEnvironment(autoescape=False)


@functools.cache
def segment_ids() -> tuple[str, ...]:
    """The built-in segment ids: custom ones may be deleted later in the run (the stateful
    phase deletes what it created), and a campaign naming a deleted one is rightly 422."""
    answer = httpx.get(
        f"{os.environ['NUDGE_OPENAPI_GATEWAY']}/v1/segments",
        headers={"Authorization": f"Bearer {os.environ['NUDGE_OPENAPI_API_KEY']}"},
        timeout=15,
    )
    answer.raise_for_status()
    return tuple(s["id"] for s in answer.json()["segments"] if s["kind"] == "built_in")


def _creates_campaign(case: Any) -> bool:
    return bool(case.operation.method.upper() == "POST" and case.operation.path == "/v1/campaigns")


SEGMENT_IDS_BODIES = (("POST", "/v1/campaigns"), ("POST", "/v1/segments:overlap"))
RULE_BODIES = frozenset(
    {
        ("POST", "/v1/segments"),
        ("PATCH", "/v1/segments/{segment_id}"),
        ("POST", "/v1/segments:validate"),
        ("POST", "/v1/segments:count"),
        ("POST", "/v1/segments:preview"),
    }
)
# Any valid rule: a random JSON object is almost never one (the rule language is a grammar
# JSON Schema does not spell out; the document describes it in words).
VALID_RULE = {"all": [{"tag": "newsletter"}, {"field": "orders", "op": "gte", "value": 2}]}
EARLIEST_AS_OF, LATEST_AS_OF = datetime(1900, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)


def _names_segments(case: Any) -> bool:
    return (case.operation.method.upper(), case.operation.path) in SEGMENT_IDS_BODIES


def _valid_rule(case: Any) -> None:
    """A positive case's rule becomes a valid one (its shape is the document's "object")."""
    operation = (case.operation.method.upper(), case.operation.path)
    if operation in RULE_BODIES and isinstance(case.body, dict) and "rule" in case.body:
        case.body["rule"] = dict(VALID_RULE)


def _as_of_in_range(case: Any) -> None:
    """An evaluation time the service takes (1900-01-01 to 9000-01-01, said in words)."""
    for holder in (case.query, case.body):
        if not isinstance(holder, dict) or not isinstance(holder.get("as_of"), str):
            continue
        try:
            instant = datetime.fromisoformat(holder["as_of"].replace("z", "Z"))
        except ValueError:
            continue
        if instant.tzinfo is None or not EARLIEST_AS_OF <= instant < LATEST_AS_OF:
            holder["as_of"] = PAST


def _positive(case: Any) -> bool:
    return bool(case.meta is not None and case.meta.generation.mode.is_positive)


def _parses(text: Any) -> bool:
    try:
        _templates.parse(text)
    except (TemplateError, RecursionError):
        return False
    return True


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    if _campaign_body(case) and _positive(case) and isinstance(case.body, dict):
        texts = [case.body.get(f, "") for f in ("subject", "body_text", "body_html")]
        texts.append(case.body.get("body_markdown", ""))
        ab_test = case.body.get("ab_test")
        if isinstance(ab_test, dict) and isinstance(ab_test.get("subjects"), list):
            texts.extend(ab_test["subjects"])
        return all(_parses(t) for t in texts)
    return True


CAMPAIGN = "/v1/campaigns/{campaign_id}"
CAMPAIGN_BODIES = frozenset({("POST", "/v1/campaigns"), ("PATCH", CAMPAIGN)})


def _campaign_body(case: Any) -> bool:
    """Bodies with a campaign's templates (subject, bodies, A/B subjects): they must parse."""
    return (case.operation.method.upper(), case.operation.path) in CAMPAIGN_BODIES


def _campaign_references(case: Any) -> None:
    """Excluded segments become none (the workspace's ids are not known to the document, and
    one also chosen is refused); a send time becomes one to come (a time in the past, or more
    than a year away, is refused: said in words)."""
    if not isinstance(case.body, dict):
        return
    if _campaign_body(case) and "exclude_segment_ids" in case.body:
        case.body["exclude_segment_ids"] = []
    if case.operation.method.upper() == "PATCH" and case.operation.path == CAMPAIGN:
        # A patch is checked merged with the stored draft: an audience or a body it empties
        # or doubles (text and Markdown) depends on what is stored, said in words.
        for member in ("segment_ids", "tags_any", "body_text", "body_html", "body_markdown"):
            case.body.pop(member, None)
        if not case.body:
            case.body["local_time"] = False
    if case.operation.path == "/v1/campaigns/{campaign_id}/send" and case.body.get("send_at"):
        case.body["send_at"] = (datetime.now(UTC) + timedelta(days=1)).isoformat()


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if not _positive(case):
        return case
    if _names_segments(case) and isinstance(case.body, dict):
        wanted = case.body.get("segment_ids")
        if isinstance(wanted, list) and wanted:
            known = segment_ids()
            case.body["segment_ids"] = list(known[: min(len(wanted), len(known))])
    _valid_rule(case)
    _as_of_in_range(case)
    _campaign_references(case)
    if case.operation.path == "/v1/dkim-keys/{domain}" and isinstance(case.body, dict):
        case.body.pop("private_key_pem", None)  # random text is never a key: delivery makes one
    if isinstance(case.query, dict):
        case.query.pop("page_token", None)
        case.query.pop("attribute", None)
    _no_future(case.body)
    _no_attributes(case.body)
    _valid_workflow(case)
    if case.operation.path in VARIANT_BODIES and isinstance(case.body, dict):
        case.body["variant"] = 0  # the campaigns made here have no A/B test: one variant
        # A random contact id names nobody: the 422 naming `contact_id` is right, but
        # schemathesis reads a valid-looking body refused as a broken promise (ST202). The
        # sample contact.
        case.body["contact_id"] = ""
    return case


# A workflow definition the triggers service publishes: a random object is almost never one
# (the format's grammar is described in words, docs/triggers.md).
VALID_WORKFLOW = {
    "format": "nudge.workflow/v1",
    "name": "Cart reminder",
    "trigger": {"event": "cart_updated", "filter": {"min_items": 1}},
    "entry": {"concurrency": "per_key", "key": "cart_id", "on_retrigger": "restart"},
    "exit_on": [{"event": "order_placed"}],
    "steps": [
        {"id": "wait", "type": "wait", "duration": "PT3H"},
        {
            "id": "reminder",
            "type": "send",
            "message": {"subject": "Your cart at {{ workspace.name }}", "body_text": "Hi!"},
        },
    ],
}
WORKFLOW_BODIES = frozenset({("POST", "/v1/workflows"), ("PUT", "/v1/workflows/{workflow_id}")})


def _valid_workflow(case: Any) -> None:
    """A positive case's definition becomes a valid one, a template id a template's, a test
    run's recipient an address (said in words: the service checks it is one)."""
    operation = (case.operation.method.upper(), case.operation.path)
    if operation == ("POST", "/v1/workflows/import"):
        case.body = json.loads(json.dumps(VALID_WORKFLOW))
        return
    if not isinstance(case.body, dict):
        return
    if operation in WORKFLOW_BODIES and "definition" in case.body:
        case.body["definition"] = json.loads(json.dumps(VALID_WORKFLOW))
    if operation == ("POST", "/v1/workflows") and "template_id" in case.body:
        case.body["template_id"] = "abandoned_cart"
    if operation == ("POST", "/v1/workflows/{workflow_id}/test-runs"):
        case.body["recipient"] = "manager@example.com"


VARIANT_BODIES = frozenset(
    {"/v1/campaigns/{campaign_id}/preview", "/v1/campaigns/{campaign_id}/test-send"}
)


def _no_attributes(value: Any) -> None:
    """Every ``attributes`` object in ``value`` emptied: the workspace declared none."""
    if isinstance(value, list):
        for item in value:
            _no_attributes(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key == "attributes" and isinstance(item, dict):
                item.clear()
            else:
                _no_attributes(item)


PAST = "2024-01-01T00:00:00Z"


def _no_future(value: Any) -> None:
    """Every ``signed_up_at``/``occurred_at``/``recorded_at`` in ``value`` later than now:
    ``PAST``."""
    if isinstance(value, list):
        for item in value:
            _no_future(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in ("signed_up_at", "occurred_at", "recorded_at") and isinstance(item, str):
                try:
                    instant = datetime.fromisoformat(item.replace("z", "Z"))
                except ValueError:
                    continue
                if instant.tzinfo is not None and instant > datetime.now(UTC):
                    value[key] = PAST
            else:
                _no_future(item)


KEY_ACTIONS = ("/v1/api-keys/{key_id}:revoke", "/v1/api-keys/{key_id}:rotate")
ERASURE = "/v1/contacts/{contact_id}/erasure"


def _call(method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method,
        f"{os.environ['NUDGE_OPENAPI_GATEWAY']}{path}",
        headers={"Authorization": f"Bearer {os.environ['NUDGE_OPENAPI_API_KEY']}"},
        timeout=15,
        **kwargs,
    )


def spare_contact_id() -> str:
    """A new contact of the workspace, made to be erased (one per erasure: an erased contact
    is gone)."""
    answer = _call(
        "POST", "/v1/contacts", json={"email": f"spare{uuid.uuid4().hex[:24]}@example.com"}
    )
    assert answer.status_code == 201, f"a spare contact: {answer.status_code} {answer.text}"
    return str(answer.json()["id"])


@functools.cache
def spare_key_id() -> str:
    answer = httpx.post(
        f"{os.environ['NUDGE_OPENAPI_GATEWAY']}/v1/api-keys",
        json={"name": "schemathesis spare"},
        headers={"Authorization": f"Bearer {os.environ['NUDGE_OPENAPI_API_KEY']}"},
        timeout=15,
    )
    answer.raise_for_status()
    return str(answer.json()["key"]["key_id"])


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    """The run's own key must outlive it: revoked or rotated away (the stateful phase finds
    its id in ``GET /v1/api-keys``), every later call is rightly a 401. Such a call goes to
    a spare key of the workspace instead."""
    own_key_id = os.environ["NUDGE_OPENAPI_API_KEY"].split("_")[1]
    parameters = case.path_parameters
    if case.operation.path == ERASURE and isinstance(parameters, dict):
        _spare_the_contact(parameters)
    if (
        case.operation.path in KEY_ACTIONS
        and isinstance(parameters, dict)
        and parameters.get("key_id") == own_key_id
    ):
        parameters["key_id"] = spare_key_id()


def _spare_the_contact(parameters: dict[str, Any]) -> None:
    """An erasure removes the contact for good, by POST: schemathesis counts only a DELETE as
    removing what a link reads, so after erasing a contact that ``POST /v1/contacts`` created
    in the stateful phase it read it back, got 404 and reported ST302 (a created resource
    not found). An erasure of an existing contact therefore erases a spare one instead; the
    route is exercised all the same (with an id that exists), and unknown or malformed ids
    are left as they are (404, 422)."""
    contact_id = parameters.get("contact_id")
    if not isinstance(contact_id, str) or not contact_id or "/" in contact_id:
        return
    try:
        exists = _call("GET", f"/v1/contacts/{quote(contact_id, safe='')}").status_code == 200
    except httpx.HTTPError:
        return
    if exists:
        parameters["contact_id"] = spare_contact_id()


DEGRADED_HEALTH = "degraded-health.jsonl"


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """A 503 from ``/healthz`` is schemathesis's "server error", and its report cuts the body
    short: keep the whole report (which check failed, and why) for the test's message, in
    the run's working directory."""
    if case.operation.path == "/healthz" and response.status_code == 503:
        with open(DEGRADED_HEALTH, "a", encoding="utf-8") as out:
            out.write(response.text + "\n")
