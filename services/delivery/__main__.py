"""The delivery service: ``python -m services.delivery`` consumes delivery.requests.v1, mails
through ``SMTP_URL`` and serves gRPC on ``DELIVERY_GRPC_PORT`` (50055)."""

from services.common.runtime import run_service
from services.delivery.bootstrap import serve
from services.delivery.config import Settings


def main() -> None:
    settings = Settings()
    run_service("delivery", settings, lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
