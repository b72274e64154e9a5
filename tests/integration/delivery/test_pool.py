"""SmtpPool over real SMTP servers: connections are reused, replaced when they drop, never
reused after a failure during DATA; per recipient-domain limits hold, and a slow or
throttled domain does not stall the others.

Connections are counted at the server's side (the client address of each DATA), by an
aiosmtpd server in a thread of the test (tests/smtp_server.py) that can also answer slowly;
one test goes through the session's own sink. A TCP proxy in between cuts connections."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from services.delivery.adapters.smtp import AmbiguousHandoff, SmtpSender, SmtpTarget, failure_of
from services.delivery.adapters.smtp_pool import PoolSettings, SmtpPool
from services.delivery.domain import mime
from services.delivery.domain.domain_limits import DomainLimits
from services.delivery.domain.ledger import Stage
from tests.integration.common.tcp_proxy import Proxy
from tests.mail import mails
from tests.smtp_server import ScriptedSmtp
from tests.support import eventually, free_port, unique

FAST = {"default": {"max_connections": 100, "per_second": 10_000}}


class CountingSmtp(ScriptedSmtp):
    """ScriptedSmtp that notes the client connection of every DATA and, per recipient
    domain, how many DATA it was answering at once; it answers each after ``data_delay_s``
    (a relay that takes its time)."""

    def __init__(self, data_delay_s: float = 0.0) -> None:
        super().__init__()
        self.data_delay_s = data_delay_s
        self.peers: list[object] = []
        self.busy: collections.Counter[str] = collections.Counter()
        self.most_busy: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        domain = envelope.rcpt_tos[0].rpartition("@")[2] if envelope.rcpt_tos else ""
        with self._count_lock:
            self.peers.append(session.peer)
            self.busy[domain] += 1
            self.most_busy[domain] = max(self.most_busy[domain], self.busy[domain])
        try:
            if self.data_delay_s:
                await asyncio.sleep(self.data_delay_s)
            return await super().handle_DATA(server, session, envelope)
        finally:
            with self._count_lock:
                self.busy[domain] -= 1

    def connections(self) -> int:
        with self._count_lock:
            return len(set(self.peers))


@pytest.fixture
def smtp() -> Iterator[CountingSmtp]:
    server = CountingSmtp()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def proxy(smtp: CountingSmtp) -> AsyncIterator[Proxy]:
    p = Proxy("127.0.0.1", smtp.port)
    await p.start()
    yield p
    await p.cut()


def mail(to: str, message_id: str | None = None, body: str = "Hello\n") -> bytes:
    return mime.to_bytes(
        mime.OutgoingMail(
            message_id=message_id or str(uuid.uuid4()),
            workspace_id=str(uuid.uuid4()),
            from_address="no-reply@nudge.localhost",
            from_name="",
            to_address=to,
            to_name="",
            subject="Pool",
            body_text=body,
            body_html="",
            date=datetime.now(UTC),
        )
    )


class Clock:
    """The pool's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool_for(
    url: str, timeout_s: float = 10, clock: Clock | None = None, **settings: object
) -> SmtpPool:
    limits = settings.pop("limits", FAST)
    return SmtpPool(
        SmtpTarget.from_url(url),
        timeout_s=timeout_s,
        settings=PoolSettings(
            limits=DomainLimits.from_mapping(limits),  # type: ignore[arg-type]
            **settings,  # type: ignore[arg-type]
        ),
        clock=clock or time.monotonic,
    )


async def send(pool: SmtpPool, to: str) -> str:
    return await pool.send(mail(to), "no-reply@nudge.localhost", to)


async def test_messages_share_a_few_long_lived_connections(smtp: CountingSmtp) -> None:
    pool = pool_for(smtp.url, max_connections=4)
    recipients = [f"{unique('r')}@shop{n % 3}.example" for n in range(60)]
    replies = await asyncio.gather(*(send(pool, to) for to in recipients))
    assert all("OK" in reply for reply in replies)
    assert len(smtp.messages()) == 60
    assert smtp.connections() <= 4
    assert pool.counters.opened == smtp.connections()
    assert pool.counters.reused >= 56
    # Later messages go over the connections kept open.
    await send(pool, f"{unique('r')}@shop0.example")
    assert smtp.connections() <= 4 and pool.idle_connections >= 1
    await pool.close()
    assert pool.idle_connections == 0


