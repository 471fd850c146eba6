"""Benchmark: the core engine alone (no gRPC/Kafka), on a real database.

Measures, for the shipped config/challenges.json:
  1. flush time for N rows (one flush, medians of several runs, fresh rows and updates);
  2. end-to-end events/s through Pipeline.submit -> buffer -> flusher -> database
     (mixed logins and stat updates over many users, as in production).

  3. with --merge (PostgreSQL): the merge statement for 1,000 mixed rows (the optimistic
     form large flushes use, and the locking form) against a plain one-statement unnest
     upsert of 1,000 rows into the same table, interleaved, each in its own rolled-back
     transaction, all run on the driver as the writer runs them (parameters encoded,
     statement executed, report read); medians of the wall time and, when the server
     runs on this machine, of the server backend's CPU time (/proc, 10 ms ticks).

Usage (PYTHONPATH=. so this checkout's code is imported):
  PYTHONPATH=. .venv/bin/python bench/flush_bench.py --database-url postgresql://postgres:postgres@127.0.0.1:5432/challenge_db
  PYTHONPATH=. .venv/bin/python bench/flush_bench.py --merge --database-url postgresql://...
  PYTHONPATH=. .venv/bin/python bench/flush_bench.py         # embedded SQLite file
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from app.core.challenges import load_config
from app.core.events import Event, EventType
from app.core.progress import fold
from app.core.settings import Settings, async_database_url
from app.pipeline import Pipeline, source_of
from tables.db import driver_fetch, make_engine, positional
from tables.flusher import Flusher
from tables.merge_sql import build_statements, postgres_params
from tables.migrate import upgrade_async
from tables.writer import Writer

PLAIN_UPSERT = """
INSERT INTO user_goal_progress AS t (user_id, goal_id, challenge_id, namespace, progress, status)
SELECT * FROM unnest(CAST(:u AS text[]), CAST(:g AS text[]), CAST(:c AS text[]),
                     CAST(:n AS text[]), CAST(:p AS int[]), CAST(:s AS text[]))
ON CONFLICT (user_id, goal_id) DO UPDATE
SET progress = t.progress + excluded.progress, status = excluded.status, updated_at = now()
"""


def mixed_deltas(config, rows: int, seed: int) -> list:
    """`rows` pending deltas of a mixed flush (logins and stats over many users)."""
    deltas: dict = {}
    for event in make_events(rows * 3, rows, seed=seed):
        fold(deltas, event, config.goals_for(source_of(event), event.stat_code))
        if len(deltas) >= rows:
            break
    return sorted(deltas.values(), key=lambda d: d.key)[:rows]


def backend_cpu_ms(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None  # the server is not on this machine
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


async def merge_vs_plain(engine, config, runs: int) -> None:
    """Median wall and backend CPU ms: the merge statement (the optimistic form large
    flushes use, and the locking form) vs a plain upsert, 1,000 rows each, all run on
    the driver in $n form as the writer runs them (tables/db.py driver_fetch)."""
    built = build_statements("postgresql", "auto")
    statements = {
        "merge": positional(built.optimistic or ""),
        "locking": positional(built.postgres or ""),
        "plain": positional(PLAIN_UPSERT),
    }
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in statements}
    async with engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await conn.rollback()
        for run in range(runs):
            chunk = mixed_deltas(config, 1000, seed=100 + run)
            merge = postgres_params(chunk)
            params = {
                "merge": merge,
                "locking": merge,
                "plain": {
                    "u": [f"plain-{d.user_id}" for d in chunk],
                    "g": [d.goal.goal_id for d in chunk],
                    "c": [d.goal.challenge_id for d in chunk],
                    "n": [d.namespace for d in chunk],
                    "p": [1] * len(chunk),
                    "s": ["in_progress"] * len(chunk),
                },
            }
            order = list(statements)
            for name in order[run % 3 :] + order[: run % 3]:
                sql, names = statements[name]
                args = [params[name][n] for n in names]
                cpu0, started = backend_cpu_ms(pid), time.perf_counter()
                await driver_fetch(conn, sql, args)
                wall = (time.perf_counter() - started) * 1000
                cpu1 = backend_cpu_ms(pid)
                await conn.rollback()
                if run >= 3:  # after warm-up: prepared statements, generic plans
                    results[name][0].append(wall)
                    if cpu0 is not None and cpu1 is not None:
                        results[name][1].append(cpu1 - cpu0)
    for name, (walls, cpus) in results.items():
        cpu = f", backend CPU median {statistics.median(cpus):.1f} ms" if cpus else ""
        print(f"{name:7s} 1,000 rows: wall median {statistics.median(walls):.1f} ms{cpu}")
    ratio = statistics.median(results["merge"][0]) / statistics.median(results["plain"][0])
    print(f"merge / plain upsert (wall medians): {ratio:.2f}")


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
        generation = await pipeline.add(event)
        last = generation.done if generation is not None else last
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
    parser.add_argument(
        "--merge", action="store_true", help="merge statement vs plain upsert (PostgreSQL)"
    )
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    settings = Settings(database_url=async_database_url("--database-url", url), flush_interval=0.1)
    config = load_config("config/challenges.json")
    await upgrade_async(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        if args.merge:
            await merge_vs_plain(engine, config, args.runs + 3)
            return
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
