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
