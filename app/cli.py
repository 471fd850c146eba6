"""`python -m app <command>`: argument parsing and the exit-code contract.

Commands live in `app/commands/*` modules, each with a `register(subparsers)`; a
command's handler returns the process exit code. Startup problems (bad settings, bad
config) print one line per problem and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from app.challenges import ConfigError
from app.settings import SettingsError

COMMAND_MODULES = ("app.commands.core", "app.commands.grpc", "app.commands.kafka")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app", description="Challenge-progress event processor"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (SettingsError, ConfigError) as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
