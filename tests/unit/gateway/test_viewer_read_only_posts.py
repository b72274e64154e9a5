"""A viewer's console counts a segment rule and checks a workflow (POSTs that change
nothing), and still may not make any POST that changes something."""

from __future__ import annotations

import pytest

from services.gateway import sessions


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1/segments:count", True),
        ("/v1/segments:validate", True),
        ("/v1/segments:overlap", True),
        ("/v1/workflows:validate", True),
        ("/v1/segments", False),
        ("/v1/segments:count/x", False),
        ("/v1/workflows/abc/publish", False),
        ("/v1/workflows", False),
    ],
)
def test_a_viewer_may_make_only_the_posts_that_change_nothing(path: str, allowed: bool) -> None:
    assert (sessions.role_refusal("POST", path, "viewer") is None) is allowed


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_the_read_only_paths_take_no_other_unsafe_method_from_a_viewer(method: str) -> None:
    assert sessions.role_refusal(method, "/v1/segments:count", "viewer") is not None
