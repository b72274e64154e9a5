"""The trigger engine: ``python -m services.triggers`` runs the Faust worker with its gRPC
sidecar (``TRIGGERS_GRPC_PORT``, 50054) and outbox relay."""

from __future__ import annotations

import faust

from services.common.runtime import configure
from services.triggers.app import create_app
from services.triggers.config import Settings


def main() -> None:
    settings = Settings()
    configure("triggers", settings)
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
