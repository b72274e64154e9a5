"""``make run``'s Welcome workflow when things go wrong (deploy/local/supervisor.py:
``demo_welcome``): a gateway that refuses is one line on stderr and nothing recorded, and a
recorded workflow is left alone. The path that works: tests/e2e/test_demo_welcome.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from deploy.local.supervisor import banner, demo_welcome
from tests.support import http_server


class RefusesToPublish(BaseHTTPRequestHandler):
    """Lists the workflows of ``LISTED``; makes the draft, then answers its publish with a
    503 problem on several lines. Keeps the POSTs it saw."""

    LISTED: list[dict[str, str]] = []
    POSTED: list[str] = []

    def do_GET(self) -> None:
        self._answer(200, {"workflows": self.LISTED, "next_page_token": ""})

    def do_POST(self) -> None:
        self.POSTED.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/workflows":
            self._answer(201, {"id": "w-1"})
        else:
            self._answer(503, {"title": "Service Unavailable", "status": 503})

    def _answer(self, status: int, body: object) -> None:
        data = json.dumps(body, indent=1).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads stderr."""


@pytest.fixture
def gateway() -> Iterator[str]:
    RefusesToPublish.LISTED, RefusesToPublish.POSTED = [], []
    with http_server(RefusesToPublish) as url:
        yield url


def test_a_refused_publish_is_one_warning_and_nothing_recorded(
    gateway: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = {"workspace_id": "ws", "api_key": "nk_x"}
    assert demo_welcome(tmp_path, {"NUDGE_GATEWAY_URL": gateway}, demo) == {}
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "WARNING" in warning
    assert "POST /v1/workflows/w-1/publish: 503" in warning
    assert not (tmp_path / "demo.json").exists()  # the next make run tries again


def test_a_recorded_workflow_is_left_alone(tmp_path: Path) -> None:
    """No HTTP at all (the gateway's address is no address): the user may have paused or
    deleted it since."""
    demo = {"api_key": "nk_x", "welcome_workflow_id": "w-1"}
    env = {"NUDGE_GATEWAY_URL": "http://nowhere.invalid", "KAFKA_BOOTSTRAP_SERVERS": "k:1"}
    assert demo_welcome(tmp_path, env, demo) == {"welcome_workflow_id": "w-1"}
    assert not (tmp_path / "demo.json").exists()
    assert "Welcome w-1" in banner(env, demo, tmp_path)


def test_a_demo_that_welcomes_signups_already_gets_no_second_workflow(
    gateway: str, tmp_path: Path
) -> None:
    """A demo workspace from before this step, its welcome published by hand: a second one
    would send two welcome mails. Its workflow is recorded instead, and nothing posted."""
    RefusesToPublish.LISTED = [
        {"id": "w-order", "trigger": "order_placed", "status": "active"},
        {"id": "w-hand", "trigger": "signed_up", "status": "active"},
    ]
    demo = {"workspace_id": "ws", "api_key": "nk_x"}
    assert demo_welcome(tmp_path, {"NUDGE_GATEWAY_URL": gateway}, demo) == {
        "welcome_workflow_id": "w-hand"
    }
    assert RefusesToPublish.POSTED == []
    assert json.loads((tmp_path / "demo.json").read_text())["welcome_workflow_id"] == "w-hand"
