"""Settings of the delivery service (env prefix ``DELIVERY_``)."""

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.config import (
    DatabaseSettings,
    InternalAuthSettings,
    KafkaSettings,
    RedisSettings,
)
from services.delivery.guard import GuardSettings


class Settings(GuardSettings, DatabaseSettings, RedisSettings, KafkaSettings, InternalAuthSettings):
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
