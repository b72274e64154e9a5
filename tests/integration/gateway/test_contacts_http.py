"""The contacts API of issue 12 over real HTTP, in front of the real contacts service: merge
patches, deletion, lists with filters and pages, upsert by external id, tags one by one and
in bulk, score, custom attributes, and each kind of bad input answered as problem+json."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningService, Workspace
from tests.integration.gateway.conftest import MAX_BODY_BYTES, new_workspace
from tests.integration.tracking.conftest import HttpService
from tests.support import unique

PROBLEM = "application/problem+json"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
async def http(gateway: HttpService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=15) as client:
        yield client


def auth(workspace: Workspace, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {workspace.api_key}", **more}


async def create(http: httpx.AsyncClient, ws: Workspace, **fields: Any) -> dict[str, Any]:
    body = {"email": f"{unique('c')}@example.com", **fields}
    answer = await http.post("/v1/contacts", json=body, headers=auth(ws))
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def fields_of(answer: httpx.Response) -> list[str]:
    assert answer.headers["content-type"] == PROBLEM, answer.text
    return [e["field"] for e in answer.json()["errors"]]


async def test_a_merge_patch_sets_given_members_and_null_removes(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    declared = await http.put(
        "/v1/attributes/city", json={"type": "string"}, headers=auth(workspace)
    )
    assert declared.status_code == 201, declared.text
    contact = await create(
        http,
        workspace,
        external_id=unique("cust"),
        first_name="Ada",
        birthday="--12-10",
        attributes={"city": "Rome"},
        tags=["a"],
    )
    url = f"/v1/contacts/{contact['id']}"
    patched = await http.patch(
        url,
        content=b'{"first_name": "Bo", "external_id": null, "birthday": null,'
        b' "attributes": {"city": null}, "tags": ["x", "y"]}',
        headers=auth(workspace, **MERGE_PATCH),
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["first_name"], body["external_id"], body["birthday"]) == ("Bo", None, None)
    assert (body["attributes"], body["tags"], body["version"]) == ({}, ["x", "y"], 2)
    same = await http.patch(
        url, content=b'{"first_name": "Bo"}', headers=auth(workspace, **MERGE_PATCH)
    )
    assert same.json()["version"] == 2  # nothing changed: no new version
    nothing = await http.patch(
        url, content=b'{"attributes": {}}', headers=auth(workspace, **MERGE_PATCH)
    )
    assert (nothing.status_code, nothing.json()["version"]) == (200, 2)


async def test_bad_patches_are_refused_with_the_field_and_change_nothing(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    contact = await create(http, workspace, first_name="Ada")
    other = await create(http, workspace)
    url = f"/v1/contacts/{contact['id']}"
    headers = auth(workspace, **MERGE_PATCH)
    cases: list[tuple[bytes, int, list[str] | None]] = [
        (b"{}", 422, ["body"]),
        (b'{"email": null}', 422, ["email"]),
        (b'{"email": "ada.example.com"}', 422, ["email"]),
        (b'{"vip": "yes"}', 422, ["vip"]),
        (b'{"attributes": {"shoe": "42"}}', 422, ["attributes.shoe"]),
        (b'{"first_name": "A", "nope": 1}', 422, ["nope"]),
        (b"not json", 400, None),
        (f'{{"email": "{other["email"].upper()}"}}'.encode(), 409, None),
    ]
    for raw, status, fields in cases:
        answer = await http.patch(url, content=raw, headers=headers)
        assert answer.status_code == status, (raw, answer.text)
        if fields is not None:
            assert fields_of(answer) == fields, raw
    reason = await http.patch(url, content=b'{"email": "ada.example.com"}', headers=headers)
    assert "@-sign" in reason.json()["errors"][0]["message"]
    now = await http.get(url, headers=auth(workspace))
    assert (now.json()["first_name"], now.json()["version"]) == ("Ada", 1)
    big = await http.patch(
        url, content=b'{"first_name": "' + b"x" * MAX_BODY_BYTES + b'"}', headers=headers
    )
    assert big.status_code == 413


async def test_another_workspace_gets_404_for_every_route_of_a_contact(
    http: httpx.AsyncClient, workspace: Workspace, contacts_service: RunningService
) -> None:
    contact = await create(http, workspace)
    other = await new_workspace(contacts_service)
    url = f"/v1/contacts/{contact['id']}"
    answers = [
        await http.patch(url, content=b'{"first_name": "X"}', headers=auth(other, **MERGE_PATCH)),
        await http.delete(url, headers=auth(other)),
        await http.post(f"{url}/tags", json={"add": ["x"]}, headers=auth(other)),
        await http.post(f"{url}/score", json={"delta": 1}, headers=auth(other)),
    ]
    assert [a.status_code for a in answers] == [404] * 4
    assert (await http.get(url, headers=auth(workspace))).json()["version"] == 1


async def test_delete_removes_the_contact(http: httpx.AsyncClient, workspace: Workspace) -> None:
    contact = await create(http, workspace, consents=["marketing"])
    url = f"/v1/contacts/{contact['id']}"
    assert (await http.delete(url, headers=auth(workspace))).status_code == 204
    assert (await http.get(url, headers=auth(workspace))).status_code == 404
    assert (await http.delete(url, headers=auth(workspace))).status_code == 404


async def test_list_filters_and_pages(http: httpx.AsyncClient, workspace: Workspace) -> None:
    made = [
        await create(http, workspace, first_name=f"Page{n}", tags=["p"], vip=n == 0)
        for n in range(5)
    ]
    await create(http, workspace, first_name="Other")
    seen: list[str] = []
    params: dict[str, Any] = {"tags_all": "p", "page_size": 2}
    while True:
        page = await http.get("/v1/contacts", params=params, headers=auth(workspace))
        assert page.status_code == 200, page.text
        seen += [c["id"] for c in page.json()["contacts"]]
        if not page.json()["next_page_token"]:
            break
        params["page_token"] = page.json()["next_page_token"]
    assert seen == [c["id"] for c in made]
    vip = await http.get("/v1/contacts", params={"vip": "true"}, headers=auth(workspace))
    assert [c["id"] for c in vip.json()["contacts"]] == [made[0]["id"]]
    found = await http.get("/v1/contacts", params={"q": "page3"}, headers=auth(workspace))
    assert [c["first_name"] for c in found.json()["contacts"]] == ["Page3"]
    never = await http.get(
        "/v1/contacts", params={"consent": "marketing:never_asked", "q": "oth"},
        headers=auth(workspace),
    )  # fmt: skip
    assert [c["first_name"] for c in never.json()["contacts"]] == ["Other"]
    bad = await http.get(
        "/v1/contacts",
        params={"tags_all": "q", "page_token": params["page_token"]},
        headers=auth(workspace),
    )
    assert (bad.status_code, fields_of(bad)) == (422, ["query.page_token"])
    bad = await http.get(
        "/v1/contacts", params={"attribute": "undeclared:1"}, headers=auth(workspace)
    )
    assert (bad.status_code, fields_of(bad)) == (422, ["query.attribute"])
    bad = await http.get("/v1/contacts", params={"page_size": 0}, headers=auth(workspace))
    assert bad.status_code == 422


async def test_upsert_by_external_id_is_201_then_200(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    url = f"/v1/contacts/by-external-id/{unique('cust')}"
    email = f"{unique('up')}@example.com"
    first = await http.put(url, json={"email": email, "first_name": "Ada"}, headers=auth(workspace))
    assert first.status_code == 201, first.text
    again = await http.put(url, json={"email": email, "last_name": "L"}, headers=auth(workspace))
    assert again.status_code == 200
    body = again.json()
    assert (body["id"], body["first_name"], body["last_name"]) == (
        first.json()["id"],
        "Ada",
        "L",
    )
    bad = await http.put(url, json={"email": "no-at-sign"}, headers=auth(workspace))
    assert (bad.status_code, fields_of(bad)) == (422, ["email"])


async def test_tags_one_by_one_and_in_bulk(http: httpx.AsyncClient, workspace: Workspace) -> None:
    a = await create(http, workspace, first_name="Bulk", tags=["x"])
    await create(http, workspace, first_name="Bulk")
    await create(http, workspace, first_name="Elsewhere")
    one = await http.post(
        f"/v1/contacts/{a['id']}/tags", json={"add": ["y"], "remove": ["x"]},
        headers=auth(workspace),
    )  # fmt: skip
    assert (one.status_code, one.json()["changed"], one.json()["contact"]["tags"]) == (
        200,
        True,
        ["y"],
    )
    empty = await http.post(f"/v1/contacts/{a['id']}/tags", json={}, headers=auth(workspace))
    assert empty.status_code == 422
    body = {"filter": {"query": "bulk"}, "add": ["seen"]}
    bulk = await http.post("/v1/contacts/tags:bulk", json=body, headers=auth(workspace))
    assert bulk.status_code == 200, bulk.text
    assert bulk.json() == {"matched": 2, "changed": 2}
    again = await http.post("/v1/contacts/tags:bulk", json=body, headers=auth(workspace))
    assert again.json() == {"matched": 2, "changed": 0}
    bad = await http.post(
        "/v1/contacts/tags:bulk",
        json={"filter": {"contact_ids": ["nope"]}, "add": ["Bad Tag"]},
        headers=auth(workspace),
    )
    assert (bad.status_code, sorted(fields_of(bad))) == (422, ["add[0]", "filter.contact_ids[0]"])


async def test_score_with_an_idempotency_key_header(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    contact = await create(http, workspace)
    url = f"/v1/contacts/{contact['id']}/score"
    key = auth(workspace, **{"Idempotency-Key": "visit-1"})
    first = await http.post(url, json={"delta": 7}, headers=key)
    assert first.json() == {"score": 7, "version": 2, "duplicate": False}
    replay = await http.post(url, json={"delta": 7}, headers=key)
    assert replay.json() == {"score": 7, "version": 2, "duplicate": True}
    reused = await http.post(url, json={"delta": 8}, headers=key)
    assert reused.status_code == 409
    zero = await http.post(url, json={"delta": 0}, headers=auth(workspace))
    assert (zero.status_code, fields_of(zero)) == (422, ["delta"])
    huge = await http.post(url, json={"delta": 2**63 - 1}, headers=auth(workspace))
    assert (huge.status_code, fields_of(huge)) == (422, ["delta"])
    beyond = await http.post(url, json={"delta": 2**63}, headers=auth(workspace))
    assert (beyond.status_code, fields_of(beyond)) == (422, ["delta"])
    text = await http.post(url, json={"delta": "5"}, headers=auth(workspace))
    assert (text.status_code, fields_of(text)) == (422, ["delta"])


async def test_tags_with_an_idempotency_key_header(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    contact = await create(http, workspace)
    url = f"/v1/contacts/{contact['id']}/tags"
    key = auth(workspace, **{"Idempotency-Key": "tag-1"})
    first = await http.post(url, json={"add": ["vip"]}, headers=key)
    assert (first.json()["changed"], first.json()["duplicate"], first.json()["version"]) == (
        True,
        False,
        2,
    )
    await http.post(url, json={"remove": ["vip"]}, headers=auth(workspace))
    replay = await http.post(url, json={"add": ["vip"]}, headers=key)
    body = replay.json()
    assert (body["changed"], body["duplicate"], body["version"]) == (False, True, 2)
    assert (body["contact"]["tags"], body["contact"]["version"]) == ([], 3)
    reused = await http.post(url, json={"add": ["gold"]}, headers=key)
    assert reused.status_code == 409
    in_body = await http.post(url, json={"add": ["gold"], "idempotency_key": "tag-2"}, headers=key)
    assert (in_body.status_code, in_body.json()["duplicate"]) == (200, False)


async def test_attributes_are_declared_once_with_a_type(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    put = await http.put(
        "/v1/attributes/spent", json={"type": "number", "description": "Total"},
        headers=auth(workspace),
    )  # fmt: skip
    assert put.status_code == 201, put.text
    again = await http.put("/v1/attributes/spent", json={"type": "number"}, headers=auth(workspace))
    assert again.status_code == 200
    other = await http.put("/v1/attributes/spent", json={"type": "date"}, headers=auth(workspace))
    assert other.status_code == 409
    assert "cannot change" in other.json()["detail"]
    listed = await http.get("/v1/attributes", headers=auth(workspace))
    assert [(a["name"], a["type"]) for a in listed.json()["attributes"]] == [("spent", "number")]
    one = await http.get("/v1/attributes/spent", headers=auth(workspace))
    assert one.json()["name"] == "spent"
    assert (await http.get("/v1/attributes/none", headers=auth(workspace))).status_code == 404
    bad = await http.put("/v1/attributes/Bad-Name", json={"type": "x"}, headers=auth(workspace))
    assert (bad.status_code, sorted(fields_of(bad))) == (422, ["path.name", "type"])
    mistyped = await http.post(
        "/v1/contacts",
        json={"email": f"{unique('t')}@example.com", "attributes": {"spent": "lots"}},
        headers=auth(workspace),
    )
    assert (mistyped.status_code, fields_of(mistyped)) == (422, ["attributes.spent"])
    assert "decimal" in mistyped.json()["errors"][0]["message"]


async def test_a_malformed_email_gets_its_precise_reason(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    for address, reason in (
        ("ada.example.com", "must have an @-sign"),
        ("ada@example", "should have a period"),
        ("ada@x.test", "special-use or reserved name"),
    ):
        answer = await http.post("/v1/contacts", json={"email": address}, headers=auth(workspace))
        assert (answer.status_code, fields_of(answer)) == (422, ["email"])
        assert reason in answer.json()["errors"][0]["message"], address
    first = await create(http, workspace)
    twice = await http.post(
        "/v1/contacts", json={"email": first["email"].upper()}, headers=auth(workspace)
    )
    assert twice.status_code == 409


async def test_if_match_refuses_a_patch_of_a_contact_changed_meanwhile(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    contact = await create(http, workspace, first_name="Ada")
    url = f"/v1/contacts/{contact['id']}"
    etag = (await http.get(url, headers=auth(workspace))).headers["etag"]
    assert etag == '"1"'
    first = await http.patch(
        url,
        content=b'{"first_name": "Bo"}',
        headers=auth(workspace, **MERGE_PATCH, **{"If-Match": etag}),
    )
    assert (first.status_code, first.headers["etag"]) == (200, '"2"')
    stale = await http.patch(
        url,
        content=b'{"first_name": "Cy"}',
        headers=auth(workspace, **MERGE_PATCH, **{"If-Match": etag}),
    )
    assert (stale.status_code, stale.headers["content-type"]) == (409, PROBLEM)
    assert "version 2" in stale.json()["detail"]
    assert (await http.get(url, headers=auth(workspace))).json()["first_name"] == "Bo"
