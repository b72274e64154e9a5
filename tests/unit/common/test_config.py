import pytest

from services.common.config import MIN_SECRET_LENGTH, insecure_secrets
from services.contacts.config import Settings as ContactsSettings
from services.delivery.config import Settings as DeliverySettings
from services.gateway.config import Settings as GatewaySettings


def test_shared_settings_are_read_under_their_documented_names_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NUDGE_ADMIN_TOKEN", "documented")
    monkeypatch.setenv("CONTACTS_ADMIN_TOKEN", "undocumented")
    monkeypatch.setenv("DELIVERY_SMTP_URL", "smtp://undocumented:25")
    monkeypatch.delenv("SMTP_URL", raising=False)
    assert ContactsSettings().admin_token == "documented"
    assert DeliverySettings().smtp_url == "smtp://127.0.0.1:2525"


def test_code_may_pass_settings_by_field_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_URL", "smtp://from-env:25")
    settings = DeliverySettings(smtp_url="smtp://given:25", grpc_port=1234)
    assert (settings.smtp_url, settings.grpc_port) == ("smtp://given:25", 1234)


def test_service_settings_use_their_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_GRPC_PORT", "6000")
    assert DeliverySettings().grpc_port == 6000


def test_services_bind_loopback_and_run_outside_development_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NUDGE_BIND_HOST", raising=False)
    monkeypatch.delenv("NUDGE_DEV_MODE", raising=False)
    settings = DeliverySettings()
    assert (settings.bind_host, settings.dev_mode) == ("127.0.0.1", False)
    monkeypatch.setenv("NUDGE_BIND_HOST", "0.0.0.0")
    monkeypatch.setenv("NUDGE_DEV_MODE", "1")
    settings = DeliverySettings()
    assert (settings.bind_host, settings.dev_mode) == ("0.0.0.0", True)


def test_development_empty_and_short_secrets_are_named_by_their_variable() -> None:
    good = "x" * MIN_SECRET_LENGTH
    settings = DeliverySettings(internal_token="dev-internal-token", link_secret="")
    assert insecure_secrets(settings) == [
        "NUDGE_DATA_KEY is a known development value",
        "NUDGE_INTERNAL_TOKEN is a known development value",
        "NUDGE_LINK_SECRET is empty",
    ]
    settings = DeliverySettings(internal_token=good, link_secret=good[1:], data_key=good)
    assert insecure_secrets(settings) == [
        f"NUDGE_LINK_SECRET is shorter than {MIN_SECRET_LENGTH} characters"
    ]
    assert (
        insecure_secrets(DeliverySettings(internal_token=good, link_secret=good, data_key=good))
        == []
    )


def test_the_admin_token_may_be_empty_which_turns_create_workspace_off() -> None:
    good = "x" * MIN_SECRET_LENGTH
    assert insecure_secrets(ContactsSettings(internal_token=good, admin_token="")) == []
    assert insecure_secrets(ContactsSettings(internal_token=good, admin_token="dev-admin-token"))


def test_the_gateway_holds_redis_and_the_internal_token_but_no_other_credential() -> None:
    """Since the web console (issue 18): Redis for its sessions, and the internal token that a
    session's calls carry; still no database, Kafka or SMTP."""
    fields = set(GatewaySettings.model_fields)
    assert not fields & {"database_url", "kafka_bootstrap_servers", "smtp_url"}
    assert {"redis_url", "internal_token"} <= fields
    assert insecure_secrets(GatewaySettings()) == [
        "NUDGE_INTERNAL_TOKEN is a known development value"
    ]
    assert insecure_secrets(GatewaySettings(internal_token="x" * 32)) == []
