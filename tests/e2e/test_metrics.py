"""Every service's Prometheus endpoint, scraped as Prometheus would and read with its own
text parser, after some traffic: the families and labels docs/operating.md documents are
there, with values that moved with what the test did."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from deploy.local.supervisor import SERVICES
from services.common.metrics import FAMILIES
from services.common.topics import SHOP_EVENTS
from tests.e2e.conftest import System
from tests.e2e.test_welcome_path import new_workspace, platform_signup
from tests.support import eventually, unique

# Services with a consumer loop (services/common/consumer.py) and with an outbox relay.
CONSUMERS = ("contacts", "segmentation", "campaigns", "delivery", "triggers")
RELAYS = ("contacts", "segmentation", "delivery", "triggers")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The series a query names, and the labels it groups or filters by.
METRIC = re.compile(r"\b((?:nudge|process)_[a-z_]+)\b")
LABELS = re.compile(r"by \(([^)]*)\)|([a-z_]+)(?:=|!=|=~)\"")
SUFFIXES = ("_total", "_bucket", "_count", "_sum")
GRPC = ("contacts", "segmentation", "campaigns", "triggers", "delivery")
# Families served only once what they count happened: a failed hand-off, a send to a
# domain (its limiter is made then), a campaign sending now. Where no test traffic made
# them, the dashboard's and the alerts' labels are checked against their declaration.
EPISODIC = {
    "nudge_smtp_errors",
    "nudge_smtp_throttle_waiting",
    "nudge_smtp_throttle_in_flight",
    "nudge_smtp_throttle_waits",
    "nudge_smtp_throttle_wait_seconds",
    "nudge_campaign_fanout_recipients",
    "nudge_campaign_fanout_streaming",
}
TRIGGERS_GROUP = "nudge-triggers"  # the Faust app id (services/triggers/config.py)


async def scrape(system: System, service: str) -> dict[str, list[Sample]]:
    """``{family: samples}`` of one service's endpoint."""
    port = system.env[f"{service.upper()}_METRICS_PORT"]
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return {f.name: f.samples for f in text_string_to_metric_families(answer.text)}


