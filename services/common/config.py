"""Typed settings, read once from the environment.

Every service has one ``Settings`` class that extends :class:`BaseServiceSettings` with its
own prefixed variables (``CONTACTS_GRPC_PORT``...). The variables every service shares
(``DATABASE_URL``, ``KAFKA_BOOTSTRAP_SERVERS``...) are read without a prefix, under the
names the operators already know from docker-compose and the README.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class BaseServiceSettings(BaseSettings):
    """What every Nudge service reads."""

    # No populate_by_name: it would make every aliased field readable from the environment
    # under a second, undocumented name (CONTACTS_DATABASE_URL...). __init__ below lets code
    # pass fields by name instead.
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    def __init__(self, **values: Any) -> None:
        aliases = {
            name: field.validation_alias.choices[0]
            for name, field in type(self).model_fields.items()
            if isinstance(field.validation_alias, AliasChoices)
        }
        super().__init__(**{str(aliases.get(k, k)): v for k, v in values.items()})

    database_url: str = Field(
        "postgresql://nudge@127.0.0.1:54329/nudge", validation_alias=_env("DATABASE_URL")
    )
    redis_url: str = Field("redis://127.0.0.1:63799/0", validation_alias=_env("REDIS_URL"))
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:19092", validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS")
    )
    kafka_kind: str = Field("external", validation_alias=_env("NUDGE_KAFKA_KIND"))
    internal_token: str = Field(
        "dev-internal-token", validation_alias=_env("NUDGE_INTERNAL_TOKEN"), repr=False
    )
    log_level: str = Field("INFO", validation_alias=_env("NUDGE_LOG_LEVEL"))
    log_format: str = Field("json", validation_alias=_env("NUDGE_LOG_FORMAT"))
    otlp_endpoint: str = Field("", validation_alias=_env("OTEL_EXPORTER_OTLP_ENDPOINT"))
    traces_dir: str = Field("", validation_alias=_env("NUDGE_TRACES_DIR"))
    contacts_addr: str = Field("127.0.0.1:50051", validation_alias=_env("NUDGE_CONTACTS_ADDR"))
    segmentation_addr: str = Field(
        "127.0.0.1:50052", validation_alias=_env("NUDGE_SEGMENTATION_ADDR")
    )
    campaigns_addr: str = Field("127.0.0.1:50053", validation_alias=_env("NUDGE_CAMPAIGNS_ADDR"))
    triggers_addr: str = Field("127.0.0.1:50054", validation_alias=_env("NUDGE_TRIGGERS_ADDR"))
    delivery_addr: str = Field("127.0.0.1:50055", validation_alias=_env("NUDGE_DELIVERY_ADDR"))
    # Shifts the clock of every component, so an operator can replay or a test can jump ahead.
    clock_offset_s: float = Field(0.0, validation_alias=_env("NUDGE_CLOCK_OFFSET_S"))
