"""The delivery outcome counts (services/delivery/outcome_metrics.py) and how the collector
of services/common/metrics.py serves them: pure, no service running."""

from __future__ import annotations

from nudge.delivery.v1 import delivery_pb2
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.common import metrics
from services.delivery.domain.ledger import Status
from services.delivery.outcome_metrics import DeliveryOutcomes, skip_reason


def served(outcomes: DeliveryOutcomes) -> dict[tuple[str, str, str, str], float]:
    """What Prometheus would read of ``outcomes`` alone, under service "delivery"."""
    collector = metrics._Components()
    collector.add(outcomes, "delivery")
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.labels["service"], s.labels["outcome"], s.labels["kind"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "nudge_delivery_outcomes_total"
    }


def test_every_outcome_of_every_kind_is_served_at_zero_before_any_mail() -> None:
    samples = served(DeliveryOutcomes())
    assert ("delivery", "unknown", "campaign", "") in samples
    assert ("delivery", "sent", "transactional", "") in samples
    assert len(samples) == 7 * 4  # skipped comes with its reason, when it happens
    assert set(samples.values()) == {0}


def test_statuses_are_counted_as_their_outcome_and_kind() -> None:
    outcomes = DeliveryOutcomes()
    campaign = delivery_pb2.MESSAGE_KIND_CAMPAIGN
    outcomes.status(Status.SENT, campaign)
    outcomes.status(Status.SENT, campaign)
    outcomes.status(Status.BOUNCED, campaign, permanent=False)
    outcomes.status(Status.BOUNCED, delivery_pb2.MESSAGE_KIND_AUTOMATION)
    outcomes.status(Status.FAILED, 42)  # no kind of the contract
    outcomes.status(Status.SKIPPED, delivery_pb2.MESSAGE_KIND_TEST, "suppressed:hard_bounce")
    samples = served(outcomes)
    assert samples[("delivery", "sent", "campaign", "")] == 2
    assert samples[("delivery", "bounced_soft", "campaign", "")] == 1
    assert samples[("delivery", "bounced_hard", "automation", "")] == 1
    assert samples[("delivery", "failed", "other", "")] == 1
    assert samples[("delivery", "skipped", "test", "suppressed")] == 1


def test_a_skip_reason_is_its_first_word_from_a_bounded_set() -> None:
    assert skip_reason("no_consent:marketing") == "no_consent"
    assert skip_reason("consent_withdrawn:automations") == "consent_withdrawn"
    assert skip_reason("workspace_suspended") == "workspace_suspended"
    assert skip_reason("contact_not_found") == "contact_not_found"
    # Free text never becomes a label value: one series per reason, not per message.
    assert skip_reason("something new: 12345") == "other"
    assert skip_reason("") == "other"
