"""gRPC bridge commands: `serve` (the Extend event handler) and `send` (a test client)."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from app.bridge.client import login_message, send, stat_message
from app.bridge.gdpr import gdpr_message
from app.bridge.service import serve
from app.bridge.workers import supervise
from app.core.config_source import config_source
from app.core.settings import Settings
from app.observability import tracing
from app.observability.logs import setup_logging
from app.observability.metrics import serve_metrics


def register(sub: Any) -> None:
    serve_cmd = sub.add_parser("serve", help="run the gRPC server for the AccelByte Extend bridge")
    serve_cmd.set_defaults(handler=cmd_serve)

    send_cmd = sub.add_parser("send", help="send one event to a running gRPC server")
    send_cmd.add_argument(
        "--target",
        default=f"localhost:{os.environ.get('GRPC_PORT') or 6565}",
        help="host:port of the server (default localhost:$GRPC_PORT)",
    )
    send_cmd.add_argument("--timeout", type=float, default=30.0, help="call deadline, seconds")
    kinds = send_cmd.add_subparsers(dest="kind", required=True)
    login = kinds.add_parser("login", help="a UserLoggedIn event")
    stat = kinds.add_parser("stat", help="a StatItemUpdated event")
    gdpr = kinds.add_parser("gdpr", help="a GDPR account deletion (deletes the user's rows)")
    for parser in (login, stat, gdpr):
        parser.add_argument("--user", required=True, help="user id")
        parser.add_argument(
            "--namespace", help="event namespace (default $AB_NAMESPACE, else 'mygame')"
        )
        parser.add_argument("--id", help="event id (default: random; repeat it to redeliver)")
        parser.add_argument("--timestamp", default="", help="RFC 3339 event time (default: none)")
    stat.add_argument("--code", required=True, help="stat code")
    stat.add_argument("--value", type=float, required=True, help="latest value")
    stat.add_argument("--inc", type=float, default=0.0, help="increment")
    send_cmd.set_defaults(handler=cmd_send)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    settings.require_namespace()
    settings.require_database()
    setup_logging(settings.log_level, settings.log_format)
    config = config_source(settings).load()  # ConfigError -> exit 2 (cli.main)
    if settings.grpc_workers > 1:
        return supervise(settings)
    tracing.setup(settings.otel_zipkin_endpoint, settings.otel_service_name)  # per worker
    if not settings.grpc_supervised:  # supervised workers: the supervisor serves /metrics
        serve_metrics(settings.metrics_port)
    return asyncio.run(serve(settings, config))


def cmd_send(args: argparse.Namespace) -> int:
    namespace = args.namespace or os.environ.get("AB_NAMESPACE") or "mygame"
    if args.kind == "gdpr":
        message = gdpr_message(args.user, namespace, args.id)
    elif args.kind == "login":
        message = login_message(args.user, namespace, args.id, args.timestamp)
    else:
        message = stat_message(
            args.user, namespace, args.code, args.value, args.inc, args.id, args.timestamp
        )
    result = send(args.target, message, timeout=args.timeout)
    print(result.describe())
    return 0 if result.code.name == "OK" else 1
