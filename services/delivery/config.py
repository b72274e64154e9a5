"""Settings of the delivery service (env prefix ``DELIVERY_``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.config import (
    DatabaseSettings,
    InternalAuthSettings,
    KafkaSettings,
    RedisSettings,
)
from services.delivery.auth_config import AuthSettings
from services.delivery.domain.domain_limits import DomainLimits
from services.delivery.guard import GuardSettings


class Settings(
    GuardSettings,
    DatabaseSettings,
    RedisSettings,
    KafkaSettings,
    InternalAuthSettings,
    AuthSettings,
):
    model_config = SettingsConfigDict(env_prefix="DELIVERY_", extra="ignore", frozen=True)

    grpc_port: int = 50055
    smtp_url: str = Field("smtp://127.0.0.1:2525", validation_alias=AliasChoices("SMTP_URL"))
    # Mail goes out from the platform's no-reply address, named after the workspace.
    from_address: str = "no-reply@nudge.localhost"
    tracking_url: str = Field(
        "http://127.0.0.1:8081", validation_alias=AliasChoices("NUDGE_TRACKING_URL")
    )
    link_secret: str = Field(
        "dev-link-secret", validation_alias=AliasChoices("NUDGE_LINK_SECRET"), repr=False
    )
    smtp_timeout_s: float = 30.0
    # An open pixel and tracked links in every campaign and automation mail.
    track_opens_and_clicks: bool = True

    # Requests handled at once, across contacts; one contact's requests stay in order.
    concurrency: int = Field(64, ge=1, le=1024)
    # Claims and outcomes of concurrent requests are written in groups (one statement per
    # group, services/delivery/writes.py): at most write_group_max in a group, at most
    # write_groups_in_flight groups being written at once (others gather meanwhile).
    write_group_max: int = Field(500, ge=1, le=10_000)
    write_groups_in_flight: int = Field(4, ge=1, le=64)
    # Deferred mail (4xx, a connection broken before the data): tried again with exponential
    # backoff and jitter, from retry_base_delay_s up to retry_max_delay_s, at most
    # retry_max_attempts attempts in all and never after retry_max_age_s; then FAILED.
    retry_max_attempts: int = Field(8, ge=1)
    retry_max_age_s: float = Field(2 * 24 * 3600.0, gt=0)
    retry_base_delay_s: float = Field(60.0, gt=0)
    retry_max_delay_s: float = Field(3600.0, gt=0)
    retry_poll_interval_s: float = Field(1.0, gt=0)
    # A message CLAIMED for longer than this (a crash between the claim and the server's
    # answer) is reported UNKNOWN by the sweeper. Never less than 6 x smtp_timeout_s in
    # effect (sweep_after_s: connect, EHLO, MAIL, RCPT, DATA and its answer may each take
    # up to the timeout): a claim that old cannot still be waiting for its answer.
    claim_timeout_s: float = Field(300.0, gt=0)
    sweep_interval_s: float = Field(5.0, gt=0)
    # Which kinds of mail left UNKNOWN are sent again, with the same Message-ID: a duplicate
    # receipt is harmless, a missing password reset is not. Campaign and automation mail is
    # never sent twice (comma-separated: transactional, campaign, automation).
    resend_unknown_kinds: str = "transactional"
    # After a session or configuration error (login, sender or TLS refused, relay away),
    # the consumer pauses; the paused request is tried again with backoff up to this.
    pause_max_backoff_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _known_kinds(self) -> Settings:
        kinds = {k.strip() for k in self.resend_unknown_kinds.split(",") if k.strip()}
        if not kinds <= {"transactional", "campaign", "automation"}:
            raise ValueError("resend_unknown_kinds: transactional, campaign, automation")
        return self

    @property
    def sweep_after_s(self) -> float:
        return max(self.claim_timeout_s, self.smtp_timeout_s * 6)

    @property
    def resend_kinds(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.resend_unknown_kinds.split(",") if k.strip())

    # The SMTP pool (services/delivery/adapters/smtp_pool.py): connections to the relay in
    # all, messages per connection, and per recipient-domain limits as JSON, e.g.
    # {"google": {"max_connections": 20, "per_second": 100}, "default": {"per_second": 20}}
    # (services/delivery/domain/domain_limits.py names the providers and the defaults).
    smtp_max_connections: int = Field(16, ge=1, le=1000)
    smtp_max_messages_per_connection: int = Field(100, ge=1)
    smtp_idle_timeout_s: float = Field(30.0, gt=0)
    domain_limits: dict[str, dict[str, float]] = Field(default_factory=dict)

    @field_validator("domain_limits")
    @classmethod
    def _domain_limits_valid(
        cls, value: dict[str, dict[str, float]]
    ) -> dict[str, dict[str, float]]:
        DomainLimits.from_mapping(value)  # a typo fails the start-up, not the sending
        return value

    def smtp_domain_limits(self) -> DomainLimits:
        return DomainLimits.from_mapping(self.domain_limits)
