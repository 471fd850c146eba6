"""`config check [PATH]`: validate challenges.json and summarise it."""

from __future__ import annotations

import argparse
from typing import Any

from app.core.challenges import ChallengeConfig, load_config
from app.core.settings import Settings


def register(sub: Any) -> None:
    config = sub.add_parser("config", help="challenge config tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate challenges.json and summarise it")
    check.add_argument("path", nargs="?", help="file to check (default: CONFIG_PATH)")
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
    path = args.path or str(Settings.from_env().config_path)
    config = load_config(path)
    print(f"{path}: OK")
    print("\n".join(describe_config(config)))
    return 0
