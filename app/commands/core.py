"""Foundation commands: config check, db upgrade, replay FILE, progress USER, demo."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from app.challenges import ChallengeConfig, load_config
from app.events import InvalidEvent, decode_json_event
from app.logs import setup_logging
from app.pipeline import Pipeline
from app.settings import Settings
from tables.db import make_engine
from tables.migrate import upgrade_async
from tables.schema import user_goal_progress

ROOT = Path(__file__).resolve().parents[2]


def register(sub) -> None:
    config = sub.add_parser("config", help="challenge config tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate challenges.json and summarise it")
    check.add_argument("path", nargs="?", help="file to check (default: CONFIG_PATH)")
    check.set_defaults(handler=cmd_config_check)

    db = sub.add_parser("db", help="database schema tools")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="create/upgrade the schema (Alembic)")
    up.set_defaults(handler=cmd_db_upgrade)

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

    progress = sub.add_parser("progress", help="show one user's goal progress")
    progress.add_argument("user_id")
    progress.set_defaults(handler=cmd_progress)

    demo = sub.add_parser(
        "demo", help="run the sample events through the engine into an embedded SQLite file"
    )
    demo.add_argument("--events", default=str(ROOT / "config" / "sample-events.jsonl"))
    demo.add_argument("--db", default="data/demo.db", help="SQLite file (recreated)")
    demo.set_defaults(handler=cmd_demo)


# ----------------------------------------------------------------------- config / db


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


def cmd_config_check(args) -> int:
    path = args.path or str(Settings.from_env().config_path)
    config = load_config(path)
    print(f"{path}: OK")
    print("\n".join(describe_config(config)))
    return 0


def cmd_db_upgrade(args) -> int:
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    asyncio.run(upgrade_async(settings.database_url))
    print(f"schema up to date ({_redact(settings.database_url)})")
    return 0


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


# ----------------------------------------------------------------------- replay


@dataclass
class ReplaySummary:
    lines: int = 0
    outcomes: Counter = field(default_factory=Counter)  # applied, duplicate, no_goal, ...
    invalid: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    first_errors: list[str] = field(default_factory=list)

    def report(self) -> list[str]:
        rate = self.lines / self.seconds if self.seconds else 0.0
        out = [
            f"read {self.lines} lines in {self.seconds:.2f}s ({rate:,.0f}/s): "
            f"{self.outcomes['applied']} applied, {self.outcomes['duplicate']} duplicates, "
            f"{sum(self.invalid.values())} invalid"
        ]
        for outcome in ("no_goal", "other_namespace", "ignored_value", "stale"):
            if self.outcomes[outcome]:
                out.append(f"  skipped ({outcome.replace('_', ' ')}): {self.outcomes[outcome]}")
        for reason, count in sorted(self.invalid.items()):
            out.append(f"  invalid ({reason}): {count}")
        out.extend(f"  {line}" for line in self.first_errors)
        return out


class _Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total_bytes: int):
        self.total = max(total_bytes, 1)
        self.enabled = sys.stderr.isatty()
        self.last = 0.0

    def update(self, done_bytes: int, summary: ReplaySummary, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.2):
            return
        self.last = now
        fraction = min(done_bytes / self.total, 1.0)
        bar = "#" * int(fraction * 30)
        print(
            f"\r[{bar:<30}] {fraction:6.1%} {summary.lines} events",
            end="\n" if force else "",
            file=sys.stderr,
            flush=True,
        )


async def replay_file(pipeline: Pipeline, path: Path) -> ReplaySummary:
    summary = ReplaySummary()
    # A local file read line by line: the event loop only runs our own flusher meanwhile.
    progress = _Progress(path.stat().st_size)  # noqa: ASYNC240
    started = time.perf_counter()
    done = 0
    pending: set[asyncio.Future] = set()
    with path.open("rb") as handle:  # noqa: ASYNC240
        for number, line in enumerate(handle, 1):
            done += len(line)
            if not line.strip():
                continue
            summary.lines += 1
            try:
                event = decode_json_event(line)
            except InvalidEvent as exc:
                summary.invalid[exc.reason] += 1
                if len(summary.first_errors) < 5:
                    summary.first_errors.append(f"line {number}: {exc.message}")
                continue
            future = await pipeline.submit(event)
            if future is not None and not future.done():
                pending.add(future)
            if len(pending) > 64:
                pending = {f for f in pending if not f.done()}
            progress.update(done, summary)
    await pipeline.flusher.flush_now()
    if pending:
        await asyncio.gather(*pending)
    summary.seconds = time.perf_counter() - started
    summary.outcomes = Counter(pipeline.outcomes)
    progress.update(done, summary, force=True)
    return summary


async def _run_replay_file(settings: Settings, path: Path) -> ReplaySummary:
    config = load_config(settings.config_path)
    await upgrade_async(settings.database_url)
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    pipeline = Pipeline(settings, config, engine)
    pipeline.start()
    try:
        return await replay_file(pipeline, path)
    finally:
        await pipeline.close()
        await engine.dispose()


def cmd_replay(args) -> int:
    settings = Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    if args.topic:
        from app.commands.kafka import replay_topic  # Kafka mode only

        return replay_topic(settings, args)
    if not args.file:
        print("error: give a JSON-lines FILE or --topic TOPIC", file=sys.stderr)
        return 2
    path = Path(args.file)
    if not path.is_file():
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    summary = asyncio.run(_run_replay_file(settings, path))
    print("\n".join(summary.report()))
    return 0


# ----------------------------------------------------------------------- progress


async def fetch_progress(database_url: str, user_id: str) -> list:
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            t = user_goal_progress
            rows = await conn.execute(
                select(
                    t.c.challenge_id,
                    t.c.goal_id,
                    t.c.progress,
                    t.c.baseline_value,
                    t.c.status,
                    t.c.completed_at,
                    t.c.expires_at,
                    t.c.updated_at,
                )
                .where(t.c.user_id == user_id)
                .order_by(t.c.challenge_id, t.c.goal_id)
            )
            return list(rows)
    finally:
        await engine.dispose()


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _cell(value) -> str:
    if value is None:
        return "-"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def progress_table(rows: list) -> str:
    headers = ["challenge", "goal", "progress", "status", "completed_at", "expires_at"]
    body = []
    for r in rows:
        shown = r.progress if r.baseline_value is None else r.progress - r.baseline_value
        body.append(
            [
                r.challenge_id,
                r.goal_id,
                str(shown),
                r.status,
                _cell(r.completed_at),
                _cell(r.expires_at),
            ]
        )
    return format_table(headers, body)


def cmd_progress(args) -> int:
    settings = Settings.from_env()
    rows = asyncio.run(fetch_progress(settings.database_url, args.user_id))
    if not rows:
        print(f"no progress rows for user {args.user_id!r}")
        return 0
    print(progress_table(rows))
    return 0


# ----------------------------------------------------------------------- demo


def cmd_demo(args) -> int:
    db = Path(args.db)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    env["DATABASE_URL"] = f"sqlite:///{db}"
    env.setdefault("CONFIG_PATH", str(ROOT / "config" / "challenges.json"))
    env.setdefault("LOG_FORMAT", "text")
    env.setdefault("LOG_LEVEL", "warning")
    settings = Settings.from_env(env)
    setup_logging(settings.log_level, settings.log_format)
    config = load_config(settings.config_path)
    print(f"config {settings.config_path}: {describe_config(config)[0]}")
    print(f"replaying {args.events} into {db} (embedded SQLite)\n")
    summary = asyncio.run(_run_replay_file(settings, Path(args.events)))
    print("\n".join(summary.report()))

    async def users() -> list[str]:
        engine = make_engine(settings.database_url, pool_size=1)
        async with engine.connect() as conn:
            found = await conn.execute(
                select(user_goal_progress.c.user_id)
                .distinct()
                .order_by(user_goal_progress.c.user_id)
            )
            result = [row[0] for row in found]
        await engine.dispose()
        return result

    for user in asyncio.run(users()):
        print(f"\nuser {user}")
        print(progress_table(asyncio.run(fetch_progress(settings.database_url, user))))
    print(f"\ninspect again with: DATABASE_URL=sqlite:///{db} python -m app progress USER_ID")
    return 0
