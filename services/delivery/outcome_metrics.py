"""``nudge_delivery_outcomes_total``: what became of the mail delivery handled, by outcome
and kind of mail (docs/operating.md).

Counted where an outcome is written (handlers.py, inbound.py), after its transaction
committed: a write retried after an outage counts once, a write that failed counts never
(the sweeper's UNKNOWN counts instead). A DSN bounce or a complaint arrives after its mail
was counted ``sent``: both count, the counter tells what happened, not what a mail ended as.

The hot path pays one dict update of plain integers per mail (no prometheus_client lock,
no label lookup); the collector of services/common/metrics.py reads them when Prometheus
scrapes. The counts are the process's, served by the delivery service that starts in it
(bootstrap.py :func:`watch`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from nudge.delivery.v1 import delivery_pb2

from services.common import metrics
from services.delivery.domain.ledger import Status

KINDS: dict[int, str] = {
    delivery_pb2.MESSAGE_KIND_CAMPAIGN: "campaign",
    delivery_pb2.MESSAGE_KIND_AUTOMATION: "automation",
    delivery_pb2.MESSAGE_KIND_TRANSACTIONAL: "transactional",
    delivery_pb2.MESSAGE_KIND_TEST: "test",
}
OTHER_KIND = "other"  # a request with no valid kind (FAILED "invalid request")
OUTCOMES = (
    "sent",
    "deferred",
    "bounced_hard",
    "bounced_soft",
    "complained",
    "failed",
    "unknown",
    "skipped",
)
# The first word of a skip reason (contacts' "suppressed:hard_bounce", "no_consent:marketing"
# and delivery's own): a bounded label; anything else is "other".
SKIP_REASONS = frozenset(
    {
        "suppressed",
        "no_consent",
        "consent_withdrawn",
        "consent_pending",
        "no_email",
        "contact_not_found",
        "workspace_suspended",
    }
)
_BY_STATUS = {
    Status.SENT: "sent",
    Status.DEFERRED: "deferred",
    Status.FAILED: "failed",
    Status.UNKNOWN: "unknown",
    Status.SKIPPED: "skipped",
}


def skip_reason(detail: str) -> str:
    word = detail.partition(":")[0]
    return word if word in SKIP_REASONS else "other"


class DeliveryOutcomes:
    """The counts, by (outcome, kind, reason). Every outcome but ``skipped`` of every kind
    is served at 0 from the start, so rate() and the alerts have a series to read before
    the first such mail."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], int] = {
            (outcome, kind, ""): 0
            for outcome in OUTCOMES
            if outcome != "skipped"
            for kind in KINDS.values()
        }

    def count(self, outcome: str, kind: int, reason: str = "") -> None:
        key = (outcome, KINDS.get(kind, OTHER_KIND), reason)
        self._counts[key] = self._counts.get(key, 0) + 1

    def status(
        self, status: Status, kind: int, detail: str = "", *, permanent: bool = True
    ) -> None:
        """The outcome a ledger status stands for; ``detail`` names a skip's reason,
        ``permanent`` tells a hard bounce from a soft one."""
        if status == Status.BOUNCED:
            self.count("bounced_hard" if permanent else "bounced_soft", kind)
        elif status == Status.SKIPPED:
            self.count("skipped", kind, skip_reason(detail))
        else:
            self.count(_BY_STATUS.get(status, "unknown"), kind)

    def value(self, outcome: str, kind: str, reason: str = "") -> int:
        """One count (tests)."""
        return self._counts.get((outcome, kind, reason), 0)

    def metric_samples(self) -> Iterator[tuple[str, dict[str, str], Any]]:
        for (outcome, kind, reason), value in list(self._counts.items()):
            yield (
                "nudge_delivery_outcomes",
                {"outcome": outcome, "kind": kind, "reason": reason},
                value,
            )


OUTCOME_COUNTS = DeliveryOutcomes()


def watch() -> None:
    """Serve the counts under the service starting now (delivery's bootstrap)."""
    metrics.watch(OUTCOME_COUNTS)
