"""The campaigns service: ``python -m services.campaigns`` serves gRPC on
``CAMPAIGNS_GRPC_PORT`` (50053); it asks segmentation (``NUDGE_SEGMENTATION_ADDR``) which
segments exist."""

import functools

from services.campaigns.bootstrap import start
from services.campaigns.config import Settings
from services.common.runtime import run_service


def main() -> None:
    settings = Settings()
    run_service("campaigns", settings, functools.partial(start, settings=settings))


if __name__ == "__main__":
    main()
