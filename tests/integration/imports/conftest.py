"""The gateway in front of the real contacts service, shared with the gateway tests."""

from tests.integration.gateway.conftest import gateway
from tests.integration.tracking.conftest import spans, tracking_service

__all__ = ["gateway", "spans", "tracking_service"]
