"""The HTTP gateway for managers and frontends.

    python -m services.gateway         # serve HTTP on GATEWAY_HTTP_PORT (8080); docs at /docs

It owns no data: each route calls a service over gRPC with the caller's API key.
"""

from __future__ import annotations

import functools

from services.common.runtime import run_service
from services.gateway.bootstrap import start
from services.gateway.config import Settings


def main() -> None:
    settings = Settings()
    run_service("gateway", settings, functools.partial(start, settings=settings))


if __name__ == "__main__":
    main()
