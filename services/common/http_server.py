"""uvicorn for services started by :mod:`services.common.runtime`, minus its own signals.

:meth:`services.common.runtime.Service.serve_http` binds the socket and runs the server;
this class only keeps uvicorn's hands off SIGTERM and SIGINT, which the runtime owns (it
stops the listener and then closes everything else in reverse order).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn


class QuietSignalsServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