async def test_the_session_sink_gets_every_message_over_one_connection(
    infra: dict[str, str],
) -> None:
    pool = pool_for(infra["SMTP_URL"], max_connections=1)
    ids = [str(uuid.uuid4()) for _ in range(20)]
    for message_id in ids:
        to = f"{unique('sink')}@example.com"
        await pool.send(mail(to, message_id), "no-reply@nudge.localhost", to)
    await pool.close()
    assert pool.counters.opened == 1 and pool.counters.reused == 19

    def arrived() -> bool:
        got = {str(m.get("X-Nudge-Message-Id", "")) for m in mails()}
        return set(ids) <= got

    await eventually(arrived, timeout=10)


async def test_a_connection_retires_after_its_maximum_of_messages(smtp: CountingSmtp) -> None:
    pool = pool_for(smtp.url, max_messages=5)
    for _ in range(12):
        await send(pool, f"{unique('r')}@shop.example")
    assert smtp.connections() == 3
    assert pool.counters.retired == 2
    await pool.close()


async def test_a_connection_dropped_while_idle_is_replaced_and_nothing_sent_twice(
    smtp: CountingSmtp, proxy: Proxy
) -> None:
    pool = pool_for(proxy.url_through(smtp.url), max_connections=2)
    for _ in range(3):
        await send(pool, f"{unique('r')}@shop.example")
    assert pool.counters.opened == 1
    await proxy.cut()  # the relay drops every connection
    await proxy.start()
    for _ in range(3):
        await send(pool, f"{unique('r')}@shop.example")
    assert pool.counters.opened == 2 and pool.counters.discarded >= 1
    assert len(smtp.messages()) == 6
    assert set(smtp.data_attempts.values()) == {1}
    await pool.close()


async def test_a_connection_that_looks_alive_but_is_dead_is_replaced_before_data(
    smtp: CountingSmtp, proxy: Proxy
) -> None:
    """The drop is not yet seen when the connection is taken (no NOOP, the check comes only
    after an idle spell): MAIL fails, the message goes on a new connection, once."""
    # The paused transport never reads the close: its MAIL fails only by the timeout.
    pool = pool_for(
        proxy.url_through(smtp.url), timeout_s=3, max_connections=1, check_after_idle_s=3600
    )
    await send(pool, f"{unique('r')}@shop.example")
    [kept] = pool._idle
    # The pool has not seen the close yet: the transport is still there when MAIL goes.
    kept.client.transport.pause_reading()  # type: ignore[union-attr]
    await proxy.cut()
    await proxy.start()
    message_id = str(uuid.uuid4())
    to = f"{unique('r')}@shop.example"
    assert "OK" in await pool.send(mail(to, message_id), "no-reply@nudge.localhost", to)
    assert pool.counters.opened == 2 and pool.counters.retried_on_new_connection == 1
    assert smtp.data_attempts[message_id] == 1
    await pool.close()


async def test_an_idle_connection_is_closed_after_the_idle_timeout(smtp: CountingSmtp) -> None:
    clock = Clock()
    pool = pool_for(smtp.url, clock=clock, idle_timeout_s=30, check_after_idle_s=2)
    await send(pool, f"{unique('r')}@shop.example")
    clock.now += 10  # idle, but not for long: checked with NOOP and reused
    await send(pool, f"{unique('r')}@shop.example")
    assert (pool.counters.opened, pool.counters.reused) == (1, 1)
    clock.now += 31  # idle too long: closed, a new one opened
    await send(pool, f"{unique('r')}@shop.example")
    assert (pool.counters.opened, pool.counters.retired) == (2, 1)
    assert smtp.connections() == 2
    await pool.close()


async def test_a_dead_connection_is_found_by_noop_after_an_idle_spell(
    smtp: CountingSmtp, proxy: Proxy
) -> None:
    clock = Clock()
    # The paused transport never reads the close: its NOOP fails only by the timeout.
    pool = pool_for(proxy.url_through(smtp.url), timeout_s=3, clock=clock, check_after_idle_s=2)
    await send(pool, f"{unique('r')}@shop.example")
    [kept] = pool._idle
    kept.client.transport.pause_reading()  # type: ignore[union-attr]
    await proxy.cut()
    await proxy.start()
    clock.now += 5
    await send(pool, f"{unique('r')}@shop.example")
    # Found before the message depended on it: no retry of the message was needed.
    assert pool.counters.opened == 2 and pool.counters.retried_on_new_connection == 0
    assert pool.counters.discarded == 1
    await pool.close()


