"""Settings of the campaigns service (env prefix ``CAMPAIGNS_``)."""

from pydantic_settings import SettingsConfigDict

from services.common.config import (
    DatabaseSettings,
    InternalAuthSettings,
    KafkaSettings,
    RedisSettings,
)


# Kafka: read already, for delivery.requests.v1 (a later issue; see bootstrap.py).
class Settings(DatabaseSettings, RedisSettings, KafkaSettings, InternalAuthSettings):
    model_config = SettingsConfigDict(env_prefix="CAMPAIGNS_", extra="ignore", frozen=True)

    grpc_port: int = 50053

    # Content (issue 15): the platform's sender address, as delivery's ``from_address`` (the
    # same default), which previews show as "Workspace name <address>"; and how many test
    # sends a campaign may make in an hour (RESOURCE_EXHAUSTED beyond).
    from_address: str = "no-reply@nudge.localhost"
    test_sends_per_hour: int = 20
