"""How long from a shop's signup event to the welcome mail in the SMTP server, end to end.

    .venv/bin/python bench/welcome_latency.py [--scale N]

Starts the whole system (local stack, every service as a process), creates a workspace and
N contacts, then:
1. paced: N signups one at a time over the gateway's HTTP API, each waiting for its mail,
   which measures the latency of one event through gateway → contacts → outbox → Kafka →
   Faust → outbox → Kafka → delivery → SMTP with the system otherwise idle;
2. burst: N more signups sent as fast as the API takes them (16 at a time), which measures
   the throughput of the whole path and the latency under load.
Latency is from the HTTP request's start to the sink's receipt header. The last line is one
JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mailbox
import time
from datetime import datetime

import grpc
import httpx
from _system import percentile, running_system
from nudge.contacts.v1 import contacts_pb2, contacts_pb2_grpc

from tests.integration.triggers.support import publish_welcome

RECEIVED_AT = "X-Nudge-Received-At"


def received(maildir: str) -> dict[str, float]:
    """Recipient → when the sink received their mail (epoch seconds)."""
    return {
        str(m["X-Nudge-Envelope-To"]): datetime.fromisoformat(str(m[RECEIVED_AT])).timestamp()
        for m in mailbox.Maildir(maildir, create=True)
    }


async def main(scale: int) -> dict[str, object]:
    with running_system() as system:
        env = system.env
        async with grpc.aio.insecure_channel(env["NUDGE_CONTACTS_ADDR"]) as channel:
            created = await contacts_pb2_grpc.WorkspaceServiceStub(channel).CreateWorkspace(
                contacts_pb2.CreateWorkspaceRequest(name="Bench shop", slug="bench"),
                metadata=(("authorization", f"Admin {env['NUDGE_ADMIN_TOKEN']}"),),
            )
        # The welcome letter is a published workflow now (issue 16), no longer hard-coded.
        await publish_welcome(env["DATABASE_URL"], created.workspace_id)
        headers = {"Authorization": f"Bearer {created.api_key}"}
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(
            base_url=env["NUDGE_GATEWAY_URL"], headers=headers, timeout=30, limits=limits
        ) as http:
            emails = [f"c{i}@bench.example" for i in range(2 * scale)]

            async def create(email: str) -> None:
                answer = await http.post(
                    "/v1/contacts", json={"email": email, "consents": ["automations"]}
                )
                answer.raise_for_status()

            sem = asyncio.Semaphore(16)

            async def limited(coro_fn, *args):  # type: ignore[no-untyped-def]
                async with sem:
                    return await coro_fn(*args)

            await asyncio.gather(*(limited(create, e) for e in emails))
            sent_at: dict[str, float] = {}

            async def signup(email: str) -> None:
                sent_at[email] = time.time()
                answer = await http.post(
                    "/v1/events",
                    json={
                        "idempotency_key": email,
                        "type": "signed_up",
                        "contact": {"email": email},
                    },
                )
                answer.raise_for_status()

            async def mail_of(email: str, timeout: float = 60) -> float:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    got = received(env["NUDGE_MAILDIR"])
                    if email in got:
                        return got[email]
                    await asyncio.sleep(0.005)
                raise TimeoutError(f"no mail for {email}")

            paced = emails[:scale]
            paced_ms = []
            for email in paced:
                await signup(email)
                paced_ms.append((await mail_of(email) - sent_at[email]) * 1000)

            burst = emails[scale:]
            burst_start = time.time()
            await asyncio.gather(*(limited(signup, e) for e in burst))
            accepted_s = time.time() - burst_start
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                got = received(env["NUDGE_MAILDIR"])
                if all(e in got for e in burst):
                    break
                await asyncio.sleep(0.05)
            got = received(env["NUDGE_MAILDIR"])
            burst_ms = [(got[e] - sent_at[e]) * 1000 for e in burst]
            burst_s = max(got[e] for e in burst) - burst_start
            mailbox_count = len(mailbox.Maildir(env["NUDGE_MAILDIR"], create=True))

        return {
            "kafka_kind": env["NUDGE_KAFKA_KIND"],
            "scale": scale,
            "infra_ready_s": round(system.infra_s, 2),
            "healthy_s": round(system.healthy_s, 2),
            "paced_latency_p50_ms": round(percentile(paced_ms, 50), 1),
            "paced_latency_p99_ms": round(percentile(paced_ms, 99), 1),
            "paced_latency_max_ms": round(max(paced_ms), 1),
            "burst_api_events_per_s": round(scale / accepted_s, 1),
            "burst_mails_per_s": round(scale / burst_s, 1),
            "burst_latency_p50_ms": round(percentile(burst_ms, 50), 1),
            "burst_latency_p99_ms": round(percentile(burst_ms, 99), 1),
            "mails_total": mailbox_count,
            "duplicates": mailbox_count - 2 * scale,
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=200, help="signups in each phase")
    figures = asyncio.run(main(parser.parse_args().scale))
    print(json.dumps(figures))
