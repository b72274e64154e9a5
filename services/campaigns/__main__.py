"""The campaigns service: ``python -m services.campaigns`` serves gRPC on
``CAMPAIGNS_GRPC_PORT`` (50053); it asks segmentation (``NUDGE_SEGMENTATION_ADDR``) which
segments exist."""

from services.campaigns.bootstrap import serve
from services.campaigns.config import Settings
from services.common.runtime import run_service


def main() -> None:
    settings = Settings()
    run_service("campaigns", settings, lambda stop: serve(settings, stop))


if __name__ == "__main__":
    main()
