"""A pool of long-lived SMTP connections to the relay, with per recipient-domain limits.

:class:`SmtpSender` opens a connection per message: TCP, greeting, EHLO, maybe STARTTLS and
AUTH, then MAIL, RCPT, DATA, QUIT. Most of that is the connection's, not the message's, so
here a connection stays open and carries the next message (up to ``max_messages`` each, then
it is retired: relays cap messages per session, and a fresh one spreads load over the
relay's workers). :meth:`SmtpPool.send` has exactly the contract of
:meth:`SmtpSender.send`: the server's reply, aiosmtplib's errors as the server gave them, and
:class:`AmbiguousHandoff` when the data went out and no answer came.

What may be reused, and what never is:
- a connection idle longer than ``idle_timeout_s`` is closed (the relay would drop it soon);
  one idle longer than ``check_after_idle_s`` is asked NOOP first, so a connection the relay
  closed in the meantime is found before a message depends on it;
- a connection that fails before DATA (dropped while idle, a timeout on MAIL or RCPT) is
  discarded and, when it was a reused one, the message is tried once more on a new
  connection: nothing of it was handed over, so this cannot mail twice;
- a refusal (MAIL or RCPT or DATA answered 4xx/5xx) leaves the connection in a known state:
  RSET, then it is reused (if RSET fails it is discarded);
- a connection that failed during DATA is discarded, never reused: its state is unknown,
  and the failure is :class:`AmbiguousHandoff`. So is any connection whose send was
  cancelled midway.

Limits: at most ``max_connections`` to the relay in all, and per recipient domain
(:mod:`services.delivery.domain.domain_limits`) at most its ``max_connections`` sends in
flight and its ``per_second`` rate. A send waits for its domain's permit *before* it takes a
connection, so a slow or throttled domain's waiters hold no connection and never stall the
mail of other domains.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib
from opentelemetry import trace

from services.common import metrics
from services.common.context import workspace_id_var
from services.delivery.adapters.smtp import AmbiguousHandoff, SmtpTarget, envelope, failure_of
from services.delivery.domain.domain_limits import DomainLimits, RateSchedule

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


@dataclass
class PoolCounters:
    """What the pool did, for tests, the bench and metrics."""

    opened: int = 0
    reused: int = 0
    discarded: int = 0
    retired: int = 0
    retried_on_new_connection: int = 0


@dataclass
class _Connection:
    client: aiosmtplib.SMTP
    last_used: float
    sent: int = 0
    reused: bool = False


@dataclass
class _DomainGate:
    permits: asyncio.Semaphore
    schedule: RateSchedule
    group: str  # the metrics' domain_group: bounded (see SmtpPool._groups)
    in_flight: int = 0
    waiting: int = 0  # sends waiting for a permit or a rate slot
    waited_for_permit: int = 0
    waited_for_rate: int = 0
    wait_seconds: float = 0.0


@dataclass
class PoolSettings:
    max_connections: int = 16
    max_messages: int = 100
    idle_timeout_s: float = 30.0
    check_after_idle_s: float = 2.0
    limits: DomainLimits = field(default_factory=lambda: DomainLimits.from_mapping({}))


class SmtpPool:
    def __init__(
        self,
        target: SmtpTarget,
        timeout_s: float,
        settings: PoolSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        self._timeout = timeout_s
        self._settings = settings or PoolSettings()
        self._clock = clock
        self._slots = asyncio.Semaphore(self._settings.max_connections)
        self._idle: collections.deque[_Connection] = collections.deque()
        self._gates: dict[str, _DomainGate] = {}
        self._quitting: set[asyncio.Future[None]] = set()
        self.counters = PoolCounters()
        # Metrics (docs/operating.md), plain integers read at scrape time: sends holding a
        # connection now, failures by (stage, reply class), and the hand-off's latency.
        self._in_use = 0
        self._errors: dict[tuple[str, str], int] = {}
        self._send_seconds = metrics.LatencyHistogram(
            "nudge_smtp_send_seconds", "result", known=("ok", "refused", "error")
        )
        # The configured limiters' keys (providers, named domains): the only domain_group
        # values besides "other", so one label per configured limit, never one per domain.
        self._groups = frozenset(key for key, _ in self._settings.limits.by_domain.values())
        metrics.watch(self)

    # ------------------------------------------------------------------------------ sending

    async def send(
        self, raw: bytes, sender: str, recipient: str, message_id: str = "", *, contact_id: str = ""
    ) -> str:
        """Hand the mail's bytes over; returns the server's reply. Raises aiosmtplib errors,
        or :class:`AmbiguousHandoff` when the outcome is unknown (see the module's
        docstring). ``message_id`` and ``contact_id`` name the span."""
        key, limit = self._settings.limits.for_recipient(recipient)
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = _DomainGate(
                asyncio.Semaphore(limit.max_connections),
                RateSchedule(limit),
                key if key in self._groups else "other",
            )
        with tracer.start_as_current_span(
            "smtp send",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "server.address": self._target.host,
                "server.port": self._target.port,
                "nudge.message_id": message_id,
                "nudge.contact_id": contact_id,
                "nudge.workspace_id": workspace_id_var.get(),
                "nudge.recipient_domain": key,
            },
        ):
            asked = self._clock()
            if gate.permits.locked():
                gate.waited_for_permit += 1
            gate.waiting += 1
            try:
                await gate.permits.acquire()
            except BaseException:
                gate.waiting -= 1
                raise
            try:
                delay = gate.schedule.reserve(self._clock())
                if delay > 0:
                    gate.waited_for_rate += 1
                    try:
                        await asyncio.sleep(delay)
                    finally:
                        gate.waiting -= 1
                else:
                    gate.waiting -= 1
                gate.wait_seconds += self._clock() - asked
                gate.in_flight += 1
                try:
                    async with self._slots:
                        return await self._timed_send(raw, sender, recipient)
                finally:
                    gate.in_flight -= 1
            finally:
                gate.permits.release()

    async def _timed_send(self, raw: bytes, sender: str, recipient: str) -> str:
        """The hand-off on a connection, timed and its failure counted (metrics)."""
        started = self._clock()
        self._in_use += 1
        result = "error"
        try:
            reply = await self._send_on_a_connection(raw, sender, recipient)
            result = "ok"
            return reply
        except Exception as err:
            failure = failure_of(err)
            if failure is not None:
                code = failure.code
                reply_class = f"{code // 100}xx" if code and 400 <= code < 600 else "none"
                if reply_class != "none":
                    result = "refused"
                key = (failure.stage.value, reply_class)
                self._errors[key] = self._errors.get(key, 0) + 1
            raise
        finally:
            self._in_use -= 1
            self._send_seconds.observe(result, self._clock() - started)

    def in_flight(self, recipient_domain: str) -> int:
        """Sends to the limiter of ``recipient_domain`` holding a permit now."""
        gate = self._gates.get(self._settings.limits.for_domain(recipient_domain)[0])
        return gate.in_flight if gate else 0

    async def _send_on_a_connection(self, data: bytes, sender: str, recipient: str) -> str:
        connection = await self._checkout()
        try:
            await self._envelope(connection, sender, recipient)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPNotSupported):
            raise  # refused: the server answered (or cannot take it), the connection was kept
        except (aiosmtplib.SMTPException, OSError) as err:
            if not connection.reused:
                raise
            # The relay closed a connection we had kept: nothing of this message went out.
            log.info("SMTP connection failed before DATA; sending on a new one: %r", err)
            self.counters.retried_on_new_connection += 1
            connection = await self._open()
            await self._envelope(connection, sender, recipient)
        try:
            response = await connection.client.data(data)
        except aiosmtplib.SMTPResponseException:
            await self._reset_or_discard(connection)
            raise  # the server answered: no doubt about the outcome
        except (aiosmtplib.SMTPException, OSError) as err:
            self._discard(connection)
            raise AmbiguousHandoff(repr(err)) from err
        except BaseException:  # cancelled while the data was going out
            self._discard(connection)
            raise
        connection.sent += 1
        self._checkin(connection)
        return response.message

    async def _envelope(self, connection: _Connection, sender: str, recipient: str) -> None:
        """MAIL and RCPT. After a refusal the connection is reset and kept; after any other
        failure it is discarded. Either way the error is raised as aiosmtplib gave it. A
        relay without SMTPUTF8 for a UTF-8 recipient is asked nothing: the connection is
        kept as it is."""
        try:
            await envelope(connection.client, sender, recipient)
        except aiosmtplib.SMTPResponseException:
            await self._reset_or_discard(connection)
            raise
        except aiosmtplib.SMTPNotSupported:
            self._checkin(connection)
            raise
        except BaseException:
            self._discard(connection)
            raise

    # -------------------------------------------------------------------------- connections

    async def _checkout(self) -> _Connection:
        now = self._clock()
        self._close_expired(now)
        while self._idle:
            connection = self._idle.pop()  # the most recently used: the likeliest alive
            if not connection.client.is_connected:
                self._discard(connection)
                continue
            if now - connection.last_used > self._settings.check_after_idle_s:
                try:
                    await connection.client.noop()
                except (aiosmtplib.SMTPException, OSError):
                    self._discard(connection)
                    continue
                except BaseException:
                    self._discard(connection)
                    raise
            connection.reused = True
            self.counters.reused += 1
            return connection
        return await self._open()

    async def _open(self) -> _Connection:
        """Connect, STARTTLS when offered, log in: session errors (refused connection, bad
        login, TLS) are raised as aiosmtplib gives them, like :class:`SmtpSender`."""
        client = aiosmtplib.SMTP(
            hostname=self._target.host,
            port=self._target.port,
            use_tls=self._target.use_tls,
            start_tls=None,
            username=self._target.username,
            password=self._target.password,
            timeout=self._timeout,
        )
        try:
            await client.connect()
        except BaseException:
            client.close()
            raise
        self.counters.opened += 1
        return _Connection(client=client, last_used=self._clock())

    def _checkin(self, connection: _Connection) -> None:
        if connection.sent >= self._settings.max_messages:
            self.counters.retired += 1
            self._quit_later(connection.client)
            return
        connection.last_used = self._clock()
        self._idle.append(connection)

    async def _reset_or_discard(self, connection: _Connection) -> None:
        try:
            await connection.client.rset()
        except (aiosmtplib.SMTPException, OSError):
            self._discard(connection)
            return
        except BaseException:
            self._discard(connection)
            raise
        self._checkin(connection)

    def _discard(self, connection: _Connection) -> None:
        self.counters.discarded += 1
        connection.client.close()

    def _close_expired(self, now: float) -> None:
        while self._idle and now - self._idle[0].last_used > self._settings.idle_timeout_s:
            connection = self._idle.popleft()
            self.counters.retired += 1
            self._quit_later(connection.client)

    def _quit_later(self, client: aiosmtplib.SMTP) -> None:
        """QUIT off the send's path (a retired connection owes the relay a goodbye, the
        message does not wait for it); the task is kept so that it is not collected."""
        task = asyncio.ensure_future(self._quit(client))
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)

    @staticmethod
    async def _quit(client: aiosmtplib.SMTP) -> None:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            await client.quit(timeout=5)
        client.close()

    async def close(self) -> None:
        """QUIT every idle connection (those in use close when their send ends)."""
        idle, self._idle = list(self._idle), collections.deque()
        await asyncio.gather(*(self._quit(c.client) for c in idle), *self._quitting)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def metric_samples(self) -> Iterator[tuple[str, dict[str, str], Any]]:
        """What Prometheus reads of the pool (services/common/metrics.py)."""
        yield "nudge_smtp_connections", {"state": "idle"}, len(self._idle)
        yield "nudge_smtp_connections", {"state": "in_use"}, self._in_use
        yield "nudge_smtp_connections_max", {}, self._settings.max_connections
        yield "nudge_smtp_connections_opened", {}, self.counters.opened
        yield "nudge_smtp_connections_closed", {"reason": "retired"}, self.counters.retired
        yield "nudge_smtp_connections_closed", {"reason": "discarded"}, self.counters.discarded
        for (stage, reply), count in list(self._errors.items()):
            yield "nudge_smtp_errors", {"stage": stage, "reply": reply}, count
        groups: dict[str, list[float]] = {}
        for gate in list(self._gates.values()):
            g = groups.setdefault(gate.group, [0, 0, 0, 0, 0.0])
            g[0] += gate.waiting
            g[1] += gate.in_flight
            g[2] += gate.waited_for_permit
            g[3] += gate.waited_for_rate
            g[4] += gate.wait_seconds
        for group, (waiting, in_flight, permit, rate, seconds) in groups.items():
            labels = {"domain_group": group}
            yield "nudge_smtp_throttle_waiting", labels, waiting
            yield "nudge_smtp_throttle_in_flight", labels, in_flight
            yield "nudge_smtp_throttle_waits", {**labels, "cause": "connections"}, permit
            yield "nudge_smtp_throttle_waits", {**labels, "cause": "rate"}, rate
            yield "nudge_smtp_throttle_wait_seconds", labels, seconds
