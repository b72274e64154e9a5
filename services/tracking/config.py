"""Settings of the tracking service (env prefix ``TRACKING_``)."""

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.config import InternalAuthSettings, KafkaSettings, RedisSettings


class Settings(KafkaSettings, RedisSettings, InternalAuthSettings):
    """The internal token and ``NUDGE_CONTACTS_ADDR`` reach contacts for the preference page
    and the double opt-in confirmation; Redis holds the recent clicks of each mail (the "every
    link clicked at once" rule)."""

    model_config = SettingsConfigDict(env_prefix="TRACKING_", extra="ignore", frozen=True)

    http_port: int = 8081
    # Shared with delivery, which signs the links this service verifies.
    link_secret: str = Field(
        "dev-link-secret", validation_alias=AliasChoices("NUDGE_LINK_SECRET"), repr=False
    )
    # How long an unsubscribe may wait for Kafka before the visitor is asked to retry (it
    # must not be lost). Opens and clicks never wait: they go through the buffer below.
    publish_timeout_s: float = 5.0
    health_timeout_s: float = 2.0
    # Opens and clicks waiting for Kafka, at most; beyond it the oldest are dropped (counted
    # and logged): memory stays bounded through a Kafka outage and the freshest hits survive.
    buffer_capacity: int = Field(50_000, ge=100)
    # How long the producer waits to fill a batch (aiokafka linger): nobody waits on it.
    kafka_linger_ms: int = Field(5, ge=0, le=1000)
    # Machine opens and clicks (docs/tracking.md). A hit sooner than this after the mail's
    # issue time cannot be a reader's: the mail has barely reached the mailbox.
    too_soon_s: float = Field(2.0, ge=0)
    # "Every link clicked at once": this many distinct links of one mail within the window.
    burst_links: int = Field(3, ge=2)
    burst_window_s: float = Field(3.0, gt=0)
    # How long the Redis step of a batch may take before the burst rule is skipped for it.
    redis_timeout_s: float = Field(0.5, gt=0)
    # The share of open and click requests traced (those carrying a sampled traceparent
    # always are): a span per pixel would cost more than the pixel.
    trace_sample_rate: float = Field(0.01, ge=0, le=1)
    # Proxies whose X-Forwarded-For is believed (CIDRs); the socket's peer otherwise.
    trusted_proxies: list[str] = ["127.0.0.1/32", "::1/128"]
    # More scanner or proxy networks (CIDRs) on top of the built-in list.
    machine_networks: list[str] = []
