"""The command line of the local stack.

python -m deploy.local run            # make run: infrastructure + every service
python -m deploy.local up             # make infra: infrastructure only, in the foreground
python -m deploy.local kafka          # make kafka: Kafka alone
python -m deploy.local mail [--last N]  # make mail: what the SMTP sink received
python -m deploy.local jaeger         # make jaeger: build Jaeger once (Go), print its path
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from deploy.local import jaeger, paths
from deploy.local.smtp_sink import MaildirReader, mail_reader, text_body
from deploy.local.stack import PARTS, LocalStack, fixed_ports, run_sync
from deploy.local.supervisor import (
    Interrupted,
    ignore_signals,
    run,
    stop_on_signals,
    wait_forever,
)
from deploy.local.topics import ensure_topics


def infra(parts: tuple[str, ...]) -> int:
    """Start the infrastructure (or only ``parts``) with the fixed ports and kept data,
    print the variables to export, and run until Ctrl-C."""
    stop_on_signals()
    stack = LocalStack(ports=fixed_ports(os.environ), persistent=True, parts=parts)
    try:
        env = stack.start()
        if "KAFKA_BOOTSTRAP_SERVERS" in env:
            run_sync(ensure_topics(env["KAFKA_BOOTSTRAP_SERVERS"]))
        print("# The infrastructure runs; in another shell:")
        for name, value in env.items():
            print(f"export {name}={shlex.quote(value)}")
        for warning in stack.warnings:
            print(f"# WARNING: {warning}")
        print(f"# logs in {paths.logs_dir()}; Ctrl-C stops it", flush=True)
        wait_forever()
    except Interrupted:
        pass
    except Exception as err:
        print(f"nudge: {err}", file=sys.stderr)
        return 1
    finally:
        ignore_signals()
        stack.stop()
    return 0


def mail(last: int) -> int:
    reader = mail_reader(os.environ) or MaildirReader(paths.data_dir("mail"))
    messages = reader.messages()
    if not messages:
        print("no mail yet")
        return 0
    shown = messages[-last:] if last > 0 else messages
    for message in shown:
        print("=" * 78)
        for header in ("Date", "From", "To", "Subject"):
            print(f"{header + ':':<9}{message.get(header, '')}")
        print()
        # The body as sent has CRLF line ends (SMTP's); a terminal wants LF.
        print(text_body(message).replace("\r\n", "\n").strip())
    print("=" * 78)
    print(f"{len(shown)} of {len(messages)} message(s)")
    return 0


def build_jaeger() -> int:
    """``make jaeger``: the one-off build (minutes), or the cached binary's path at once."""
    stop_on_signals()
    try:
        binary = jaeger.build_jaeger(
            paths.cache_dir(), paths.logs_dir() / "jaeger-build.log", out=sys.stderr
        )
    except Interrupted:
        print("nudge: the Jaeger build was interrupted; the next one starts over", file=sys.stderr)
        return 130
    except (jaeger.GoMissing, RuntimeError, OSError) as err:
        print(f"nudge: {err}", file=sys.stderr)
        return 1
    print(f"Jaeger {jaeger.JAEGER_VERSION}: {binary}")
    print("start it with the rest: make run TRACES=jaeger")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="infrastructure and every service (make run)")
    commands.add_parser("up", help="the infrastructure only, in the foreground (make infra)")
    commands.add_parser(
        "kafka", help="Kafka only: Apache Kafka with Java 17+ and Maven, else Tansu (make kafka)"
    )
    commands.add_parser("jaeger", help="build Jaeger v2 once with Go (make jaeger)")
    reading = commands.add_parser("mail", help="print the mail the SMTP sink received")
    reading.add_argument("--last", type=int, default=10, help="how many (0: all)")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run()
    if args.command == "up":
        return infra(PARTS)
    if args.command == "kafka":
        return infra(("kafka",))
    if args.command == "jaeger":
        return build_jaeger()
    return mail(args.last)


if __name__ == "__main__":
    sys.exit(main())
