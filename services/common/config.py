"""Typed settings, read once from the environment.

Every service has one ``Settings`` class that extends :class:`BaseServiceSettings` with its
own prefixed variables (``CONTACTS_GRPC_PORT``...) and with the mixins of what it uses
(:class:`DatabaseSettings`, :class:`RedisSettings`, :class:`KafkaSettings`,
:class:`InternalAuthSettings`). A service reads only the credentials it needs: the gateway,
which faces the internet, holds no database, Kafka or SMTP settings (since the web console
it reads Redis for its sessions, and the internal token a session's calls carry). The
variables services share (``DATABASE_URL``, ``KAFKA_BOOTSTRAP_SERVERS``...) are read
without a prefix, under the names the operators already know from docker-compose and
the README.

Secrets are the fields declared ``repr=False``. :func:`insecure_secrets` names those holding
a development value, nothing, or too little; the runtime refuses to start with any of them
unless ``NUDGE_DEV_MODE`` is set (``make run`` and the tests set it).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


# Values that ship in the code, the compose file or the docs: anyone can read them.
DEV_SECRETS = frozenset(
    {
        "dev-internal-token",
        "dev-link-secret",
        "dev-admin-token",
        "dev-data-key",
        "changeme",
        "secret",
    }
)
MIN_SECRET_LENGTH = 16


class BaseServiceSettings(BaseSettings):
    """What every Nudge service reads, the gateway included."""

    # No populate_by_name: it would make every aliased field readable from the environment
    # under a second, undocumented name (CONTACTS_DATABASE_URL...). __init__ below lets code
    # pass fields by name instead.
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    # Secrets that may be left empty, which turns off what they guard (no admin token: no
    # CreateWorkspace over gRPC).
    OPTIONAL_SECRETS: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **values: Any) -> None:
        aliases = {
            name: field.validation_alias.choices[0]
            for name, field in type(self).model_fields.items()
            if isinstance(field.validation_alias, AliasChoices)
        }
        super().__init__(**{str(aliases.get(k, k)): v for k, v in values.items()})

    # Where every gRPC server and HTTP listener binds. Loopback unless an operator opens it
    # (containers set 0.0.0.0): `make run` on a laptop must not serve the network.
    bind_host: str = Field("127.0.0.1", validation_alias=_env("NUDGE_BIND_HOST"))
    # Development (make run, the tests): the known development secrets are accepted.
    dev_mode: bool = Field(False, validation_alias=_env("NUDGE_DEV_MODE"))
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
    # Prometheus metrics (services/common/metrics.py) on this port, per service through its
    # prefix (CONTACTS_METRICS_PORT...; make run and the tests give each one); 0: none.
    metrics_port: int = 0
    # Shifts the clock of every component, so an operator can replay or a test can jump ahead.
    clock_offset_s: float = Field(0.0, validation_alias=_env("NUDGE_CLOCK_OFFSET_S"))
    # How often a service checks its own dependencies for its health report.
    health_interval_s: float = Field(5.0, validation_alias=_env("NUDGE_HEALTH_INTERVAL_S"))
    # The deadline of each of those checks.
    dependency_timeout_s: float = Field(2.0, validation_alias=_env("NUDGE_DEPENDENCY_TIMEOUT_S"))


class DatabaseSettings(BaseServiceSettings):
    database_url: str = Field(
        "postgresql://nudge@127.0.0.1:54329/nudge", validation_alias=_env("DATABASE_URL")
    )


class RedisSettings(BaseServiceSettings):
    redis_url: str = Field("redis://127.0.0.1:63799/0", validation_alias=_env("REDIS_URL"))


class KafkaSettings(BaseServiceSettings):
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:19092", validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS")
    )
    kafka_kind: str = Field("external", validation_alias=_env("NUDGE_KAFKA_KIND"))


class InternalAuthSettings(BaseServiceSettings):
    """Services that call each other, or accept such calls, with the internal token. Its
    holder may act as any workspace on every gRPC service, contacts included."""

    internal_token: str = Field(
        "dev-internal-token", validation_alias=_env("NUDGE_INTERNAL_TOKEN"), repr=False
    )


def secret_variables(settings: BaseServiceSettings) -> dict[str, str]:
    """The secret fields of ``settings`` (``repr=False``), by their environment variable."""
    found = {}
    for name, field in type(settings).model_fields.items():
        if field.repr:
            continue
        alias = field.validation_alias
        prefix = str(type(settings).model_config.get("env_prefix", ""))
        if isinstance(alias, AliasChoices):
            variable = str(alias.choices[0])
        else:
            variable = f"{prefix}{name}".upper()
        found[variable] = name
    return found


def insecure_secrets(settings: BaseServiceSettings) -> list[str]:
    """Why each secret of ``settings`` is unfit outside development, one line each, naming
    its variable (never its value). Empty when all are fit."""
    problems = []
    for variable, name in secret_variables(settings).items():
        value = str(getattr(settings, name))
        if not value:
            if name not in settings.OPTIONAL_SECRETS:
                problems.append(f"{variable} is empty")
        elif value in DEV_SECRETS or value.startswith("dev-"):
            problems.append(f"{variable} is a known development value")
        elif len(value) < MIN_SECRET_LENGTH:
            problems.append(f"{variable} is shorter than {MIN_SECRET_LENGTH} characters")
    return problems
