"""A local SMTP server that keeps every mail it receives, for ``make run`` and the tests.

    python -m deploy.local.smtp_sink --port 2525 --maildir .nudge/data/mail

It accepts any sender and recipient and stores each message in a Maildir (one file per
message, written atomically, readable while the server runs), adding the envelope
recipients and the time of receipt as ``X-Nudge-Envelope-To`` / ``X-Nudge-Received-At``.
:class:`MaildirReader` reads them back; :class:`MailpitReader` reads the same from a
Mailpit server when ``SMTP_URL`` points at Mailpit instead (docker compose, CI with Docker).
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import mailbox
import signal
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import httpx
from aiosmtpd.smtp import SMTP, Envelope, Session

from deploy.local.paths import REPO_ROOT
from deploy.local.procs import (
    Child,
    ProcessRegistry,
    check_stop,
    require_free_port,
    startup_failure,
)

ENVELOPE_TO = "X-Nudge-Envelope-To"
RECEIVED_AT = "X-Nudge-Received-At"


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


class MaildirHandler:
    """aiosmtpd handler: every DATA becomes one Maildir message."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = mailbox.Maildir(maildir, create=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        headers = (
            f"{ENVELOPE_TO}: {', '.join(envelope.rcpt_tos)}\r\n"
            f"{RECEIVED_AT}: {datetime.now(UTC).isoformat()}\r\n"
        ).encode()
        self.maildir.add(headers + raw)
        return "250 OK stored"


class MailReader(Protocol):
    def messages(self) -> list[EmailMessage]: ...


class MaildirReader:
    """The mail the local sink stored, oldest first."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def messages(self) -> list[EmailMessage]:
        if not (self.path / "new").is_dir():
            return []
        box = mailbox.Maildir(self.path, create=False)
        found = []
        for key in box.iterkeys():  # iterating a Mailbox yields messages, not keys
            try:
                with box.get_file(key) as handle:
                    found.append(parse(handle.read()))
            except (FileNotFoundError, KeyError):
                continue  # removed while we read
        return sorted(found, key=lambda m: str(m.get(RECEIVED_AT, "")))


class MailpitReader:
    """The mail a Mailpit server holds, oldest first, through its HTTP API."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def messages(self) -> list[EmailMessage]:
        found: list[EmailMessage] = []
        with httpx.Client(base_url=self.base_url, timeout=self.timeout) as client:
            ids: list[str] = []
            start = 0
            while True:
                page = client.get("/api/v1/messages", params={"start": start, "limit": 500})
                page.raise_for_status()
                body: dict[str, Any] = page.json()
                batch = [str(m["ID"]) for m in body.get("messages") or []]
                ids += batch
                start += len(batch)
                if not batch or start >= int(body.get("messages_count", body.get("total", 0))):
                    break
            for message_id in reversed(ids):  # Mailpit lists the newest first
                raw = client.get(f"/api/v1/message/{message_id}/raw")
                raw.raise_for_status()
                found.append(parse(raw.content))
        return found


def mail_reader(environ: Mapping[str, str]) -> MailReader | None:
    """The reader for the SMTP server the environment points at, if it can be read."""
    if environ.get("NUDGE_MAILDIR"):
        return MaildirReader(environ["NUDGE_MAILDIR"])
    if environ.get("MAILPIT_URL"):
        return MailpitReader(environ["MAILPIT_URL"])
    return None


def text_body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    return part.get_content() if part is not None else ""


async def serve(port: int, maildir: Path, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    handler = MaildirHandler(maildir)
    server = await loop.create_server(
        lambda: SMTP(handler, enable_SMTPUTF8=True, hostname="nudge-smtp-sink"), host, port
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"smtp sink on {host}:{port}, storing in {maildir}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


async def start_smtp_sink(
    registry: ProcessRegistry, *, maildir: Path, port: int, log_dir: Path, timeout: float = 30.0
) -> dict[str, str]:
    """Run this module as a child process; returns ``SMTP_URL`` and ``NUDGE_MAILDIR`` once
    the server greets."""
    require_free_port(port, "the SMTP sink")
    log_path = log_dir / "smtp.log"
    child = registry.spawn(
        "smtp-sink",
        [sys.executable, "-m", "deploy.local.smtp_sink", "--port", str(port), "--maildir", maildir],
        output=log_path,
        cwd=REPO_ROOT,
    )
    try:
        await _wait_greeting(child, port, timeout, registry)
    except BaseException:
        registry.stop(child, timeout=5)
        raise
    return {"SMTP_URL": f"smtp://127.0.0.1:{port}", "NUDGE_MAILDIR": str(maildir)}


async def _wait_greeting(
    child: Child, port: int, timeout: float, registry: ProcessRegistry
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        check_stop(registry.stopping)
        if not child.alive():
            raise startup_failure(child, "the SMTP sink", port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the SMTP sink is not ready after {timeout}s") from None
            await asyncio.sleep(0.05)
            continue
        try:
            greeting = await asyncio.wait_for(reader.readline(), timeout)
        finally:
            writer.close()
        if greeting.startswith(b"220"):
            return
        raise RuntimeError(f"the SMTP sink greeted with {greeting!r}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.local.smtp_sink")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--maildir", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.maildir, args.host))


if __name__ == "__main__":
    main()
