"""The console's sessions over real HTTP (issue 18): the gateway in front of the real
contacts service, sessions and the sign-in throttle in the session's Redis.

Each test's browser is an httpx client with a cookie jar, connecting from its own loopback
address (127.x.y.z), so that the per-address sign-in throttle of one test never counts
another's failures."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest

from tests.integration.conftest import RunningService, Workspace
from tests.integration.gateway.conftest import new_workspace
from tests.integration.tracking.conftest import HttpService
from tests.support import unique

PROBLEM = "application/problem+json"
PASSWORD = "correct horse battery staple"
Browser = Callable[[], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def browser(gateway: HttpService) -> Browser:
    @asynccontextmanager
    async def open_browser() -> AsyncIterator[httpx.AsyncClient]:
        address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        transport = httpx.AsyncHTTPTransport(local_address=address)
        async with httpx.AsyncClient(
            base_url=gateway.base_url, transport=transport, timeout=15
        ) as client:
            yield client

    return open_browser


@pytest.fixture
async def http(gateway: HttpService) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=15) as client:
        yield client


def new_email() -> str:
    return f"{unique('manager')}@example.com"


async def new_manager(http: httpx.AsyncClient, workspace: Workspace, role: str = "owner") -> str:
    """A manager of ``workspace`` with :data:`PASSWORD`, made with the workspace's API key."""
    email = new_email()
    answer = await http.post(
        "/v1/managers",
        json={"email": email, "password": PASSWORD, "role": role},
        headers={"Authorization": f"Bearer {workspace.api_key}"},
    )
    assert answer.status_code == 201, answer.text
    return email


async def sign_in(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> str:
    """Signs ``client`` in; its CSRF token."""
    answer = await client.post("/v1/session", json={"email": email, "password": password})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["csrf_token"])


async def test_signing_in_sets_a_strict_httponly_cookie_and_answers_who_and_the_csrf_token(
    http: httpx.AsyncClient, browser: Browser, workspace: Workspace
) -> None:
    email = await new_manager(http, workspace, "manager")
    async with browser() as client:
        answer = await client.post("/v1/session", json={"email": email, "password": PASSWORD})
        assert answer.status_code == 200, answer.text
        cookie = answer.headers["set-cookie"]
        name, _, rest = cookie.partition("=")
        assert name == "nudge_session"  # plain http: no __Host- prefix, no Secure
        attributes = {part.strip().lower() for part in rest.split(";")[1:]}
        assert {"httponly", "path=/", "samesite=strict"} <= attributes
        assert "secure" not in attributes
        body = answer.json()
        assert body["manager"]["email"] == email
        assert body["manager"]["role"] == "manager"
        assert body["workspace"] == {"id": workspace.id, "name": "Test shop"}
        who = await client.get("/v1/session")
        assert who.status_code == 200
        assert who.json()["csrf_token"] == body["csrf_token"]
        # Every /v1 route takes the cookie instead of a key, for the session's workspace.
        created = await client.post(
            "/v1/contacts",
            json={"email": new_email()},
            headers={"X-CSRF-Token": body["csrf_token"]},
        )
        assert created.status_code == 201, created.text
        assert created.json()["workspace_id"] == workspace.id
        # Renamed since sign-in (by anyone): the session answers the name of now.
        renamed = await http.patch(
            "/v1/workspace/settings",
            json={"name": "Bottega renamed"},
            headers={"Authorization": f"Bearer {workspace.api_key}"},
        )
        assert renamed.status_code == 200, renamed.text
        again = await client.get("/v1/session")
        assert again.json()["workspace"] == {"id": workspace.id, "name": "Bottega renamed"}


async def test_a_wrong_password_and_an_unknown_email_get_the_same_401(
    http: httpx.AsyncClient, browser: Browser, workspace: Workspace
) -> None:
    email = await new_manager(http, workspace)
    async with browser() as client:
        wrong = await client.post("/v1/session", json={"email": email, "password": "nope" * 4})
        unknown = await client.post(
            "/v1/session", json={"email": new_email(), "password": PASSWORD}
        )
        for answer in (wrong, unknown):
            assert answer.status_code == 401
            assert answer.headers["content-type"] == PROBLEM
            assert "set-cookie" not in answer.headers
        assert wrong.json() == unknown.json()
        assert (await client.get("/v1/session")).status_code == 401


async def test_sign_in_answers_429_after_five_failures_for_one_email_even_with_the_password(
    http: httpx.AsyncClient, browser: Browser, workspace: Workspace
) -> None:
    email = await new_manager(http, workspace)
    other = await new_manager(http, workspace)
    async with browser() as client:
        for _ in range(5):
            answer = await client.post(
                "/v1/session", json={"email": email, "password": "wrong password!"}
            )
            assert answer.status_code == 401
        blocked = await client.post("/v1/session", json={"email": email, "password": PASSWORD})
        assert blocked.status_code == 429
        assert blocked.headers["content-type"] == PROBLEM
        assert 0 < int(blocked.headers["retry-after"]) <= 900
        assert "set-cookie" not in blocked.headers
        # Another e-mail from the same address still signs in (below the address's limit).
        await sign_in(client, other)
    async with browser() as elsewhere:  # the e-mail's limit holds from any address
        again = await elsewhere.post("/v1/session", json={"email": email, "password": PASSWORD})
        assert again.status_code == 429


