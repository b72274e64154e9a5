"""A local SMTP server that keeps every mail it receives, for ``make run`` and the tests.

    python -m deploy.local.smtp_sink --port 2525 --maildir .nudge/data/mail

It accepts any sender and recipient and stores each message in a Maildir (one file per
message, written atomically, readable while the server runs), adding the envelope
recipients and the time of receipt as ``X-Nudge-Envelope-To`` / ``X-Nudge-Received-At``.
:class:`MaildirReader` reads them back; :class:`MailpitReader` reads the same from a
Mailpit server when ``SMTP_URL`` points at Mailpit instead (docker compose, CI with Docker).

Misbehaving on cue. The local part of an address (before any ``+tag``) may name a rule, so
that tests and benches cover every SMTP outcome with a real conversation, across processes,
with nothing to configure:

=========================  ==================================================================
local part                 what the sink does
=========================  ==================================================================
``bounce-550``             refuses the recipient at RCPT: ``550 5.1.1 <addr>: ...``
``bounce-552-5.2.2``       the same with the reply code and enhanced status code given
``bouncedata-554``         accepts RCPT, refuses the DATA: ``554 5.7.1 ...``
``defer-451``              defers at RCPT: ``451 4.3.0 ...`` (``defer2-451``: the first two
                           times only, then accepts; counted per address while it runs)
``deferdata-452``          defers the DATA (``deferdata1-452``: once)
``drop``                   stores the mail, then closes the connection without answering the
                           DATA: an ambiguous hand-off (``drop1``: the first time only)
``hang``                   stores the mail and never answers the DATA (until the client
                           goes away): where a sender killed mid-hand-off cannot know
=========================  ==================================================================

The same rules apply to the sender at MAIL FROM (``bounce-553@...`` refuses the sender:
a session error, not a bounce of the recipient). Delivery's VERP senders fill the local part
(``bounces+<token>@<bounce domain>``), so for a sender the first label of the domain may name
the rule too: ``bounces+x@bounce-553.example`` is refused. AUTH is offered without TLS; any login
is accepted except a user name starting with ``refuse`` (``535 5.7.8``). Without a code the
verb's default is used (bounce 550, defer 451); the enhanced code defaults by reply code.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import mailbox
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import httpx
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

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


# The enhanced status code (RFC 3463) a reply code carries when a rule gives none.
DEFAULT_ENHANCED = {
    421: "4.3.2",
    450: "4.2.1",
    451: "4.3.0",
    452: "4.2.2",
    550: "5.1.1",
    551: "5.1.6",
    552: "5.2.2",
    553: "5.1.3",
    554: "5.7.1",
}
DEFAULT_CODE = {"bounce": 550, "defer": 451}
_VERB = re.compile(r"^(bounce|defer|drop|hang)(data)?(\d+)?$")
_CODE = re.compile(r"^[245]\d\d$")
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
HANG_LIMIT_S = 3600.0


@dataclass(frozen=True)
class Rule:
    """What the sink does with one address (module docstring)."""

    verb: str  # bounce, defer, drop, hang
    at_data: bool  # refuse or defer at DATA rather than at RCPT / MAIL FROM
    times: int | None  # the first N times only; None: every time
    code: int
    enhanced: str

    def reply(self, address: str) -> str:
        what = "refused" if self.verb == "bounce" else "deferred"
        return f"{self.code} {self.enhanced} <{address}>: {what} by a sink rule"


def rule_for(address: str) -> Rule | None:
    """The rule an address names, or None (accept). ``bounce-550-5.1.1+x@example.com``."""
    local = address.rpartition("@")[0].split("+", 1)[0].lower()
    verb, *rest = local.split("-")
    found = _VERB.match(verb)
    if found is None or len(rest) > 2:
        return None
    name, data, times = found.group(1), bool(found.group(2)), found.group(3)
    code = DEFAULT_CODE.get(name, 0)
    enhanced = ""
    for token in rest:
        if _CODE.match(token):
            code = int(token)
        elif _ENHANCED.match(token):
            enhanced = token
        else:
            return None
    if name in ("bounce", "defer") and (code // 100 != (5 if name == "bounce" else 4)):
        return None
    return Rule(
        verb=name,
        at_data=data or name in ("drop", "hang"),
        times=int(times) if times else None,
        code=code,
        enhanced=enhanced or DEFAULT_ENHANCED.get(code, f"{code // 100}.0.0"),
    )


class MaildirHandler:
    """aiosmtpd handler: every DATA becomes one Maildir message, unless a rule of the
    sender or a recipient says otherwise (module docstring)."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = mailbox.Maildir(maildir, create=True)
        self.applied: Counter[tuple[str, str]] = Counter()  # (address, verb) -> times

    def _applies(self, address: str, at_data: bool) -> Rule | None:
        rule = rule_for(address)
        if rule is None or rule.at_data != at_data:
            return None
        key = (address.lower(), f"{rule.verb}{'data' if at_data else ''}")
        if rule.times is not None and self.applied[key] >= rule.times:
            return None
        self.applied[key] += 1
        return rule

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        label = address.rpartition("@")[2].split(".", 1)[0]
        rule = self._applies(address, at_data=False) or self._applies(f"{label}@", at_data=False)
        if rule is not None and rule.verb in ("bounce", "defer"):
            return rule.reply(address)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        rule = self._applies(address, at_data=False)
        if rule is not None and rule.verb in ("bounce", "defer"):
            return rule.reply(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rules = [(a, r) for a in envelope.rcpt_tos if (r := self._applies(a, at_data=True))]
        for address, rule in rules:
            if rule.verb in ("bounce", "defer"):
                return rule.reply(address)
        content = envelope.original_content or envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        headers = (
            f"{ENVELOPE_TO}: {', '.join(envelope.rcpt_tos)}\r\n"
            f"{RECEIVED_AT}: {datetime.now(UTC).isoformat()}\r\n"
        ).encode()
        self.maildir.add(headers + raw)
        verbs = {rule.verb for _, rule in rules}
        if "drop" in verbs and isinstance(server.transport, asyncio.WriteTransport):
            server.transport.abort()  # the mail is stored; the client hears nothing
        if verbs & {"drop", "hang"}:
            # The session ends when the client goes away (its task is cancelled then).
            await asyncio.sleep(HANG_LIMIT_S)
        return "250 OK stored"


def authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
) -> AuthResult:
    """Any login but a user name starting with ``refuse`` (a relay refusing the login)."""
    user = auth_data.login.decode() if isinstance(auth_data, LoginPassword) else ""
    if user.startswith("refuse"):
        return AuthResult(success=False, handled=False)
    return AuthResult(success=True)


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
        lambda: SMTP(
            handler,
            enable_SMTPUTF8=True,
            hostname="nudge-smtp-sink",
            authenticator=authenticate,
            auth_require_tls=False,
        ),
        host,
        port,
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
