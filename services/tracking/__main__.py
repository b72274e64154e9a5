"""The tracking service: open pixel, click redirects, one-click unsubscribe, preference page.

    python -m services.tracking        # serve HTTP on TRACKING_HTTP_PORT (8081)

Links are signed by delivery with ``NUDGE_LINK_SECRET`` (see services/common/links.py);
hits are published on tracking.events.v1.
"""

from __future__ import annotations

import functools

from services.common.runtime import run_service
from services.tracking.bootstrap import start
from services.tracking.config import Settings


def main() -> None:
    settings = Settings()
    run_service("tracking", settings, functools.partial(start, settings=settings))


if __name__ == "__main__":
    main()
