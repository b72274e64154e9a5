"""Shop events through the gateway over real HTTP, contacts, PostgreSQL and Kafka: a key
reused for another event, and the batch route."""

from __future__ import annotations

import collections
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Workspace
from tests.integration.contacts.shop_topic import claimed_keys, event_ids_until_marker
from tests.integration.tracking.conftest import HttpService
from tests.support import unique

PROBLEM = "application/problem+json"


@pytest.fixture
async def http(gateway: HttpService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
        yield client


def auth(workspace: Workspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {workspace.api_key}"}


async def new_contact(http: httpx.AsyncClient, workspace: Workspace) -> dict[str, Any]:
    created = await http.post(
        "/v1/contacts", json={"email": f"{unique('ada')}@example.com"}, headers=auth(workspace)
    )
    assert created.status_code == 201, created.text
    contact: dict[str, Any] = created.json()
    return contact


def order(key: str, contact: dict[str, Any], order_id: str, **data: Any) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "contact": {"id": contact["id"]},
        "type": "order_placed",
        "data": {"order_id": order_id, **data},
    }


async def test_a_key_reused_for_another_event_is_409_naming_the_key(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    ada = await new_contact(http, workspace)
    key = unique("order")
    first = await http.post("/v1/events", json=order(key, ada, "o-1"), headers=auth(workspace))
    assert first.status_code == 202, first.text

    conflict = await http.post(
        "/v1/events",
        json={"idempotency_key": key, "contact": {"id": ada["id"]}, "type": "signed_up"},
        headers=auth(workspace),
    )
    assert (conflict.status_code, conflict.headers["content-type"]) == (409, PROBLEM)
    assert key in conflict.json()["detail"]

    again = await http.post(
        "/v1/events",
        json={**order(key, ada, "o-1"), "contact": {"email": ada["email"]}},
        headers=auth(workspace),
    )
    assert again.status_code == 202
    assert again.json() == {**first.json(), "duplicate": True}


async def test_a_batch_answers_each_event_and_queues_only_the_accepted_once(
    http: httpx.AsyncClient, workspace: Workspace, infra: dict[str, str]
) -> None:
    ada = await new_contact(http, workspace)
    earlier = unique("earlier")
    held = await http.post("/v1/events", json=order(earlier, ada, "o-0"), headers=auth(workspace))
    keys = [unique(f"k{n}") for n in range(5)]
    events = [
        order(keys[0], ada, "o-1"),  # accepted
        order(keys[1], ada, "o-2", total={"amount_minor": 100, "currency": "euro"}),  # invalid
        {**order(keys[2], ada, "o-3"), "contact": {"external_id": "nobody"}},  # unknown contact
        order(keys[0], ada, "o-1"),  # the same as the first: duplicate
        order(earlier, ada, "o-9"),  # key used before for another event: conflict
        {"idempotency_key": keys[3], "contact": {"id": ada["id"]}, "type": "teleported"},
        order(keys[4], ada, "o-4"),  # accepted
    ]
    answer = await http.post("/v1/events:batch", json={"events": events}, headers=auth(workspace))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    results = body["results"]
    assert [(r["index"], r["status"]) for r in results] == [
        (0, "accepted"),
        (1, "invalid"),
        (2, "contact_not_found"),
        (3, "duplicate"),
        (4, "conflict"),
        (5, "invalid"),
        (6, "accepted"),
    ]
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 4)
    assert [e["field"] for e in results[1]["errors"]] == ["data.total.currency"]
    assert [e["field"] for e in results[5]["errors"]] == ["type"]
    assert results[3]["event_id"] == results[0]["event_id"]
    assert earlier in results[4]["detail"]
    assert results[4]["event_id"] == held.json()["event_id"]

    claimed = await claimed_keys(infra["DATABASE_URL"], workspace.id)
    assert claimed & set(keys) == {keys[0], keys[4]}

    marker = await http.post(
        "/v1/events", json=order(unique("marker"), ada, "o-m"), headers=auth(workspace)
    )
    marker_id = marker.json()["event_id"]
    seen = await event_ids_until_marker(infra["KAFKA_BOOTSTRAP_SERVERS"], ada["id"], marker_id)
    assert seen == collections.Counter(
        {
            held.json()["event_id"]: 1,
            results[0]["event_id"]: 1,
            results[6]["event_id"]: 1,
            marker_id: 1,
        }
    )


async def test_a_batch_of_more_than_1000_events_is_a_422_problem_and_writes_nothing(
    http: httpx.AsyncClient, workspace: Workspace, infra: dict[str, str]
) -> None:
    ada = await new_contact(http, workspace)
    events = [order(unique("k"), ada, "o") for _ in range(1001)]
    answer = await http.post("/v1/events:batch", json={"events": events}, headers=auth(workspace))
    assert (answer.status_code, answer.headers["content-type"]) == (422, PROBLEM)
    assert [e["field"] for e in answer.json()["errors"]] == ["events"]
    claimed = await claimed_keys(infra["DATABASE_URL"], workspace.id)
    assert not claimed & {e["idempotency_key"] for e in events}


async def test_a_batch_body_over_its_byte_limit_is_413_and_malformed_json_is_400(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    ada = await new_contact(http, workspace)
    huge = [order(unique("k"), ada, "o" * 190, cart_id="c" * 190) for _ in range(1000)]
    body = json.dumps({"events": huge * 3}).encode()
    assert len(body) > 1_048_576
    too_large = await http.post(
        "/v1/events:batch",
        content=body,
        headers={**auth(workspace), "Content-Type": "application/json"},
    )
    assert (too_large.status_code, too_large.headers["content-type"]) == (413, PROBLEM)

    malformed = await http.post(
        "/v1/events:batch",
        content=b'{"events": [',
        headers={**auth(workspace), "Content-Type": "application/json"},
    )
    assert (malformed.status_code, malformed.headers["content-type"]) == (400, PROBLEM)

    # Within the batch limit, though far above the single-event route's (4 KiB here).
    fits = json.dumps({"events": huge[:100]}).encode()
    assert len(fits) > 4096
    accepted = await http.post(
        "/v1/events:batch",
        content=fits,
        headers={**auth(workspace), "Content-Type": "application/json"},
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["accepted"] == 100


async def test_a_batch_of_only_invalid_events_still_needs_a_valid_key(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    """The gateway refuses invalid events itself; the key must be checked all the same."""
    body = {"events": [{}, {"type": "order"}]}
    bad = await http.post(
        "/v1/events:batch", json=body, headers={"authorization": "Bearer nk_nobody_secret"}
    )
    assert (bad.status_code, bad.headers["content-type"]) == (401, PROBLEM)
    good = await http.post("/v1/events:batch", json=body, headers=auth(workspace))
    assert good.status_code == 200
    assert [r["status"] for r in good.json()["results"]] == ["invalid", "invalid"]
