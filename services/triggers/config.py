"""Settings of the triggers service (env prefix ``TRIGGERS_``)."""

from pydantic_settings import SettingsConfigDict

from services.common.config import (
    DatabaseSettings,
    InternalAuthSettings,
    KafkaSettings,
    RedisSettings,
)


class Settings(DatabaseSettings, RedisSettings, KafkaSettings, InternalAuthSettings):
    model_config = SettingsConfigDict(env_prefix="TRIGGERS_", extra="ignore", frozen=True)

    grpc_port: int = 50054
    # Faust consumer group and app id; one per deployment.
    app_id: str = "nudge-triggers"
    # Faust keeps a little local state (its table stores); nothing in it is needed for
    # correctness, so a temporary directory is fine.
    data_dir: str = "/tmp/nudge-triggers"
    # How long the live workflows of a workspace are cached should the notification of a
    # publish or a pause be lost (it drops them at once: runtime/live_changes.py).
    live_workflows_ttl_s: float = 2.0
    # The timer loop's round interval (a timer written in-process wakes it earlier).
    timer_poll_s: float = 0.15
    # The agents take up to `batch_max` events at once (or what came within
    # `batch_within_s`), cut them in rounds of different contacts (one contact's events
    # strictly in order), and handle a round in transactions of at least `round_min` events,
    # up to `concurrency` transactions at a time (app.py).
    batch_max: int = 500
    batch_within_s: float = 0.05
    concurrency: int = 4
    round_min: int = 50
