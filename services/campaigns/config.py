"""Settings of the campaigns service (env prefix ``CAMPAIGNS_``)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.config import (
    DatabaseSettings,
    InternalAuthSettings,
    KafkaSettings,
    RedisSettings,
)
from services.common.topics import DELIVERY_REQUESTS


# Kafka: the fan-out writes delivery.requests.v1 (services/campaigns/fanout.py).
class Settings(DatabaseSettings, RedisSettings, KafkaSettings, InternalAuthSettings):
    model_config = SettingsConfigDict(env_prefix="CAMPAIGNS_", extra="ignore", frozen=True)

    grpc_port: int = 50053
    # The fan-out (services/campaigns/fanout.py): contacts per batch (one checkpoint each;
    # segmentation streams at most 5,000), how often it looks for SENDING campaigns, and how
    # many campaigns one process fans out at once (each holds up to three of the pool's ten
    # connections: its advisory lock, a batch's rows, the batch before's checkpoint).
    fanout_batch_size: int = Field(2000, ge=1, le=5000)
    fanout_poll_interval_s: float = Field(0.5, gt=0)
    fanout_concurrency: int = Field(2, ge=1)
    # Where the fan-out writes. Only the fan-out's own tests change it: their thousands of
    # records stay off the topic that other tests' delivery services consume.
    fanout_topic: str = DELIVERY_REQUESTS

    # Content (issue 15): the platform's sender address, as delivery's ``from_address`` (the
    # same default), which previews show as "Workspace name <address>"; and how many test
    # sends a campaign may make in an hour (RESOURCE_EXHAUSTED beyond).
    from_address: str = "no-reply@nudge.localhost"
    test_sends_per_hour: int = 20
