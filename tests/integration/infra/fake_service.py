"""A stand-in for a Nudge service, for the tests of ServiceGroup: serves ``/healthz`` on
``FAKE_SERVICE_HTTP_PORT`` (the ``<NAME>_HTTP_PORT`` a ServiceGroup checks before it
starts a service), says hello, and stops on SIGTERM like the real ones."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["FAKE_SERVICE_HTTP_PORT"])), Health)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    print(f"fake service up, secret length {len(os.environ['NUDGE_LINK_SECRET'])}")
    sys.stdout.flush()
    server.serve_forever()
    print("fake service stopped")


if __name__ == "__main__":
    main()
