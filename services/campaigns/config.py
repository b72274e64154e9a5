"""Settings of the campaigns service (env prefix ``CAMPAIGNS_``)."""

from pydantic_settings import SettingsConfigDict

from services.common.config import BaseServiceSettings


class Settings(BaseServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CAMPAIGNS_", extra="ignore", frozen=True)

    grpc_port: int = 50053
