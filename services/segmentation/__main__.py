"""The segmentation service: ``python -m services.segmentation`` keeps the contact read model
from contacts.events.v1 and shop.events.v1 and serves gRPC on ``SEGMENTATION_GRPC_PORT``
(50052)."""

import functools

from services.common.runtime import run_service
from services.segmentation.bootstrap import start
from services.segmentation.config import Settings


def main() -> None:
    settings = Settings()
    run_service("segmentation", settings, functools.partial(start, settings=settings))


if __name__ == "__main__":
    main()