def matching(samples: Iterable[Sample], name: str, **labels: str) -> list[Sample]:
    return [
        s
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(families: dict[str, list[Sample]], family: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` with ``labels`` (0 when none is served)."""
    return sum(s.value for s in matching(families.get(family, []), name, **labels))


async def test_mail_sent_and_bounced_moves_the_delivery_and_smtp_metrics(system: System) -> None:
    """Two welcome mails (automation): one taken, one refused at RCPT with 550 5.1.1. The
    outcome counter, the pool's connections, the hand-off latency, its errors and the
    domain limiter of example.com ("other") show them; the Faust agents' lag is served
    for the shop events the signups were."""
    _, api_key = await new_workspace(system)
    taken, refused = f"{unique('sent')}@example.com", f"{unique('bounced')}@example.com"
    system.smtp.script(refused, rcpt=["550 5.1.1 no such mailbox"])
    before = await scrape(system, "delivery")
    outcomes = "nudge_delivery_outcomes"
    sent_before = value(
        before, outcomes, "nudge_delivery_outcomes_total", outcome="sent", kind="automation"
    )
    bounced_before = value(
        before, outcomes, "nudge_delivery_outcomes_total", outcome="bounced_hard", kind="automation"
    )
    refused_before = value(
        before, "nudge_smtp_errors", "nudge_smtp_errors_total", stage="rcpt", reply="5xx"
    )
    ok_before = value(
        before, "nudge_smtp_send_seconds", "nudge_smtp_send_seconds_count", result="ok"
    )
    await platform_signup(system, api_key, taken, unique("signup"))
    await platform_signup(system, api_key, refused, unique("signup"))

    async def both_counted() -> dict[str, list[Sample]] | None:
        now = await scrape(system, "delivery")
        sent = value(
            now, outcomes, "nudge_delivery_outcomes_total", outcome="sent", kind="automation"
        )
        bounced = value(
            now,
            outcomes,
            "nudge_delivery_outcomes_total",
            outcome="bounced_hard",
            kind="automation",
        )
        return now if sent > sent_before and bounced > bounced_before else None

    after = await eventually(both_counted, timeout=90, interval=0.5)
    assert (
        value(after, "nudge_smtp_errors", "nudge_smtp_errors_total", stage="rcpt", reply="5xx")
        > refused_before
    )
    assert (
        value(after, "nudge_smtp_send_seconds", "nudge_smtp_send_seconds_count", result="ok")
        > ok_before
    )
    assert value(after, "nudge_smtp_connections_opened", "nudge_smtp_connections_opened_total")
    assert value(after, "nudge_smtp_connections_max", "nudge_smtp_connections_max") > 0
    states = {s.labels["state"] for s in after["nudge_smtp_connections"]}
    assert states == {"idle", "in_use"}
    # example.com is no provider nor a configured domain: its limiter is "other".
    groups = {s.labels["domain_group"] for s in after["nudge_smtp_throttle_in_flight"]}
    assert groups == {"other"}
    causes = {s.labels["cause"] for s in after["nudge_smtp_throttle_waits"]}
    assert causes == {"connections", "rate"}

    async def agents_lag() -> bool:
        lag = (await scrape(system, "triggers")).get("nudge_consumer_lag", [])
        return any(
            s.labels["group"] == TRIGGERS_GROUP and s.labels["topic"] == SHOP_EVENTS for s in lag
        )

    await eventually(agents_lag, timeout=30, interval=0.5)
    fanned = await scrape(system, "campaigns")
    assert matching(
        fanned["nudge_campaign_fanout_requested"], "nudge_campaign_fanout_requested_total"
    )


async def test_every_service_is_scraped_with_the_documented_families(system: System) -> None:
    workspace_id, api_key = await new_workspace(system)  # contacts' CreateWorkspace over gRPC
    auth = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=system.gateway, headers=auth, timeout=10) as http:
        created = await http.post("/v1/contacts", json={"email": "metrics@example.com"})
        assert created.status_code == 201, created.text
        assert (await http.get("/v1/contacts/not-a-contact-id")).status_code == 404
    async with httpx.AsyncClient(base_url=system.env["NUDGE_TRACKING_URL"], timeout=10) as http:
        assert (await http.get("/o/forged.gif")).status_code == 404

    every = {service: await scrape(system, service) for service in SERVICES}
    for service, families in every.items():
        assert "process_cpu_seconds" in families, service  # the process itself
    for service in GRPC:  # its dependencies' last health check, by name
        up = matching(every[service]["nudge_dependency_up"], "nudge_dependency_up")
        assert "postgres" in {s.labels["dependency"] for s in up}, service
        assert all(s.value == 1 for s in up), (service, up)
    for service in GRPC:
        assert "nudge_grpc_server_handled" in every[service], service
        assert "nudge_grpc_server_handling_seconds" in every[service], service
    created_workspace = matching(
        every["contacts"]["nudge_grpc_server_handled"],
        "nudge_grpc_server_handled_total",
        service="contacts",
        method="/nudge.contacts.v1.WorkspaceService/CreateWorkspace",
        code="OK",
    )
    assert created_workspace and created_workspace[0].value >= 1

    gateway = every["gateway"]["nudge_http_requests"]
    # Counted by route template, never by the raw path (one series per route).
    assert matching(
        gateway, "nudge_http_requests_total", route="/v1/contacts", method="POST", status="201"
    )
    assert matching(gateway, "nudge_http_requests_total", route="/v1/contacts/{contact_id}")
    assert not [s for s in gateway if "not-a-contact-id" in s.labels.get("route", "")]
    assert "nudge_http_request_duration_seconds" in every["gateway"]

    hits = every["tracking"]["nudge_tracking_hits"]
    assert matching(hits, "nudge_tracking_hits_total", route="/o/{token}.gif", status="404")
    assert matching(
        every["tracking"]["nudge_tracking_hit_seconds"],
        "nudge_tracking_hit_seconds_count",
        route="/o/{token}.gif",
    )

    for service in RELAYS:
        assert "nudge_outbox_published" in every[service], service
    for service in CONSUMERS:
        records = every[service]["nudge_consumer_records"]
        assert {s.labels["outcome"] for s in records} >= {"handled", "dead_lettered"}, service
        assert all(s.labels["service"] == service and s.labels["group"] for s in records)

    # The contact's ContactCreated leaves contacts through its outbox, and segmentation's
    # consumer reads it: the relay's counter and the consumer's lag per partition show it.
    # The backlog and the lag are absent until first measured (the relay measures every 5 s,
    # the lag once a partition is assigned): on a loaded machine that is after the scrape.
    async def contacts_published() -> bool:
        families = await scrape(system, "contacts")
        published = matching(
            families["nudge_outbox_published"], "nudge_outbox_published_total", schema="contacts"
        )
        backlog = matching(families.get("nudge_outbox_backlog", []), "nudge_outbox_backlog")
        return bool(published and published[0].value >= 1 and backlog)

    await eventually(contacts_published, timeout=30)

    async def segmentation_lag() -> bool:
        families = await scrape(system, "segmentation")
        lag = matching(families.get("nudge_consumer_lag", []), "nudge_consumer_lag")
        return any(s.labels["topic"] == "contacts.events.v1" for s in lag)

    await eventually(segmentation_lag, timeout=30)
    assert workspace_id


def queries() -> list[str]:
    """Every PromQL expression of the committed dashboard and alert rules."""
    dashboard = json.loads((DEPLOY / "grafana/dashboards/nudge.json").read_text())
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]] + [
        r["expr"] for g in rules["groups"] for r in g["rules"]
    ]


def family_of(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix):
            return series[: -len(suffix)]
    return series


async def test_the_dashboard_and_the_alerts_read_series_the_services_serve(
    system: System,
) -> None:
    """What Grafana and Prometheus' rules would read exists, with the labels they use: a
    renamed metric or label fails here rather than as an empty panel or a silent alert."""
    await new_workspace(system)
    served: dict[str, set[str]] = {}  # family -> every label name seen on its samples

    async def everything_served() -> bool:
        served.clear()
        for service in SERVICES:
            for name, samples in (await scrape(system, service)).items():
                if not samples:
                    continue
                names = served.setdefault(name, set())
                for sample in samples:
                    names.update(sample.labels)
        return "nudge_delivery_workspaces_suspended" in served

    await eventually(everything_served, timeout=30)
    checked = 0
    for expr in queries():
        families = {family_of(m) for m in METRIC.findall(expr)}
        if not families:  # Prometheus' own `up` of each target
            assert expr.startswith("up{"), expr
            continue
        missing = families - served.keys() - EPISODIC
        assert not missing, f"{expr}: no service serves {sorted(missing)}"
        for family in families - served.keys():  # episodic, not served yet: as declared
            served[family] = set(FAMILIES[family][2])
        labels = set()
        for grouped, matched in LABELS.findall(expr):
            labels.update(n.strip() for n in grouped.split(",") if n.strip())
            labels.update([matched] if matched else [])
        known = set().union(*(served[f] for f in families)) | {"le", "job", "instance"}
        assert labels <= known, f"{expr}: labels {sorted(labels - known)} are never served"
        checked += 1
    assert checked >= 20
