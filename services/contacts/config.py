"""Settings of the contacts service (env prefix ``CONTACTS_``)."""

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.config import (
    DatabaseSettings,
    InternalAuthSettings,
    KafkaSettings,
    RedisSettings,
)


# Redis: the API-key cache the other services read. Contacts writes a revoked key's
# tombstone there and confirms its own in-process cache against it (services/contacts/keys.py).
class Settings(DatabaseSettings, KafkaSettings, InternalAuthSettings, RedisSettings):
    model_config = SettingsConfigDict(env_prefix="CONTACTS_", extra="ignore", frozen=True)

    OPTIONAL_SECRETS = frozenset({"admin_token"})  # empty: CreateWorkspace is turned off

    grpc_port: int = 50051
    # Operators create workspaces with this token (or with the CLI, which needs the database).
    admin_token: str = Field("", validation_alias=AliasChoices("NUDGE_ADMIN_TOKEN"), repr=False)
    # How long an export waits for each other service's part before naming it incomplete.
    privacy_export_timeout_s: float = 5.0
    # Rows per transaction of a bulk import (services/contacts/imports).
    import_batch_rows: int = Field(20_000, ge=1, le=100_000)
