"""The container probe, services.common.healthcheck: its arguments, and its answers against
a real gRPC health server and a real HTTP server started here, in-process, on free ports."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.healthcheck import HEALTHY, UNHEALTHY, main, parse_args
from tests.support import free_port

# ---- arguments ---------------------------------------------------------------------------


def test_grpc_probe_takes_a_host_and_port_and_asks_about_the_whole_server() -> None:
    args = parse_args(["grpc", "127.0.0.1:50051"])
    assert (args.kind, args.target, args.service, args.timeout) == (
        "grpc",
        "127.0.0.1:50051",
        "",
        3.0,
    )


def test_grpc_probe_may_ask_about_one_service_within_a_deadline() -> None:
    args = parse_args(["--timeout", "0.5", "grpc", "contacts:50051", "--service", "x.v1.S"])
    assert (args.target, args.service, args.timeout) == ("contacts:50051", "x.v1.S", 0.5)


def test_http_probe_takes_a_url() -> None:
    args = parse_args(["http", "http://127.0.0.1:8080/healthz"])
    assert (args.kind, args.url) == ("http", "http://127.0.0.1:8080/healthz")


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no kind
        ["tcp", "127.0.0.1:1"],  # no such kind
        ["grpc"],  # no target
        ["grpc", "127.0.0.1"],  # no port
        ["grpc", "127.0.0.1:http"],  # port not a number
        ["grpc", ":50051"],  # no host
        ["grpc", "127.0.0.1:70000"],  # port out of range
        ["http", "127.0.0.1:8080/healthz"],  # not a URL
        ["--timeout", "0", "http", "http://127.0.0.1:8080/healthz"],
    ],
)
def test_a_mistyped_probe_is_refused_rather_than_run(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2  # argparse's usage error: never 0, so never "healthy"


# ---- against real servers ----------------------------------------------------------------


@pytest.fixture
def grpc_health() -> Iterator[tuple[str, health.HealthServicer]]:
    """A gRPC server with only the standard health service, as build_server registers it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None)


def test_grpc_probe_is_healthy_only_while_the_server_says_serving(
    grpc_health: tuple[str, health.HealthServicer],
) -> None:
    target, servicer = grpc_health
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert main(["grpc", target]) == HEALTHY
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert main(["grpc", target]) == UNHEALTHY


def test_grpc_probe_of_an_unknown_service_is_unhealthy(
    grpc_health: tuple[str, health.HealthServicer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    target, servicer = grpc_health
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert main(["grpc", target, "--service", "nudge.nothing.v1.Nothing"]) == UNHEALTHY
    assert "NOT_FOUND" in capsys.readouterr().err


def test_grpc_probe_of_a_closed_port_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--timeout", "1", "grpc", f"127.0.0.1:{free_port()}"]) == UNHEALTHY
    assert "unhealthy" in capsys.readouterr().err


class _Healthz(http.server.BaseHTTPRequestHandler):
    """/healthz answers with the status the test put on the server; anything else 404."""

    def do_GET(self) -> None:
        status = getattr(self.server, "status", 200) if self.path == "/healthz" else 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep the test output clean
        pass


@pytest.fixture
def http_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(("status", "expected"), [(200, HEALTHY), (503, UNHEALTHY)])
def test_http_probe_is_healthy_on_200_only(
    http_server: http.server.HTTPServer, status: int, expected: int
) -> None:
    http_server.status = status  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{http_server.server_address[1]}/healthz"
    assert main(["http", url]) == expected


def test_http_probe_of_a_missing_path_or_closed_port_is_unhealthy(
    http_server: http.server.HTTPServer,
) -> None:
    assert main(["http", f"http://127.0.0.1:{http_server.server_address[1]}/nope"]) == UNHEALTHY
    assert main(["--timeout", "1", "http", f"http://127.0.0.1:{free_port()}/healthz"]) == UNHEALTHY
