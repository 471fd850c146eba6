"""`python -m app <command>`: argument parsing and the exit-code contract.

Each command group is one module of `app.cli` with a `register(subparsers)`; a
command's handler returns the process exit code. Startup problems (bad settings, bad
config) print one line per problem and exit 2, without a traceback. Only the module of
the command being run is imported (`config check` need not load Faust and gRPC); `--help`
and unknown commands load them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from app.core.challenges import ConfigError
from app.core.settings import SettingsError

# command -> the module of its group (the order is the order of `--help`)
COMMANDS = {
    "config": "app.cli.config",
    "db": "app.cli.db",
    "replay": "app.cli.replay",
    "progress": "app.cli.progress",
    "completions": "app.cli.completions",
    "demo": "app.cli.demo",
    "serve": "app.cli.bridge",
    "send": "app.cli.bridge",
    "worker": "app.cli.kafka",
    "produce": "app.cli.kafka",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command group, or only the group of `command`."""
    parser = argparse.ArgumentParser(
        prog="python -m app", description="Challenge-progress event processor"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for group in groups:
        importlib.import_module(group).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (SettingsError, ConfigError) as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