async def test_sign_in_answers_429_after_twenty_failures_from_one_address(
    http: httpx.AsyncClient, browser: Browser, workspace: Workspace
) -> None:
    email = await new_manager(http, workspace)
    async with browser() as client:
        for _ in range(20):
            answer = await client.post(
                "/v1/session", json={"email": new_email(), "password": PASSWORD}
            )
            assert answer.status_code == 401
        blocked = await client.post("/v1/session", json={"email": email, "password": PASSWORD})
        assert blocked.status_code == 429
    async with browser() as elsewhere:
        await sign_in(elsewhere, email)


async def test_a_cookie_request_that_changes_something_needs_its_own_sessions_csrf_token(
    http: httpx.AsyncClient, browser: Browser, workspace: Workspace
) -> None:
    email = await new_manager(http, workspace)
    async with browser() as client, browser() as other_client:
        token = await sign_in(client, email)
        other_token = await sign_in(other_client, email)
        assert other_token != token
        for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": other_token}):
            refused = await client.post(
                "/v1/contacts", json={"email": new_email()}, headers=headers
            )
            assert refused.status_code == 403, headers
            assert refused.headers["content-type"] == PROBLEM
        assert (await client.get("/v1/contacts")).status_code == 200  # reads need none
        accepted = await client.post(
            "/v1/contacts", json={"email": new_email()}, headers={"X-CSRF-Token": token}
        )
        assert accepted.status_code == 201, accepted.text
    # A bearer API key needs no CSRF token (no cookie is involved).
    with_key = await http.post(
        "/v1/contacts",
        json={"email": new_email()},
        headers={"Authorization": f"Bearer {workspace.api_key}"},
    )
    assert with_key.status_code == 201


async def test_a_viewer_may_read_but_not_change_anything(
    http: httpx.AsyncClient, browser: Browser, workspace: Workspace
) -> None:
    email = await new_manager(http, workspace, "viewer")
    async with browser() as client:
        token = await sign_in(client, email)
        assert (await client.get("/v1/contacts")).status_code == 200
        refused = await client.post(
            "/v1/contacts", json={"email": new_email()}, headers={"X-CSRF-Token": token}
        )
        assert refused.status_code == 403
        assert refused.headers["content-type"] == PROBLEM
        assert "viewer" in refused.json()["detail"]
    listed = await http.get(
        "/v1/contacts", headers={"Authorization": f"Bearer {workspace.api_key}"}
    )
    assert listed.json()["contacts"] == []  # nothing was written


async def test_only_the_owner_manages_managers_and_api_keys(
    http: httpx.AsyncClient, browser: Browser, workspace: Workspace
) -> None:
    manager = await new_manager(http, workspace, "manager")
    owner = await new_manager(http, workspace, "owner")
    async with browser() as client:
        token = await sign_in(client, manager)
        for path in ("/v1/managers", "/v1/api-keys"):
            assert (await client.get(path)).status_code == 403, path
        made = await client.post(
            "/v1/api-keys", json={"name": "mine"}, headers={"X-CSRF-Token": token}
        )
        assert made.status_code == 403
    async with browser() as client:
        token = await sign_in(client, owner)
        assert (await client.get("/v1/api-keys")).status_code == 200
        created = await client.post(
            "/v1/managers",
            json={"email": new_email(), "password": PASSWORD, "role": "viewer"},
            headers={"X-CSRF-Token": token},
        )
        assert created.status_code == 201, created.text
        team = await client.get("/v1/managers")
        assert {m["email"] for m in team.json()["managers"]} == {
            manager,
            owner,
            created.json()["email"],
        }


async def test_signing_out_ends_the_session_at_once_for_any_copy_of_the_cookie(
    http: httpx.AsyncClient, browser: Browser, workspace: Workspace
) -> None:
    email = await new_manager(http, workspace)
    async with browser() as client:
        token = await sign_in(client, email)
        stolen = client.cookies["nudge_session"]
        assert (await client.delete("/v1/session")).status_code == 403  # CSRF token needed
        out = await client.delete("/v1/session", headers={"X-CSRF-Token": token})
        assert out.status_code == 204
        assert 'nudge_session=""' in out.headers["set-cookie"]
        assert (await client.get("/v1/session")).status_code == 401
    async with browser() as replay:
        replay.cookies.set("nudge_session", stolen)
        assert (await replay.get("/v1/session")).status_code == 401
        assert (await replay.get("/v1/contacts")).status_code == 401


