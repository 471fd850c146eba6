"""`config check [PATH]`: validate the challenge config and summarise it.

Without PATH it checks what `serve` would load: `CHALLENGES_JSON` when set, else the
`CONFIG_PATH` file, and says which one it checked."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from app.core.challenges import ChallengeConfig
from app.core.config_source import ConfigSource, config_source
from app.core.settings import Settings


def register(sub: Any) -> None:
    config = sub.add_parser("config", help="challenge config tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate challenges.json and summarise it")
    check.add_argument(
        "path", nargs="?", help="file to check (default: CHALLENGES_JSON, else CONFIG_PATH)"
    )
    check.set_defaults(handler=cmd_config_check)


def describe_config(config: ChallengeConfig) -> list[str]:
    lines = [f"{len(config.challenges)} challenges, {len(config.goals)} goals"]
    for challenge in config.challenges:
        rotation = (
            f" (rotates {challenge.rotation.schedule})" if challenge.rotation is not None else ""
        )
        lines.append(f"  {challenge.challenge_id}: {challenge.name}{rotation}")
        for goal in challenge.goals:
            source = goal.source if not goal.stat_code else f"{goal.source}:{goal.stat_code}"
            kind = f"{goal.kind}{' daily' if goal.daily else ''}"
            mode = " relative" if goal.relative else ""
            lines.append(f"    - {goal.goal_id} [{source}, {kind}{mode}, target {goal.target}]")
    lines.append(f"goal index: {len(config.index)} event keys")
    return lines


def cmd_config_check(args: argparse.Namespace) -> int:
    if args.path:
        source = ConfigSource(args.path, Path(args.path))
    else:
        source = config_source(Settings.from_env())
    config = source.load()
    where = "" if source.reloadable else " (from the environment; it wins over CONFIG_PATH)"
    print(f"{source.label}: OK{where}")
    print("\n".join(describe_config(config)))
    return 0
