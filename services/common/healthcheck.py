"""Container health probes, for docker compose (and any orchestrator that runs a command).

    python -m services.common.healthcheck grpc 127.0.0.1:50051 [--service NAME]
    python -m services.common.healthcheck http http://127.0.0.1:8080/healthz

Exits 0 when the gRPC health service answers SERVING (``grpc.health.v1``, every Nudge gRPC
server has it) or the URL answers 200, and 1 otherwise, with the reason on stderr (docker
keeps it in ``docker inspect``). The image is python:3.11-slim, with neither curl nor
grpc_health_probe, so the probe is written with what the image already has: the standard
library and grpcio-health-checking.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

HEALTHY, UNHEALTHY = 0, 1
DEFAULT_TIMEOUT_S = 3.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.healthcheck",
        description="Exit 0 if a gRPC server is SERVING or an HTTP endpoint answers 200.",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds (default: %(default)s)"
    )
    kinds = parser.add_subparsers(dest="kind", required=True)
    grpc_parser = kinds.add_parser("grpc", help="ask grpc.health.v1.Health/Check")
    grpc_parser.add_argument("target", type=_host_port, help="HOST:PORT")
    grpc_parser.add_argument(
        "--service", default="", help="service name to ask about (default: the whole server)"
    )
    http_parser = kinds.add_parser("http", help="GET a URL, healthy on 200")
    http_parser.add_argument("url", type=_http_url, help="http(s)://HOST:PORT/PATH")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected an http(s):// URL, got {value!r}")
    return value


def check_grpc(target: str, service: str, timeout: float) -> str | None:
    """None when ``target`` reports ``service`` SERVING, else why not."""
    # Imported here so that the HTTP probe, run every few seconds, does not pay for grpc.
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # A proxy from the environment must not stand between a container and itself.
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            return f"{target}: {err.code().name}: {err.details()}"
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return f"{target}: {status}"
    return None


def check_http(url: str, timeout: float) -> str | None:
    """None when ``url`` answers 200, else why not."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as err:  # 4xx and 5xx: /healthz says 503 when degraded
        return f"{url}: HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        return f"{url}: {err}"
    return None if status == 200 else f"{url}: HTTP {status}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.kind == "grpc":
        problem = check_grpc(args.target, args.service, args.timeout)
    else:
        problem = check_http(args.url, args.timeout)
    if problem is not None:
        sys.stderr.write(f"unhealthy: {problem}\n")
        return UNHEALTHY
    return HEALTHY


if __name__ == "__main__":
    sys.exit(main())
