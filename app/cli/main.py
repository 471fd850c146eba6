"""`python -m app <command>`: argument parsing and the exit-code contract.

Each command group is one module of `app.cli` with a `register(subparsers)`; a
command's handler returns the process exit code. Startup problems (bad settings, bad
config) print one line per problem and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from app.cli import bridge, config, db, demo, kafka, progress, replay
from app.core.challenges import ConfigError
from app.core.settings import SettingsError

COMMAND_GROUPS = (config, db, replay, progress, demo, bridge, kafka)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app", description="Challenge-progress event processor"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
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
