"""The trigger engine: ``python -m services.triggers`` serves gRPC (``TRIGGERS_GRPC_PORT``,
50054), relays its outbox and runs the Faust worker inside the common runtime (see
services/triggers/bootstrap.py for why Faust does not own the process)."""

from __future__ import annotations

import functools

from services.common.runtime import run_service
from services.triggers.bootstrap import start
from services.triggers.config import Settings


def main() -> None:
    settings = Settings()
    run_service("triggers", settings, functools.partial(start, settings=settings))


if __name__ == "__main__":
    main()
