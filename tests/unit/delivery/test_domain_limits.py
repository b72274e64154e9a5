"""Per recipient-domain limits: which limit a domain falls under, how the setting overrides
the defaults, and the rate schedule's slots (the clock is given, nothing sleeps)."""

from __future__ import annotations

import pytest

from services.delivery.domain.domain_limits import (
    DEFAULT_LIMIT,
    PROVIDERS,
    DomainLimit,
    DomainLimits,
    RateSchedule,
)


def test_a_providers_domains_share_one_limiter_and_other_domains_have_their_own() -> None:
    limits = DomainLimits.from_mapping({})
    assert limits.for_recipient("ada@gmail.com") == ("google", PROVIDERS["google"][1])
    assert limits.for_recipient("bob@GoogleMail.com.") == ("google", PROVIDERS["google"][1])
    assert limits.for_recipient("c@hotmail.com")[0] == limits.for_recipient("d@outlook.com")[0]
    assert limits.for_recipient("e@icloud.com")[0] == "apple"
    assert limits.for_recipient("f@yahoo.com")[0] == "yahoo"
    assert limits.for_recipient("g@shop.example") == ("shop.example", DEFAULT_LIMIT)
    assert limits.for_recipient("h@other.example") == ("other.example", DEFAULT_LIMIT)


def test_the_setting_overrides_providers_domains_and_the_default() -> None:
    limits = DomainLimits.from_mapping(
        {
            "google": {"per_second": 300},
            "default": {"max_connections": 2, "per_second": 5},
            "bench.example": {"max_connections": 64.0, "per_second": 5000},
            "hotmail.com": {"per_second": 1},
        }
    )
    assert limits.for_domain("gmail.com") == ("google", DomainLimit(20, 300))
    assert limits.for_domain("x.example") == ("x.example", DomainLimit(2, 5))
    assert limits.for_domain("bench.example") == ("bench.example", DomainLimit(64, 5000))
    # Named on its own: its own limiter, the rest of the provider keeps the provider's.
    assert limits.for_domain("hotmail.com") == ("hotmail.com", DomainLimit(2, 1))
    assert limits.for_domain("outlook.com") == ("microsoft", PROVIDERS["microsoft"][1])


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"google": {"per_second": 0}}, "google"),
        ({"google": {"per_second": -3}}, "google"),
        ({"default": {"max_connections": 0}}, "default"),
        ({"default": {"max_connections": 2.5}}, "default"),
        ({"default": {"max_connections": "many"}}, "default"),
        ({"google": {"per_minute": 5}}, "per_minute"),
        ({"not a domain": {"per_second": 5}}, "not a domain"),
        ({"localhost": {"per_second": 5}}, "localhost"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(
    config: dict[str, dict[str, float]], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        DomainLimits.from_mapping(config)


def test_the_schedule_lets_a_burst_go_then_spaces_the_rest_at_the_rate() -> None:
    schedule = RateSchedule(DomainLimit(max_connections=1, per_second=50))  # burst of 5
    delays = [schedule.reserve(now=100.0) for _ in range(8)]
    assert delays[:5] == [0.0] * 5
    assert delays[5:] == pytest.approx([0.02, 0.04, 0.06])
    # Over any long run, no more than the rate (plus the burst).
    schedule = RateSchedule(DomainLimit(max_connections=1, per_second=10))  # burst of 1
    go_at = [t + schedule.reserve(now=t) for t in (0.0, 0.01, 0.02, 0.5, 0.51, 3.0)]
    assert go_at == pytest.approx([0.0, 0.1, 0.2, 0.5, 0.6, 3.0])


def test_a_quiet_spell_does_not_save_up_more_than_the_burst() -> None:
    schedule = RateSchedule(DomainLimit(max_connections=1, per_second=20))  # burst of 2
    schedule.reserve(now=0.0)
    delays = [schedule.reserve(now=1000.0) for _ in range(4)]
    assert delays == pytest.approx([0.0, 0.0, 0.05, 0.10])


def test_the_service_reads_the_limits_from_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError

    from services.delivery.config import Settings

    monkeypatch.setenv(
        "DELIVERY_DOMAIN_LIMITS",
        '{"google": {"per_second": 250}, "shop.example": {"max_connections": 3}}',
    )
    limits = Settings().smtp_domain_limits()
    assert limits.for_domain("gmail.com") == ("google", DomainLimit(20, 250))
    assert limits.for_domain("shop.example") == ("shop.example", DomainLimit(3, 20))
    monkeypatch.setenv("DELIVERY_DOMAIN_LIMITS", '{"google": {"per_second": -1}}')
    with pytest.raises(ValidationError, match="per_second"):
        Settings()
    monkeypatch.delenv("DELIVERY_DOMAIN_LIMITS")
    assert Settings().smtp_domain_limits() == DomainLimits.from_mapping({})
