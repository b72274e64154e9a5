"""The delivery service: ``python -m services.delivery`` consumes delivery.requests.v1, mails
through ``SMTP_URL`` and serves gRPC on ``DELIVERY_GRPC_PORT`` (50055)."""

import functools

from services.common.runtime import run_service
from services.delivery.bootstrap import start
from services.delivery.config import Settings


def main() -> None:
    settings = Settings()
    run_service("delivery", settings, functools.partial(start, settings=settings))


if __name__ == "__main__":
    main()
