"""Settings of the delivery service (env prefix ``DELIVERY_``)."""

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.config import (
    DatabaseSettings,
    InternalAuthSettings,
    KafkaSettings,
    RedisSettings,
)
from services.delivery.domain.domain_limits import DomainLimits


class Settings(DatabaseSettings, RedisSettings, KafkaSettings, InternalAuthSettings):
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
