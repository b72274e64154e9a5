"""Settings of the tracking service (env prefix ``TRACKING_``)."""

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.config import InternalAuthSettings, KafkaSettings


class Settings(KafkaSettings, InternalAuthSettings):
    """The internal token and ``NUDGE_CONTACTS_ADDR`` reach contacts for the preference page
    and the double opt-in confirmation."""

    model_config = SettingsConfigDict(env_prefix="TRACKING_", extra="ignore", frozen=True)

    http_port: int = 8081
    # Shared with delivery, which signs the links this service verifies.
    link_secret: str = Field(
        "dev-link-secret", validation_alias=AliasChoices("NUDGE_LINK_SECRET"), repr=False
    )
    # How long a hit may wait for Kafka before the visitor gets an answer anyway (opens,
    # clicks) or an error (unsubscribes, which must not be lost).
    publish_timeout_s: float = 5.0
    health_timeout_s: float = 2.0
