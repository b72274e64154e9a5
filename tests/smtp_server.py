"""A real SMTP server the tests steer: aiosmtpd in a thread of the test process.

The session's sink (``deploy/local/smtp_sink.py`` or Mailpit) accepts everything at once.
Some tests need a server that misbehaves on cue, per recipient so that tests sharing it do
not disturb each other:

- :meth:`ScriptedSmtp.hold_data` keeps the reply to the DATA of the ``n``-th matching mail
  until :meth:`release`: the message is stored (the server has it) but the client does not
  hear so, which is exactly where a sender that crashes or times out cannot know whether
  the mail went out. A kill test waits for :meth:`wait_held` and kills the sender then.
- :meth:`ScriptedSmtp.script` gives the replies to RCPT or DATA for a recipient (``"550
  ..."`` or ``"451 ..."``), once each, in order; then the server accepts again.
- :meth:`ScriptedSmtp.stop` / :meth:`start` close and reopen the port (connection refused).

Every DATA is counted per ``X-Nudge-Message-Id`` (:attr:`data_attempts`), so a test can
tell "sent once" from "sent twice and stored once".
"""

from __future__ import annotations

import asyncio
import collections
import email
import email.policy
import threading
from collections.abc import Callable
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support import free_port, wait_until

Match = Callable[[EmailMessage], bool]


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


class _Hold:
    def __init__(self, match: Match, nth: int) -> None:
        self.match = match
        self.nth = nth
        self.seen = 0
        self.held: EmailMessage | None = None
        self.holding = threading.Event()
        self.released = threading.Event()


class ScriptedSmtp:
    """The handler and its controller; see the module's docstring."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._stored: list[EmailMessage] = []
        self._rcpt_replies: dict[str, collections.deque[str]] = {}
        self._data_replies: dict[str, collections.deque[str]] = {}
        self._holds: list[_Hold] = []
        self.data_attempts: collections.Counter[str] = collections.Counter()
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    # -- control (test thread) --------------------------------------------------------------

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        for hold in self._holds:
            hold.released.set()
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[EmailMessage]:
        """What the server accepted (stored), oldest first."""
        with self._lock:
            return list(self._stored)

    def script(
        self, recipient: str, *, rcpt: list[str] | None = None, data: list[str] | None = None
    ) -> None:
        with self._lock:
            self._rcpt_replies[recipient.lower()] = collections.deque(rcpt or [])
            self._data_replies[recipient.lower()] = collections.deque(data or [])

    def hold_data(self, match: Match, nth: int = 1) -> _Hold:
        """Hold the reply to the ``nth`` DATA whose message ``match`` es (after storing it)."""
        hold = _Hold(match, nth)
        with self._lock:
            self._holds.append(hold)
        return hold

    @staticmethod
    def wait_held(hold: _Hold, timeout: float = 60.0) -> EmailMessage:
        wait_until(hold.holding.is_set, timeout=timeout)
        assert hold.held is not None
        return hold.held

    @staticmethod
    def release(hold: _Hold) -> None:
        hold.released.set()

    # -- aiosmtpd handler (server thread) ---------------------------------------------------

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self._lock:
            replies = self._rcpt_replies.get(address.lower())
            reply = replies.popleft() if replies else None
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content
        raw = content if isinstance(content, bytes) else str(content).encode()
        message = parse(raw)
        with self._lock:
            self.data_attempts[str(message.get("X-Nudge-Message-Id", ""))] += 1
            for rcpt in envelope.rcpt_tos:
                replies = self._data_replies.get(rcpt.lower())
                if replies:
                    return replies.popleft()
            self._stored.append(message)
            hold = None
            for candidate in self._holds:
                if candidate.held is None and candidate.match(message):
                    candidate.seen += 1
                    if candidate.seen == candidate.nth:
                        candidate.held = message
                        hold = candidate
                        break
        if hold is not None:
            hold.holding.set()
            # The client hears nothing until the test thread releases the hold.
            await asyncio.to_thread(hold.released.wait)
        return "250 OK stored"