async def test_a_failure_during_data_is_ambiguous_and_that_connection_is_never_reused(
    smtp: CountingSmtp,
) -> None:
    """The server has the data and answers too late: the send is ambiguous, and the
    connection, which still looks alive (its late "250" is yet to be read), is discarded:
    reused, the next message would read that stale answer as its own."""
    pool = pool_for(smtp.url, max_connections=1, timeout_s=5)
    await send(pool, f"{unique('r')}@shop.example")
    held_id = str(uuid.uuid4())
    hold = smtp.hold_data(lambda m: m["X-Nudge-Message-Id"] == held_id)
    to = f"{unique('held')}@shop.example"
    sending = asyncio.create_task(pool.send(mail(to, held_id), "no-reply@nudge.localhost", to))
    await asyncio.to_thread(ScriptedSmtp.wait_held, hold, 30)
    with pytest.raises(AmbiguousHandoff):
        await asyncio.wait_for(sending, 30)
    assert pool.idle_connections == 0  # not put back, whatever aiosmtplib did with it
    ScriptedSmtp.release(hold)
    peers_before = set(smtp.peers)
    await send(pool, f"{unique('r')}@shop.example")
    assert smtp.peers[-1] not in peers_before  # a new connection, not the failed one
    assert pool.counters.opened == 2 and pool.counters.discarded == 1
    await pool.close()


async def test_refusals_surface_as_the_server_gave_them_and_the_connection_is_kept(
    smtp: CountingSmtp,
) -> None:
    pool = pool_for(smtp.url)
    refused, deferred = f"{unique('gone')}@shop.example", f"{unique('busy')}@shop.example"
    smtp.script(refused, rcpt=["550 5.1.1 no such user"])
    smtp.script(deferred, data=["451 4.3.0 try later"])
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as gone:
        await send(pool, refused)
    assert gone.value.code == 550
    with pytest.raises(aiosmtplib.SMTPDataError) as busy:
        await send(pool, deferred)
    assert busy.value.code == 451
    assert "OK" in await send(pool, f"{unique('r')}@shop.example")
    assert pool.counters.opened == 1 and pool.counters.discarded == 0
    await pool.close()


async def test_session_errors_are_the_same_as_the_one_shot_senders() -> None:
    url = f"smtp://127.0.0.1:{free_port()}"  # nobody listens
    to = "ada@shop.example"
    errors = []
    for sender in (SmtpSender(SmtpTarget.from_url(url), 5), pool_for(url)):
        with pytest.raises((aiosmtplib.SMTPException, OSError)) as caught:
            await sender.send(mail(to), "no-reply@nudge.localhost", to)
        errors.append(type(caught.value))
    assert errors[0] is errors[1]


async def test_lines_starting_with_a_dot_arrive_as_written(smtp: CountingSmtp) -> None:
    """The writer leaves dot-stuffing to the SMTP client: a 7bit body line "." would end
    DATA early, and "..two" would lose a dot, unless aiosmtplib quotes them (both senders)."""
    body = "first\n.\n.hidden\n..two\nFrom here\nlast\n"
    raw = mail("x@shop.example", body=body)
    assert b"\r\n.\r\n.hidden\r\n..two\r\n" in raw  # not stuffed by the writer, 7bit
    pool = pool_for(smtp.url)
    for sender in (SmtpSender(SmtpTarget.from_url(smtp.url), 5), pool):
        message_id = str(uuid.uuid4())
        to = f"{unique('dots')}@shop.example"
        reply = await sender.send(mail(to, message_id, body), "no-reply@nudge.localhost", to)
        assert "OK" in reply
        [received] = [m for m in smtp.messages() if m["X-Nudge-Message-Id"] == message_id]
        assert received.get_content().replace("\r\n", "\n") == body
    await pool.close()


class AsciiOnlySmtp(CountingSmtp):
    """A relay that does not offer SMTPUTF8 (RFC 6531); aiosmtpd's Controller does."""

    def start(self) -> None:
        self._controller = Controller(
            self, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=False
        )
        self._controller.start()


