"""Settings of delivery's mail authentication (env prefix ``DELIVERY_``): VERP bounces, the
inbound endpoint for DSNs and feedback-loop reports, and the DKIM key cache
(docs/delivery-auth.md). A mixin of :class:`services.delivery.config.Settings`."""

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings


class AuthSettings(BaseSettings):
    # The domain of every mail's VERP envelope sender (bounces+<token>@<domain>): its MX must
    # point at the inbound endpoint below. Empty: the domain of from_address.
    bounce_domain: str = ""
    # The inbound SMTP endpoint (aiosmtpd) for bounces and complaints; 0 = not started.
    inbound_smtp_port: int = 0
    # Larger reports are refused at DATA (SMTP SIZE, 552): a DSN or ARF report quotes one mail.
    inbound_max_message_bytes: int = 10 * 1024 * 1024
    # A DKIM key set or deleted is used by every delivery process within this time.
    dkim_key_cache_s: float = 10.0
    # Seals the DKIM private keys at rest (services/delivery/domain/sealing.py). Changing it
    # makes the stored keys unreadable: set them again afterwards.
    data_key: str = Field(
        "dev-data-key", validation_alias=AliasChoices("NUDGE_DATA_KEY"), repr=False
    )
