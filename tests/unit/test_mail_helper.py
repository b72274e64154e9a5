"""tests/mail.py reads the sink the session has: a Maildir, or Mailpit over HTTP.

Mailpit is a container the test machines cannot run, so its branch is tested against a real
HTTP server that answers like Mailpit's API: newest first, paged by ``start``/``limit``."""

from __future__ import annotations

import json
import mailbox
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from deploy.local.smtp_sink import ENVELOPE_TO, RECEIVED_AT
from tests.mail import mails, mails_with
from tests.support import free_port, http_server, wait_until


def raw_mail(n: int) -> bytes:
    return f"To: r{n}@example.com\r\nSubject: mail {n}\r\nX-N: {n}\r\n\r\nbody {n}\r\n".encode()


class FakeMailpit(BaseHTTPRequestHandler):
    """Mailpit's /api/v1/messages and /api/v1/message/{ID}/raw, over ``stored`` (oldest first)."""

    stored: list[bytes] = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        newest_first = [(f"id{n}", raw) for n, raw in reversed(list(enumerate(self.stored)))]
        if url.path == "/api/v1/messages":
            query = parse_qs(url.query)
            start, limit = int(query["start"][0]), min(int(query["limit"][0]), 2)  # small pages
            page = newest_first[start : start + limit]
            body = {
                "total": len(newest_first),
                "messages_count": len(newest_first),
                "start": start,
                "count": len(page),
                "messages": [{"ID": i, "Subject": "?"} for i, _ in page],
            }
            self._answer(200, "application/json", json.dumps(body).encode())
            return
        for message_id, raw in newest_first:
            if url.path == f"/api/v1/message/{message_id}/raw":
                self._answer(200, "text/plain", raw)
                return
        self._answer(404, "text/plain", b"not found")

    def _answer(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mailpit() -> Iterator[str]:
    with http_server(FakeMailpit) as url:
        yield url


def test_mailpit_mail_is_read_through_every_page_oldest_first(mailpit: str) -> None:
    FakeMailpit.stored = [raw_mail(n) for n in range(5)]
    found = mails({"MAILPIT_URL": mailpit})
    assert [str(m["Subject"]) for m in found] == [f"mail {n}" for n in range(5)]
    assert [str(m["To"]) for m in mails_with("X-N", "3", {"MAILPIT_URL": mailpit})] == [
        "r3@example.com"
    ]


def test_an_empty_mailpit_is_no_mail(mailpit: str) -> None:
    FakeMailpit.stored = []
    assert mails({"MAILPIT_URL": mailpit}) == []


def test_maildir_mail_is_read_oldest_first(tmp_path: Path) -> None:
    box = mailbox.Maildir(tmp_path / "mail", create=True)
    for n, at in [(1, "2026-01-01T00:00:02"), (0, "2026-01-01T00:00:01")]:
        headers = f"{ENVELOPE_TO}: r{n}@example.com\r\n{RECEIVED_AT}: {at}\r\n"
        box.add(headers.encode() + raw_mail(n))
    found = mails({"NUDGE_MAILDIR": str(tmp_path / "mail")})
    assert [str(m["Subject"]) for m in found] == ["mail 0", "mail 1"]


def test_no_sink_to_read_is_an_error_not_an_empty_inbox() -> None:
    with pytest.raises(RuntimeError, match="NUDGE_MAILDIR"):
        mails({})


def mailpit_binary() -> str | None:
    found = shutil.which("mailpit")
    built = Path.home() / "go" / "bin" / "mailpit"  # go install github.com/axllent/mailpit
    return found or (str(built) if built.exists() else None)


@pytest.mark.skipif(mailpit_binary() is None, reason="no mailpit binary (go install ...)")
def test_a_real_mailpit_is_read_oldest_first(tmp_path: Path) -> None:
    smtp_port, http_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            str(mailpit_binary()),
            "--smtp",
            f"127.0.0.1:{smtp_port}",
            "--listen",
            f"127.0.0.1:{http_port}",
            "--database",
            str(tmp_path / "mailpit.db"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{http_port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{url}/api/v1/messages", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=30)
        for n in range(3):
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
                smtp.sendmail("shop@example.com", [f"r{n}@example.com"], raw_mail(n))
        wait_until(lambda: len(mails({"MAILPIT_URL": url})) == 3, timeout=30)
        assert [str(m["Subject"]) for m in mails({"MAILPIT_URL": url})] == [
            "mail 0",
            "mail 1",
            "mail 2",
        ]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_make_mail_prints_bodies_with_lf_line_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sink keeps the mail as sent (CRLF); ``make mail`` prints it for a terminal."""
    from deploy.local.__main__ import mail

    box = mailbox.Maildir(tmp_path / "mail", create=True)
    headers = f"{ENVELOPE_TO}: r1@example.com\r\n{RECEIVED_AT}: 2026-01-01T00:00:01\r\n"
    box.add(headers.encode() + b"To: r1@example.com\r\nSubject: s\r\n\r\nline 1\r\nline 2\r\n")
    monkeypatch.setenv("NUDGE_MAILDIR", str(tmp_path / "mail"))
    assert mail(0) == 0
    printed = capsys.readouterr().out
    assert "line 1\nline 2\n" in printed
    assert "\r" not in printed
