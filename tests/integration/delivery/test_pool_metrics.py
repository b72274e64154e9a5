"""What SmtpPool reports to Prometheus (docs/operating.md), over real SMTP servers: its
connections idle, in use and at most, the hand-off's latency and failures, and the mail
waiting for its recipient domain's limits, by a bounded domain group."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiosmtplib
import pytest

from services.delivery.adapters.smtp_pool import SmtpPool
from tests.integration.delivery.test_pool import FAST, CountingSmtp, pool_for, send
from tests.smtp_server import ScriptedSmtp
from tests.support import eventually, free_port, unique


@pytest.fixture
def server() -> Iterator[CountingSmtp]:
    smtp = CountingSmtp()
    smtp.start()
    yield smtp
    smtp.stop()


def samples(pool: SmtpPool) -> dict[tuple[str, frozenset[tuple[str, str]]], object]:
    return {
        (family, frozenset(labels.items())): value
        for family, labels, value in pool.metric_samples()
    }


def sample(pool: SmtpPool, family: str, **labels: str) -> object:
    return samples(pool).get((family, frozenset(labels.items())))


def latency_count(pool: SmtpPool, result: str) -> int:
    for _, labels, (buckets, _total) in pool._send_seconds.metric_samples():
        if labels == {"result": result}:
            return int(buckets[-1][1])  # the +Inf bucket: every observation
    return 0


async def test_connections_in_use_idle_and_max_and_the_hand_off_latency(
    server: CountingSmtp,
) -> None:
    pool = pool_for(server.url, max_connections=3)
    assert sample(pool, "nudge_smtp_connections_max") == 3
    hold = server.hold_data(lambda m: "held-" in str(m["To"]))
    held = asyncio.create_task(send(pool, f"{unique('held')}@shop.example"))
    await asyncio.to_thread(ScriptedSmtp.wait_held, hold, 30)
    assert sample(pool, "nudge_smtp_connections", state="in_use") == 1
    assert sample(pool, "nudge_smtp_connections", state="idle") == 0
    ScriptedSmtp.release(hold)
    await held
    assert sample(pool, "nudge_smtp_connections", state="in_use") == 0
    assert sample(pool, "nudge_smtp_connections", state="idle") == 1
    assert sample(pool, "nudge_smtp_connections_opened") == 1
    assert latency_count(pool, "ok") == 1
    await pool.close()


async def test_retired_connections_are_counted(server: CountingSmtp) -> None:
    pool = pool_for(server.url, max_connections=1, max_messages=2)
    for _ in range(4):
        await send(pool, f"{unique('r')}@shop.example")
    assert sample(pool, "nudge_smtp_connections_opened") == 2
    assert sample(pool, "nudge_smtp_connections_closed", reason="retired") == 2
    assert sample(pool, "nudge_smtp_connections_closed", reason="discarded") == 0
    await pool.close()


async def test_failed_hand_offs_are_counted_by_stage_and_reply_class(
    server: CountingSmtp,
) -> None:
    pool = pool_for(server.url)
    refused, deferred = f"{unique('r')}@shop.example", f"{unique('d')}@shop.example"
    server.script(refused, rcpt=["550 5.1.1 no such mailbox"])
    server.script(deferred, data=["451 4.3.0 try later"])
    with pytest.raises(aiosmtplib.SMTPRecipientRefused):
        await send(pool, refused)
    with pytest.raises(aiosmtplib.SMTPDataError):
        await send(pool, deferred)
    assert sample(pool, "nudge_smtp_errors", stage="rcpt", reply="5xx") == 1
    assert sample(pool, "nudge_smtp_errors", stage="data", reply="4xx") == 1
    assert latency_count(pool, "refused") == 2
    assert latency_count(pool, "ok") == 0
    await pool.close()


async def test_a_refused_connection_is_counted_as_a_connect_error() -> None:
    pool = pool_for(f"smtp://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises((OSError, aiosmtplib.SMTPException)):
        await send(pool, f"{unique('r')}@shop.example")
    assert sample(pool, "nudge_smtp_errors", stage="connect", reply="none") == 1
    assert latency_count(pool, "error") == 1


async def test_mail_waiting_for_its_domain_is_gauged_by_domain_group(
    server: CountingSmtp,
) -> None:
    """A configured domain is its own group, a provider's domains are the provider's, every
    other domain is "other"; waiting for the rate and for a permit are told apart, and
    a waiter that gives up is no longer counted."""
    pool = pool_for(
        server.url,
        limits={
            **FAST,
            "throttled.example": {"max_connections": 5, "per_second": 0.01},
            "google": {"max_connections": 1, "per_second": 10_000},
        },
    )
    # One every 100 s: the first goes, the next two wait for the rate.
    rate = [asyncio.create_task(send(pool, f"{unique('r')}@throttled.example")) for _ in range(3)]
    # One at a time for Google: while the first DATA is held, the second waits for a permit.
    hold = server.hold_data(lambda m: str(m["To"]).endswith("@gmail.com"))
    permit = [asyncio.create_task(send(pool, f"{unique('g')}@gmail.com")) for _ in range(2)]
    await asyncio.to_thread(ScriptedSmtp.wait_held, hold, 30)
    await send(pool, f"{unique('o')}@elsewhere.example")

    def waiting(group: str) -> object:
        return sample(pool, "nudge_smtp_throttle_waiting", domain_group=group)

    await eventually(lambda: waiting("throttled.example") == 2 and waiting("google") == 1)
    assert (
        sample(pool, "nudge_smtp_throttle_waits", domain_group="throttled.example", cause="rate")
        == 2
    )
    assert (
        sample(pool, "nudge_smtp_throttle_waits", domain_group="google", cause="connections") == 1
    )
    assert sample(pool, "nudge_smtp_throttle_in_flight", domain_group="google") == 1
    assert waiting("other") == 0
    assert sample(pool, "nudge_smtp_throttle_in_flight", domain_group="other") == 0
    groups = {
        dict(labels).get("domain_group")
        for family, labels in samples(pool)
        if family == "nudge_smtp_throttle_waiting"
    }
    assert groups == {"throttled.example", "google", "other"}  # never a domain of its own

    ScriptedSmtp.release(hold)
    async with asyncio.timeout(30):
        await asyncio.gather(*permit)
    assert waiting("google") == 0
    seconds = sample(pool, "nudge_smtp_throttle_wait_seconds", domain_group="google")
    assert isinstance(seconds, float) and seconds > 0
    for task in rate:
        task.cancel()
    await asyncio.gather(*rate, return_exceptions=True)
    assert waiting("throttled.example") == 0  # the cancelled waiters left the count
    await pool.close()
