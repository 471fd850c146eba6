"""`replay FILE.jsonl` and `replay --topic T [--from-offset N | --from-time ISO]`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from app.core.clock import utc_naive
from app.core.config_source import config_source
from app.core.settings import Settings, SettingsError
from app.kafka.replay import replay_range
from app.lifecycle import settle_heap
from app.observability.logs import setup_logging
from app.pipeline import running
from app.replay import ReplaySummary, replay_file

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    replay = sub.add_parser(
        "replay", help="re-process events from a JSON-lines file (or a Kafka topic range)"
    )
    replay.add_argument("file", nargs="?", help="JSON-lines file, one event per line")
    replay.add_argument("--topic", help="Kafka topic to replay instead of a file")
    start = replay.add_mutually_exclusive_group()
    start.add_argument("--from-offset", type=int, help="first offset (every partition)")
    start.add_argument(
        "--from-time", help="first record time, ISO 8601 (e.g. 2026-11-20T00:00:00Z)"
    )
    replay.add_argument("--to-time", help="stop before this record time (default: the end now)")
    replay.set_defaults(handler=cmd_replay)


async def run_file(settings: Settings, path: Path) -> ReplaySummary:
    config = config_source(settings).load()
    async with running(settings, config) as pipeline:
        return await replay_file(pipeline, path)


def parse_time(name: str, raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SettingsError(f"{name}: not an ISO 8601 time: {raw!r}") from None
    return utc_naive(moment)


def replay_topic(settings: Settings, args: argparse.Namespace) -> int:
    """Re-process a topic range through the core pipeline; commits no group offsets."""
    start_time = parse_time("--from-time", args.from_time)
    end_time = parse_time("--to-time", args.to_time)
    if args.from_offset is not None and args.from_offset < 0:
        raise SettingsError("--from-offset: must be >= 0")
    config = config_source(settings).load()
    summary = asyncio.run(
        replay_range(
            settings,
            config,
            args.topic,
            from_offset=args.from_offset,
            from_time=start_time,
            to_time=end_time,
        )
    )
    print("\n".join(summary.report()))
    return 0


def log_start(settings: Settings, what: str) -> None:
    """The start line names the input, the database the rows go to and the config."""
    log.info(
        "replay starting",
        extra={
            "input": what,
            "database": settings.database_label,
            "config": config_source(settings).label,
        },
    )


def cmd_replay(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    settle_heap()  # a replay holds many events at once: the collector tuned for it
    if args.topic:
        log_start(settings, f"topic {args.topic}")
        return replay_topic(settings, args)
    if not args.file:
        print("error: give a JSON-lines FILE or --topic TOPIC", file=sys.stderr)
        return 2
    path = Path(args.file)
    if not path.is_file():
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    log_start(settings, str(path))
    summary = asyncio.run(run_file(settings, path))
    print("\n".join(summary.report()))
    return 0
