"""`demo`: README command 1 — the sample events into an embedded SQLite file, shown."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.cli.config import describe_config
from app.cli.progress import fetch_progress, progress_table
from app.cli.replay import run_file
from app.core.config_source import config_source
from app.core.settings import Settings
from app.observability.logs import setup_logging
from tables.db import make_engine
from tables.schema import user_goal_progress

ROOT = Path(__file__).resolve().parents[2]


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo", help="run the sample events through the engine into an embedded SQLite file"
    )
    demo.add_argument("--events", default=str(ROOT / "config" / "sample-events.jsonl"))
    demo.add_argument("--db", default="data/demo.db", help="SQLite file (recreated)")
    demo.set_defaults(handler=cmd_demo)


async def _users(database_url: str) -> list[str]:
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(
                select(user_goal_progress.c.user_id)
                .distinct()
                .order_by(user_goal_progress.c.user_id)
            )
            return [row[0] for row in found]
    finally:
        await engine.dispose()


def cmd_demo(args: argparse.Namespace) -> int:
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
    source = config_source(settings)
    print(f"config {source.label}: {describe_config(source.load())[0]}")
    print(f"replaying {args.events} into {db} (embedded SQLite)\n")
    summary = asyncio.run(run_file(settings, Path(args.events)))
    print("\n".join(summary.report()))
    for user in asyncio.run(_users(settings.database_url)):
        print(f"\nuser {user}")
        print(progress_table(asyncio.run(fetch_progress(settings.database_url, user))))
    print(f"\ninspect again with: DATABASE_URL=sqlite:///{db} python -m app progress USER_ID")
    return 0
