"""Settings of the gateway (env prefix ``GATEWAY_``).

Since the web console (issue 18) the gateway reads Redis (its sessions and the login
throttle, sessions.py) and the internal token (a session's calls act for its workspace with
it, as services do for each other); it still holds no database, Kafka or SMTP settings.
"""

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.common.config import InternalAuthSettings, RedisSettings


class Settings(RedisSettings, InternalAuthSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    http_port: int = 8080
    # Bodies above this are refused (413) before they are parsed.
    max_body_bytes: int = 65536
    # The same for POST /v1/events:batch (up to 1,000 events); at most the 1 MiB a gRPC
    # message to the services may hold.
    max_batch_body_bytes: int = 1_048_576
    # Deadline of each gRPC call to a service.
    rpc_timeout_s: float = 10.0
    # Deadline of each service's health answer for /healthz (they are asked concurrently).
    health_timeout_s: float = 2.0
    # How long a /healthz report is reused: it needs no credentials and asks every service,
    # so a flood of requests must not reach them. 0: never.
    health_cache_s: float = 1.0
    # Where /healthz asks tracking, from inside the network; not the public base of the links
    # in the mail (NUDGE_TRACKING_URL, delivery's), which the reader's browser opens.
    tracking_url: str = "http://127.0.0.1:8081"
    # Jaeger's UI, for the trace link in the story of a mail (GET /v1/messages/{id}?explain=true).
    jaeger_url: str = Field(
        "http://127.0.0.1:16686", validation_alias=AliasChoices("NUDGE_JAEGER_URL")
    )
    # The console's sessions (sessions.py): they end after this long without a request, and
    # in any case this long after sign-in (at most 12 h: contacts' "manager removed" marker
    # outlives every session by an hour, services/common/auth.py).
    session_idle_s: int = 1800
    session_max_s: int = 43200
    # Sign-in throttle: this many failures for one e-mail, or from one client address (an
    # office's managers share theirs), within the window, and sign-in answers 429 until the
    # window ends.
    login_max_failures: int = 5
    login_max_failures_per_address: int = 20
    login_window_s: int = 900
