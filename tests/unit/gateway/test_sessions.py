"""The console session's pure rules (services/gateway/sessions.py): the cookie's name and
attributes by scheme, the CSRF check, and what each role may do. The sessions themselves,
in Redis behind the real gateway: tests/integration/gateway/test_session_http.py."""

from __future__ import annotations

import pytest
from fastapi import Request, Response

from services.gateway import sessions


def request(scheme: str, method: str = "GET", headers: dict[str, str] | None = None) -> Request:
    return Request(
        {
            "type": "http",
            "scheme": scheme,
            "method": method,
            "path": "/v1/contacts",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "server": ("nudge.example", 443 if scheme == "https" else 80),
        }
    )


def session(token: str = "the-token") -> sessions.Session:
    return sessions.Session("m", "a@example.com", "owner", "w", "Shop", token, 0.0, 1.0)


def cookie_attributes(response: Response) -> tuple[str, set[str]]:
    header = response.headers["set-cookie"]
    name = header.split("=", 1)[0]
    return name, {part.strip().lower() for part in header.split(";")[1:]}


def test_over_https_the_cookie_is_host_only_secure_httponly_and_strict() -> None:
    response = Response()
    sessions.set_cookie(request("https"), response, "id")
    name, attributes = cookie_attributes(response)
    assert name == "__Host-nudge_session"
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= attributes
    assert not any(a.startswith("domain") for a in attributes)  # __Host- forbids a Domain


def test_over_plain_http_the_cookie_has_no_prefix_and_no_secure_flag() -> None:
    response = Response()
    sessions.set_cookie(request("http"), response, "id")
    name, attributes = cookie_attributes(response)
    assert name == "nudge_session"
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes


def test_a_https_request_reads_only_the_prefixed_cookie() -> None:
    plain = request("https", headers={"cookie": f"nudge_session={'x' * 43}"})
    assert sessions.cookie_of(plain) is None
    prefixed = request("https", headers={"cookie": f"__Host-nudge_session={'x' * 43}"})
    assert sessions.cookie_of(prefixed) == "x" * 43


@pytest.mark.parametrize(
    ("method", "headers", "ok"),
    [
        ("GET", {}, True),
        ("POST", {}, False),
        ("DELETE", {"X-CSRF-Token": "another"}, False),
        ("PATCH", {"X-CSRF-Token": "the-token"}, True),
    ],
)
def test_unsafe_methods_need_the_sessions_own_csrf_token(
    method: str, headers: dict[str, str], ok: bool
) -> None:
    assert sessions.csrf_ok(request("http", method, headers), session()) is ok


@pytest.mark.parametrize(
    ("method", "path", "role", "allowed"),
    [
        ("GET", "/v1/contacts", "viewer", True),
        ("POST", "/v1/contacts", "viewer", False),
        ("POST", "/v1/contacts", "manager", True),
        ("GET", "/v1/api-keys", "manager", False),
        ("POST", "/v1/managers", "manager", False),
        ("DELETE", "/v1/managers/x", "owner", True),
        ("GET", "/v1/contacts", "admin", False),
    ],
)
def test_what_each_role_may_do(method: str, path: str, role: str, allowed: bool) -> None:
    assert (sessions.role_refusal(method, path, role) is None) is allowed
