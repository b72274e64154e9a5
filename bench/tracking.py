"""Tracking under load: the open pixel and the click redirect of ONE tracking process, driven
by a real HTTP load generator (``hey``), with valid tokens and with a forged one.

    .venv/bin/python bench/tracking.py [--scale N] [--concurrency C]

Starts the local stack (Kafka, Redis, ...) on free ports and the tracking service as a
process (bench/_system.py), then for each case sends ``N`` requests (default 20,000) from
``C`` connections (default 50, as the issue's wrk figure) and prints one JSON line:
requests/s and p50/p99 latency (ms) per case, and the status codes seen. ``hey`` is built
with ``go install`` into ``.nudge/bin`` when missing. Redirects are not followed (the click
target is a closed port on the loopback anyway): what is measured is tracking's answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
from _system import ROOT, percentile, running_system  # type: ignore[import-not-found]

from services.common import links

HEY_MODULE = "github.com/rakyll/hey@v0.1.5"


def hey_binary() -> Path:
    """``hey`` from .nudge/bin, built with the Go toolchain the first time."""
    target = ROOT / ".nudge" / "bin" / "hey"
    if target.exists():
        return target
    go = shutil.which("go") or "/usr/local/go/bin/go"
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [go, "install", HEY_MODULE], check=True, env={**os.environ, "GOBIN": str(target.parent)}
    )
    return target


def run_hey(
    hey: Path, url: str, requests: int, concurrency: int, user_agent: str
) -> dict[str, object]:
    """One hey run; figures from its per-request CSV (its summary's percentiles are not
    reliable), requests/s over the span from the first request's start to the last answer."""
    command = [str(hey), "-n", str(requests), "-c", str(concurrency), "-disable-redirects"]
    command += ["-t", "10", "-U", user_agent, "-o", "csv", url]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    latencies = [float(row["response-time"]) * 1000 for row in rows]
    span = max(float(r["offset"]) + float(r["response-time"]) for r in rows) - min(
        float(r["offset"]) for r in rows
    )
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status-code"]] = statuses.get(row["status-code"], 0) + 1
    return {
        "requests": len(rows),
        "requests_per_s": round(len(rows) / span, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "statuses": statuses,
    }


def kafka_stats(base: str) -> dict[str, int]:
    """The tracking process's own count of hits accepted, published, dropped and failed."""
    with urllib.request.urlopen(base + "/healthz", timeout=5) as answer:
        return dict(json.loads(answer.read())["checks"]["kafka"]["events"])


def wait_drained(base: str, timeout: float = 120) -> tuple[float, dict[str, int]]:
    """Seconds until every accepted hit left the buffer (published, dropped or failed):
    hits are held a few seconds for the burst rule, and published after the answer, so a
    case's CPU and rate are not complete until then."""
    began = time.monotonic()
    while True:
        stats = kafka_stats(base)
        if stats["published"] + stats["dropped"] + stats["failed"] >= stats["accepted"]:
            return time.monotonic() - began, stats
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"hits still buffered after {timeout}s: {stats}")
        time.sleep(0.05)


def records_on_topic(bootstrap: str) -> int:
    """The records on tracking.events.v1 (the sum of its partitions' end offsets)."""

    async def count() -> int:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from services.common.topics import TRACKING_EVENTS

        consumer = AIOKafkaConsumer(TRACKING_EVENTS, bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(TRACKING_EVENTS) or set()
            ends = await consumer.end_offsets(
                [TopicPartition(TRACKING_EVENTS, p) for p in partitions]
            )
            return sum(ends.values())
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await consumer.stop()

    return asyncio.run(count())


def wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=20_000, help="requests per case")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    hey = hey_binary()

    def ready(env: dict[str, str]) -> None:
        wait_healthy(f"http://127.0.0.1:{env['TRACKING_HTTP_PORT']}/healthz")

    with running_system(("tracking",), ready=ready) as system:
        base = f"http://127.0.0.1:{system.env['TRACKING_HTTP_PORT']}"
        secret = system.env["NUDGE_LINK_SECRET"]
        ws, msg, contact = (str(uuid.uuid4()) for _ in range(3))
        issued = int(time.time()) - 3600  # an hour ago: the timing rule does not apply
        target = "http://127.0.0.1:9/landing"  # never followed; loopback all the same
        if hasattr(links, "VERSION_TRACKED"):  # links that carry the issue time (issue 14)
            open_path = links.sign_open(secret, ws, msg, contact, issued_at=issued)
            click_path = links.sign_click(
                secret, ws, msg, contact, target, link_index=0, issued_at=issued
            )
        else:  # the code before issue 14, for comparison
            open_path = links.sign_open(secret, ws, msg, contact)
            click_path = links.sign_click(secret, ws, msg, contact, target)
        cases = {
            "open": base + open_path,
            "click": base + click_path,
            "forged_open": base + links.sign_open("not-the-secret", ws, msg, contact),
        }
        browser = (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15"
            " (KHTML, like Gecko)"
        )
        results: dict[str, dict[str, object]] = {}
        process = psutil.Process(system.group.pid("tracking"))
        run_hey(hey, cases["open"], min(2000, args.scale), args.concurrency, browser)  # warm-up
        wait_drained(base)
        for name, url in cases.items():
            # CPU time of the tracking process per request: far steadier than the rates on
            # a machine whose cores other work shares.
            # User and system apart: the system part is the kernel's socket work (loopback
            # send and receive), which no change of Python code removes.
            before = process.cpu_times()
            results[name] = run_hey(hey, url, args.scale, args.concurrency, browser)
            # Counted until the last hit of the case is on Kafka (its publish is part of it).
            results[name]["drained_after_s"] = round(wait_drained(base)[0], 2)
            after = process.cpu_times()
            user, kernel = after.user - before.user, after.system - before.system
            results[name]["cpu_us_per_request"] = round((user + kernel) / args.scale * 1e6, 1)
            results[name]["cpu_user_us"] = round(user / args.scale * 1e6, 1)
            results[name]["cpu_system_us"] = round(kernel / args.scale * 1e6, 1)
            results[name]["load_average_1m"] = round(os.getloadavg()[0], 1)
        stats = kafka_stats(base)
        on_kafka = records_on_topic(system.env["KAFKA_BOOTSTRAP_SERVERS"])
    print(
        json.dumps(
            {
                "bench": "tracking",
                "scale": args.scale,
                "concurrency": args.concurrency,
                "cases": results,
                "hits": stats,
                # Opens and clicks are published (forged tokens are not): every one accepted
                # must be on the topic, once.
                "records_on_kafka": on_kafka,
                "hits_lost": stats["accepted"] - on_kafka,
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