async def test_a_utf8_recipient_goes_with_smtputf8_or_is_refused_without_it(
    smtp: CountingSmtp,
) -> None:
    """A relay without SMTPUTF8 cannot take "zoé@...": a refusal of that message (not the
    UnicodeEncodeError that would read as a bug), and the connection stays in use. One
    with it gets the recipient in UTF-8 and the mail."""
    to = f"zoé.{unique('u')}@shop.example"
    relay = AsciiOnlySmtp()
    relay.start()
    try:
        pool = pool_for(relay.url, max_connections=1)
        for sender in (SmtpSender(SmtpTarget.from_url(relay.url), 5), pool):
            with pytest.raises(aiosmtplib.SMTPNotSupported) as caught:
                await sender.send(mail(to), "no-reply@nudge.localhost", to)
            failure = failure_of(caught.value)
            assert failure is not None and (failure.stage, failure.code) == (Stage.RCPT, 553)
        assert "OK" in await send(pool, f"{unique('r')}@shop.example")
        assert (pool.counters.opened, pool.counters.discarded) == (1, 0)
        await pool.close()
    finally:
        relay.stop()

    pool = pool_for(smtp.url)
    for sender in (SmtpSender(SmtpTarget.from_url(smtp.url), 5), pool):
        message_id = str(uuid.uuid4())
        assert "OK" in await sender.send(mail(to, message_id), "no-reply@nudge.localhost", to)
        assert smtp.data_attempts[message_id] == 1
    await pool.close()


async def test_a_domains_connection_limit_holds() -> None:
    server = CountingSmtp(data_delay_s=0.2)
    server.start()
    try:
        pool = pool_for(
            server.url,
            max_connections=16,
            limits={**FAST, "narrow.example": {"max_connections": 2, "per_second": 10_000}},
        )
        await asyncio.gather(
            *(send(pool, f"{unique('r')}@narrow.example") for _ in range(8)),
            *(send(pool, f"{unique('r')}@wide.example") for _ in range(8)),
        )
        assert server.most_busy["narrow.example"] <= 2
        # The limit is the narrow domain's alone: the other one went wide at once.
        assert server.most_busy["wide.example"] > 2
        await pool.close()
    finally:
        server.stop()


async def test_a_domains_rate_holds(smtp: CountingSmtp) -> None:
    pool = pool_for(smtp.url, limits={**FAST, "slow.example": {"per_second": 10}})
    started = time.monotonic()
    await asyncio.gather(*(send(pool, f"{unique('r')}@slow.example") for _ in range(6)))
    # Burst of one, then one every 100 ms: never faster (later is fine on a busy machine).
    assert time.monotonic() - started >= 0.5 - 0.01
    await pool.close()


async def test_a_throttled_domain_does_not_stall_the_others(smtp: CountingSmtp) -> None:
    """Its waiters hold no connection: with two connections in all and five mails waiting
    for a domain allowed one every 100 seconds, other domains' mail still goes."""
    pool = pool_for(
        smtp.url,
        max_connections=2,
        limits={**FAST, "throttled.example": {"max_connections": 5, "per_second": 0.01}},
    )
    waiting = [
        asyncio.create_task(send(pool, f"{unique('r')}@throttled.example")) for _ in range(5)
    ]
    await eventually(lambda: any(t.done() for t in waiting), timeout=30)
    async with asyncio.timeout(30):
        await asyncio.gather(*(send(pool, f"{unique('r')}@free.example") for _ in range(10)))
    assert sum(not t.done() for t in waiting) == 4
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    await pool.close()


async def test_a_slow_domain_does_not_stall_the_others() -> None:
    """A domain whose every send is answered slowly, limited to one at a time: its queue
    waits for its own permit, not for the pool's connections."""
    server = CountingSmtp()
    server.start()
    try:
        pool = pool_for(
            server.url,
            max_connections=2,
            limits={**FAST, "slow.example": {"max_connections": 1, "per_second": 10_000}},
        )
        hold = server.hold_data(lambda m: str(m["To"]).endswith("@slow.example"))
        slow = [asyncio.create_task(send(pool, f"{unique('r')}@slow.example")) for _ in range(5)]
        await asyncio.to_thread(ScriptedSmtp.wait_held, hold, 30)
        async with asyncio.timeout(30):
            await asyncio.gather(*(send(pool, f"{unique('r')}@fast.example") for _ in range(10)))
        assert not any(t.done() for t in slow)
        ScriptedSmtp.release(hold)
        async with asyncio.timeout(30):
            await asyncio.gather(*slow)
        await pool.close()
    finally:
        server.stop()
