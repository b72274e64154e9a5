import pytest

from services.contacts.config import Settings as ContactsSettings
from services.delivery.config import Settings as DeliverySettings


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
