"""Benchmark: the core engine alone (no gRPC/Kafka), on a real database.

Measures, for the shipped config/challenges.json:
  1. flush time for N rows (one flush, medians of several runs, fresh rows and updates);
  2. end-to-end events/s through Pipeline.submit -> buffer -> flusher -> database
     (mixed logins and stat updates over many users, as in production).

Usage:
  .venv/bin/python bench/flush_bench.py --database-url postgresql://postgres:postgres@127.0.0.1:5432/challenge_db
  .venv/bin/python bench/flush_bench.py                      # embedded SQLite file
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import datetime, timedelta

from sqlalchemy import text

from app.core.challenges import load_config
from app.core.events import Event, EventType
from app.core.settings import Settings, async_database_url
from app.pipeline import Pipeline, source_of
from tables.buffer import Flusher
from tables.db import make_engine
from tables.migrate import upgrade_async
from tables.writer import Writer

STATS = ("match_wins", "enemy_kills", "player_level")


def make_events(count: int, users: int, seed: int = 7) -> list[Event]:
    rng = random.Random(seed)
    start = datetime(2026, 11, 20, 0, 0)
    events = []
    for i in range(count):
        user = f"bench-user-{rng.randrange(users):06d}"
        moment = start + timedelta(seconds=i * 3)
        if rng.random() < 0.3:
            events.append(Event(f"b{i}", EventType.LOGIN, "mygame", user, moment))
        else:
            code = rng.choice(STATS)
            value = rng.randrange(1, 500)
            events.append(
                Event(
                    f"b{i}",
                    EventType.STATISTIC,
                    "mygame",
                    user,
                    moment,
                    code,
                    value,
                    rng.randrange(0, 5),
                )
            )
    return events


async def clean(engine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM user_goal_progress WHERE user_id LIKE 'bench-%'"))
        await conn.execute(text("DELETE FROM challenge_daily_marks WHERE user_id LIKE 'bench-%'"))


async def flush_times(engine, config, rows: int, runs: int) -> tuple[list[float], list[float]]:
    """Time one flush holding `rows` pending rows: as inserts, then as updates."""
    goals = config.goals_for(
        source_of(Event("", EventType.STATISTIC, "", "", datetime.now(), "match_wins")),
        "match_wins",
    )
    goal = goals[0]
    fresh, updates = [], []
    for run in range(runs):
        await clean(engine)
        for bucket, value in ((fresh, 3), (updates, 7)):
            flusher = Flusher(Writer(engine, batch_size=1000), max_size=rows * 2)
            for u in range(rows):
                event = Event(
                    f"f{run}-{u}",
                    EventType.STATISTIC,
                    "mygame",
                    f"bench-f-{u:06d}",
                    datetime(2026, 11, 20, 10),
                    "match_wins",
                    value,
                    1,
                )
                flusher.try_add(event, (goal,))
            started = time.perf_counter()
            await flusher.flush_now()
            bucket.append(time.perf_counter() - started)
    return fresh, updates


async def throughput(settings: Settings, config, engine, events: list[Event]) -> float:
    await clean(engine)
    pipeline = Pipeline(settings, config, engine)
    pipeline.start()
    started = time.perf_counter()
    last = None
    for event in events:
        future = await pipeline.submit(event)
        last = future or last
    await pipeline.flusher.flush_now()
    if last is not None:
        await last
    elapsed = time.perf_counter() - started
    await pipeline.close()
    return len(events) / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--database-url", help="plain postgresql:// or sqlite:/// URL (default: temp SQLite)"
    )
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    settings = Settings(database_url=async_database_url("--database-url", url), flush_interval=0.1)
    config = load_config("config/challenges.json")
    await upgrade_async(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        fresh, updates = await flush_times(engine, config, args.rows, args.runs)
        print(f"database: {url.split('@')[-1]}")
        print(
            f"flush of {args.rows} rows, median of {args.runs}: insert {statistics.median(fresh) * 1000:.1f} ms, "
            f"update {statistics.median(updates) * 1000:.1f} ms"
        )
        events = make_events(args.events, args.users)
        rates = [await throughput(settings, config, engine, events) for _ in range(3)]
        print(
            f"pipeline: {args.events} events over {args.users} users, flush 100ms, median of 3: "
            f"{statistics.median(rates):,.0f} events/s (runs: {', '.join(f'{r:,.0f}' for r in rates)})"
        )
    finally:
        await clean(engine)
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
