"""Settings of the segmentation service (env prefix ``SEGMENTATION_``)."""

from pydantic_settings import SettingsConfigDict

from services.common.config import (
    DatabaseSettings,
    InternalAuthSettings,
    KafkaSettings,
    RedisSettings,
)


class Settings(DatabaseSettings, RedisSettings, KafkaSettings, InternalAuthSettings):
    model_config = SettingsConfigDict(env_prefix="SEGMENTATION_", extra="ignore", frozen=True)

    grpc_port: int = 50052
