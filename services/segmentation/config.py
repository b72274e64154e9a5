"""Settings of the segmentation service (env prefix ``SEGMENTATION_``)."""

from pydantic import Field
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
    # The most consumer records one read-model transaction applies (ReadModelWriter); 1
    # applies each record in its own transaction (for comparison in the benchmark).
    apply_batch_max: int = Field(1000, ge=1, le=10_000)
    # Membership sweeper (services/segmentation/sweeper.py): profiles claimed per transaction,
    # and the longest sleep before looking again for due times set by another replica.
    sweep_batch: int = Field(1000, ge=1, le=10_000)
    sweep_max_sleep_s: float = Field(1.0, gt=0, le=60)
    # Where membership transitions go (docs/segment-membership.md): a rebuild into a new
    # schema sets a scratch topic, so that its replayed transitions do not reach consumers.
    membership_topic: str = Field("segments.membership.v1", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    # Where the read model lives and which Kafka consumer group feeds it. A rebuild runs a
    # second instance with a new (empty) schema and a new group, which reads every topic
    # from the earliest offset (docs/segmentation-read-model.md, "Rebuilding").
    database_schema: str = Field("segmentation", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    consumer_group: str = Field("segmentation", min_length=1, max_length=200)
