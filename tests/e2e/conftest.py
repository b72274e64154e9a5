"""The whole system as ``make run`` starts it: every service a child process, on free ports,
over the session's infrastructure. Tests act as a platform (gRPC) or a manager (HTTP).

Delivery hands its mail to a :class:`tests.smtp_server.ScriptedSmtp` in this process rather
than to the session's sink: a real SMTP server that the kill test can make hold a DATA reply,
and that reads the same whether the session's sink is a Maildir or Mailpit."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from deploy.local.supervisor import SERVICES, ServiceGroup, free_service_ports, service_env
from tests.smtp_server import ScriptedSmtp


@dataclass
class System:
    env: dict[str, str]
    group: ServiceGroup
    traces_dir: Path
    log_dir: Path
    smtp: ScriptedSmtp

    @property
    def gateway(self) -> str:
        return self.env["NUDGE_GATEWAY_URL"]

    @property
    def contacts(self) -> str:
        return self.env["NUDGE_CONTACTS_ADDR"]

    @property
    def admin(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Admin {self.env['NUDGE_ADMIN_TOKEN']}"),)

    def mails(self) -> list[EmailMessage]:
        """The mail delivery handed over, oldest first."""
        return self.smtp.messages()

    def subjects_to(self, address: str) -> list[str]:
        """The subjects of the mail to ``address`` (its To names it), sorted."""
        return sorted(str(m["Subject"]) for m in self.mails() if address in str(m["To"]))

    def spans(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for path in self.traces_dir.glob("*.jsonl")
            for line in path.read_text().splitlines()
            if line.strip()
        ]


@pytest.fixture(scope="package")
def system(infra: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    traces_dir = tmp_path_factory.mktemp("traces")
    log_dir = tmp_path_factory.mktemp("service-logs")
    env = service_env(
        infra,
        free_service_ports(),
        base={**os.environ, "NUDGE_TRACES_DIR": str(traces_dir), "NUDGE_LOG_FORMAT": "text"},
    )
    smtp = ScriptedSmtp()
    smtp.start()
    group = ServiceGroup(output=None, log_dir=log_dir, autorestart=False)
    try:
        group.start([name for name in SERVICES if name != "delivery"], env)
        # A long SMTP timeout: the kill test holds a DATA reply for as long as it needs, and
        # delivery must still be waiting for it when it is killed, however loaded the machine.
        group.start(["delivery"], {**env, "SMTP_URL": smtp.url, "DELIVERY_SMTP_TIMEOUT_S": "600"})
        group.wait_healthy(f"{env['NUDGE_GATEWAY_URL']}/healthz", timeout=120)
        yield System(env=env, group=group, traces_dir=traces_dir, log_dir=log_dir, smtp=smtp)
    finally:
        group.stop()
        smtp.stop()