async def test_a_session_never_sees_another_workspaces_data(
    http: httpx.AsyncClient,
    browser: Browser,
    workspace: Workspace,
    contacts_service: RunningService,
) -> None:
    other = await new_workspace(contacts_service)
    theirs = await http.post(
        "/v1/contacts",
        json={"email": new_email()},
        headers={"Authorization": f"Bearer {other.api_key}"},
    )
    assert theirs.status_code == 201
    email = await new_manager(http, workspace)
    async with browser() as client:
        await sign_in(client, email)
        assert (await client.get(f"/v1/contacts/{theirs.json()['id']}")).status_code == 404
        listed = await client.get("/v1/contacts")
        assert theirs.json()["id"] not in [c["id"] for c in listed.json()["contacts"]]


async def test_a_removed_managers_session_ends_at_once(
    http: httpx.AsyncClient, browser: Browser, workspace: Workspace
) -> None:
    owner = await new_manager(http, workspace, "owner")
    viewer = await new_manager(http, workspace, "viewer")
    async with browser() as owner_client, browser() as viewer_client:
        token = await sign_in(owner_client, owner)
        await sign_in(viewer_client, viewer)
        assert (await viewer_client.get("/v1/contacts")).status_code == 200
        team = (await owner_client.get("/v1/managers")).json()["managers"]
        viewer_id = next(m["id"] for m in team if m["email"] == viewer)
        removed = await owner_client.delete(
            f"/v1/managers/{viewer_id}", headers={"X-CSRF-Token": token}
        )
        assert removed.status_code == 200, removed.text
        assert (await viewer_client.get("/v1/contacts")).status_code == 401
        assert (await viewer_client.get("/v1/session")).status_code == 401


async def test_a_demoted_manager_signs_in_again_and_gets_the_new_role(
    http: httpx.AsyncClient, browser: Browser, workspace: Workspace
) -> None:
    owner = await new_manager(http, workspace, "owner")
    manager = await new_manager(http, workspace, "manager")
    async with browser() as owner_client, browser() as manager_client:
        token = await sign_in(owner_client, owner)
        manager_token = await sign_in(manager_client, manager)
        team = (await owner_client.get("/v1/managers")).json()["managers"]
        manager_id = next(m["id"] for m in team if m["email"] == manager)
        changed = await owner_client.patch(
            f"/v1/managers/{manager_id}", json={"role": "viewer"}, headers={"X-CSRF-Token": token}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["role"] == "viewer"
        ended = await manager_client.post(
            "/v1/contacts", json={"email": new_email()}, headers={"X-CSRF-Token": manager_token}
        )
        assert ended.status_code == 401
        manager_token = await sign_in(manager_client, manager)
        assert (await manager_client.get("/v1/session")).json()["manager"]["role"] == "viewer"
        refused = await manager_client.post(
            "/v1/contacts", json={"email": new_email()}, headers={"X-CSRF-Token": manager_token}
        )
        assert refused.status_code == 403
        # The owner's own session is untouched.
        assert (await owner_client.get("/v1/managers")).status_code == 200


async def test_a_role_change_refused_with_problems(
    http: httpx.AsyncClient, browser: Browser, workspace: Workspace
) -> None:
    owner = await new_manager(http, workspace, "owner")
    manager = await new_manager(http, workspace, "manager")
    async with browser() as client:
        token = await sign_in(client, owner)
        me = (await client.get("/v1/session")).json()["manager"]["id"]
        csrf = {"X-CSRF-Token": token}
        last_owner = await client.patch(f"/v1/managers/{me}", json={"role": "viewer"}, headers=csrf)
        unknown = await client.patch(
            "/v1/managers/00000000-0000-4000-8000-000000000000",
            json={"role": "viewer"},
            headers=csrf,
        )
        bad_role = await client.patch(f"/v1/managers/{me}", json={"role": "admin"}, headers=csrf)
        bad_id = await client.patch("/v1/managers/nope", json={"role": "viewer"}, headers=csrf)
        for answer in (last_owner, unknown, bad_role, bad_id):
            assert answer.headers["content-type"] == PROBLEM, answer.text
        assert last_owner.status_code == 409
        assert "last owner" in last_owner.json()["detail"]
        assert unknown.status_code == 404
        assert bad_role.status_code == 422
        assert [e["field"] for e in bad_role.json()["errors"]] == ["role"]
        assert bad_id.status_code == 422
        assert (await client.get("/v1/session")).json()["manager"]["role"] == "owner"
    async with browser() as client:
        token = await sign_in(client, manager)
        team = await client.patch(
            f"/v1/managers/{me}", json={"role": "viewer"}, headers={"X-CSRF-Token": token}
        )
        assert team.status_code == 403  # only an owner changes roles
