"""The gateway's segment routes over HTTP, in front of the real segmentation service: custom
segments (ETag, If-Match, merge patch), validate, counts, preview, member pages, explain,
the segments of a contact and overlap; every error a problem+json."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.integration.conftest import RunningService, Workspace, run_in_process
from tests.integration.gateway.conftest import new_workspace
from tests.integration.segmentation.queries_support import DAY, NOW, Order, Person, seed
from tests.integration.tracking.conftest import HttpService, run_http
from tests.support import free_port

PROBLEM = "application/problem+json"
NEWSLETTER = {"tag": "newsletter"}
TWICE = {"field": "orders", "op": "gte", "value": 2}


@pytest.fixture(scope="module")
async def segments_gateway(contacts_service: RunningService) -> AsyncIterator[HttpService]:
    from services.gateway.bootstrap import serve
    from services.gateway.config import Settings
    from services.segmentation.bootstrap import serve as serve_segmentation
    from services.segmentation.config import Settings as SegmentationSettings

    port = free_port()
    async with (
        run_in_process(serve_segmentation, SegmentationSettings(grpc_port=port), port) as seg,
        run_http(
            serve,
            Settings(
                bind_host="127.0.0.1",
                http_port=free_port(),
                contacts_addr=contacts_service.address,
                segmentation_addr=seg.address,
            ),
        ) as gateway,
    ):
        yield gateway


def client(gateway: HttpService, ws: Workspace) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=gateway.base_url,
        headers={"Authorization": f"Bearer {ws.api_key}"},
        timeout=15,
    )


@pytest.fixture
async def http(
    segments_gateway: HttpService, workspace: Workspace
) -> AsyncIterator[httpx.AsyncClient]:
    async with client(segments_gateway, workspace) as c:
        yield c


def problem(answer: httpx.Response, status: int) -> dict[str, object]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    body: dict[str, object] = answer.json()
    assert body["status"] == status
    return body


def error_fields(answer: httpx.Response) -> list[str]:
    return [str(e["field"]) for e in problem(answer, 422)["errors"]]  # type: ignore[attr-defined]


async def test_a_custom_segment_is_created_changed_with_if_match_and_deleted(
    http: httpx.AsyncClient,
) -> None:
    created = await http.post(
        "/v1/segments", json={"name": "Readers", "description": "d", "rule": NEWSLETTER}
    )
    assert created.status_code == 201, created.text
    segment = created.json()
    assert (segment["kind"], segment["version"], segment["rule"]) == ("custom", 1, NEWSLETTER)
    assert created.headers["etag"] == '"1"'
    assert created.headers["location"] == f"/v1/segments/{segment['id']}"
    got = await http.get(created.headers["location"])
    assert got.json() == segment and got.headers["etag"] == '"1"'

    patched = await http.patch(
        created.headers["location"],
        content=json.dumps({"rule": TWICE}),
        headers={"Content-Type": "application/merge-patch+json", "If-Match": '"1"'},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["rule"], patched.json()["version"]) == (TWICE, 2)
    assert patched.json()["name"] == "Readers" and patched.headers["etag"] == '"2"'
    plain = await http.patch(created.headers["location"], json={"name": "Reorderers"})
    assert (plain.json()["name"], plain.json()["version"]) == ("Reorderers", 3)
    stale = await http.patch(
        created.headers["location"], json={"description": "x"}, headers={"If-Match": '"1"'}
    )
    problem(stale, 409)
    problem(await http.delete(created.headers["location"], headers={"If-Match": '"2"'}), 409)
    deleted = await http.delete(created.headers["location"], headers={"If-Match": '"3"'})
    assert deleted.status_code == 204
    problem(await http.get(created.headers["location"]), 404)
    listed = await http.get("/v1/segments")
    assert [s["kind"] for s in listed.json()["segments"]] == ["built_in"] * 12


async def test_bad_segment_bodies_are_422_with_the_rule_path(http: httpx.AsyncClient) -> None:
    unknown_field = {"all": [NEWSLETTER, {"field": "total_spend", "op": "gte", "value": 1}]}
    assert all(
        f.startswith("rule.all[1]")
        for f in error_fields(
            await http.post("/v1/segments", json={"name": "x", "rule": unknown_field})
        )
    )
    wrong_type = {"field": "vip", "op": "eq", "value": "yes"}
    assert error_fields(await http.post("/v1/segments", json={"name": "x", "rule": wrong_type}))
    cycle_base = (await http.post("/v1/segments", json={"name": "A", "rule": NEWSLETTER})).json()
    user = await http.post(
        "/v1/segments", json={"name": "B", "rule": {"segment": cycle_base["id"]}}
    )
    assert user.status_code == 201
    cycle = await http.patch(
        f"/v1/segments/{cycle_base['id']}", json={"rule": {"segment": user.json()["id"]}}
    )
    assert all(f.startswith("rule") for f in error_fields(cycle))
    problem(await http.delete(f"/v1/segments/{cycle_base['id']}"), 409)  # referenced
    problem(await http.post("/v1/segments", json={"name": "a", "rule": NEWSLETTER}), 409)
    problem(await http.delete("/v1/segments/vip"), 409)
    problem(await http.patch("/v1/segments/vip", json={"name": "Stars"}), 409)
    assert error_fields(await http.post("/v1/segments", json={"name": "x", "rule": "vip"}))
    assert error_fields(await http.post("/v1/segments", json={"name": "x"}))
    assert error_fields(await http.post("/v1/segments", json={"name": "x", "rule": {}, "y": 1}))
    assert error_fields(await http.patch(f"/v1/segments/{cycle_base['id']}", json={}))
    assert error_fields(await http.patch(f"/v1/segments/{cycle_base['id']}", json={"rule": None}))
    not_json = await http.post(
        "/v1/segments",
        content=b'{"name": "x", "rule": {',
        headers={"Content-Type": "application/json"},
    )
    assert not_json.status_code in (400, 422) and not_json.headers["content-type"] == PROBLEM
    huge = {"any": [{"tag": f"t{i}"} for i in range(6000)]}
    problem(await http.post("/v1/segments", json={"name": "x", "rule": huge}), 413)


async def test_validate_and_count_an_ad_hoc_rule(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    await seed(workspace.id, Person(tags=["newsletter"]), Person(tags=["newsletter"]), Person())
    valid = await http.post("/v1/segments:validate", json={"rule": NEWSLETTER})
    assert valid.json() == {"valid": True, "violations": [], "normalized_rule": NEWSLETTER}
    invalid = await http.post("/v1/segments:validate", json={"rule": {"tag": 7}})
    assert invalid.status_code == 200
    assert invalid.json()["valid"] is False and invalid.json()["normalized_rule"] is None
    assert invalid.json()["violations"][0]["path"].startswith("rule")
    empty = await http.post("/v1/segments:validate", json={"rule": {}})  # violations as data
    assert empty.status_code == 200 and empty.json()["valid"] is False

    counted = await http.post("/v1/segments:count", json={"rule": NEWSLETTER})
    assert counted.json()["count"] == 2 and "segment_id" not in counted.json()
    assert error_fields(await http.post("/v1/segments:count", json={"rule": {"tag": 7}}))
    assert error_fields(
        await http.post(
            "/v1/segments:count", json={"rule": NEWSLETTER, "as_of": "1800-01-01T00:00:00Z"}
        )
    ) == ["as_of"]
    vip = await http.get("/v1/segments/vip/count", params={"as_of": NOW.isoformat()})
    assert vip.json()["count"] == 0

    # The rule builder's preview: the first members of a rule not saved, and all their number.
    previewed = await http.post("/v1/segments:preview", json={"rule": NEWSLETTER, "limit": 1})
    assert previewed.status_code == 200, previewed.text
    assert previewed.json()["count"] == 2 and len(previewed.json()["members"]) == 1
    assert "newsletter" in previewed.json()["members"][0]["tags"]
    assert error_fields(await http.post("/v1/segments:preview", json={"rule": {"tag": 7}}))
    assert error_fields(
        await http.post("/v1/segments:preview", json={"rule": NEWSLETTER, "limit": 101})
    ) == ["limit"]
    problem(await http.get(f"/v1/segments/{uuid.uuid4()}/count"), 404)


async def test_preview_members_pages_explain_and_a_contacts_segments(
    http: httpx.AsyncClient, workspace: Workspace
) -> None:
    people = await seed(
        workspace.id,
        *[
            Person(vip=True, first_name=f"V{i}", orders=[Order(NOW - DAY, 250, "EUR")])
            for i in range(5)
        ],
        Person(),
    )
    vips = sorted(p.contact_id for p in people if p.vip)
    preview = await http.get("/v1/segments/vip/preview", params={"limit": 2})
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert body["count"] == 5 and [m["contact_id"] for m in body["members"]] == vips[:2]
    assert body["members"][0]["total_spent"] == [{"amount_minor": 250, "currency": "EUR"}]
    assert error_fields(await http.get("/v1/segments/vip/preview", params={"limit": 0})) == [
        "query.limit"
    ]

    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 2}
    while True:
        page = (await http.get("/v1/segments/vip/members", params=params)).json()
        seen += [m["contact_id"] for m in page["members"]]
        if page["next_after"] is None:
            break
        params = {"limit": 2, "after": page["next_after"], "as_of": page["as_of"]}
    assert seen == vips
    assert error_fields(await http.get("/v1/segments/vip/members", params={"after": "x"})) == [
        "query.after"
    ]

    explained = await http.get(f"/v1/segments/vip/explain/{vips[0]}")
    assert explained.status_code == 200, explained.text
    assert explained.json()["member"] is True and explained.json()["root"]["held"] is True
    problem(await http.get(f"/v1/segments/vip/explain/{uuid.uuid4()}"), 404)

    mine = await http.get(f"/v1/contacts/{vips[0]}/segments")
    assert mine.status_code == 200, mine.text
    assert "vip" in [s["id"] for s in mine.json()["segments"]]
    problem(await http.get(f"/v1/contacts/{uuid.uuid4()}/segments"), 404)
    problem(await http.get("/v1/contacts/not-a-uuid/segments"), 404)


async def test_overlap(http: httpx.AsyncClient, workspace: Workspace) -> None:
    await seed(
        workspace.id,
        Person(vip=True, tags=["newsletter"]),
        Person(vip=True),
        Person(tags=["newsletter"]),
    )
    readers = (await http.post("/v1/segments", json={"name": "R", "rule": NEWSLETTER})).json()["id"]
    answer = await http.post("/v1/segments:overlap", json={"segment_ids": ["vip", readers]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["counts"] == [[2, 1], [1, 2]]
    assert (answer.json()["sizes"], answer.json()["union_count"]) == ([2, 2], 3)
    assert error_fields(await http.post("/v1/segments:overlap", json={"segment_ids": ["vip"]}))
    problem(
        await http.post("/v1/segments:overlap", json={"segment_ids": ["vip", str(uuid.uuid4())]}),
        404,
    )


async def test_another_workspaces_segments_and_contacts_are_not_found(
    http: httpx.AsyncClient,
    segments_gateway: HttpService,
    contacts_service: RunningService,
    workspace: Workspace,
) -> None:
    (person,) = await seed(workspace.id, Person(vip=True))
    mine = (await http.post("/v1/segments", json={"name": "Mine", "rule": NEWSLETTER})).json()["id"]
    other = await new_workspace(contacts_service)
    async with client(segments_gateway, other) as theirs:
        problem(await theirs.get(f"/v1/segments/{mine}"), 404)
        problem(await theirs.patch(f"/v1/segments/{mine}", json={"name": "Theirs"}), 404)
        problem(await theirs.delete(f"/v1/segments/{mine}"), 404)
        problem(await theirs.get(f"/v1/segments/{mine}/preview"), 404)
        problem(await theirs.get(f"/v1/contacts/{person.contact_id}/segments"), 404)
        problem(await theirs.get(f"/v1/segments/vip/explain/{person.contact_id}"), 404)
        assert (await theirs.get("/v1/segments/vip/count")).json()["count"] == 0
    problem(
        await httpx.AsyncClient(base_url=segments_gateway.base_url).get("/v1/segments/vip"), 401
    )
