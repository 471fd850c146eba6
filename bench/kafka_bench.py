"""Benchmark: Kafka mode end to end, in one invocation.

Pre-produces N events (default 100,000: 20 % logins, 80 % statistic updates, 10,000
users, 4 partitions per topic, keyed by user id as AGS keys them, event time increasing
per user over three days) and measures, against the same records:

  raw        plain aiokafka consume + JSON decode (the client library's ceiling)
  replay     `replay --topic` for both topics (app.kafka.replay.replay_range, in process)
  worker x1  one `python -m app worker` process, fresh consumer group
  worker x2  two worker processes in one group
  kill -9    one worker killed with SIGKILL at half the stream, restarted (its partitions
             move once the session timeout has expired)
  kill -9, static id
             the same with KAFKA_GROUP_INSTANCE_ID set: the restarted worker rejoins as
             itself and takes its partitions back at once

Every processing run starts from empty tables in its own database (`challenge_kbench` on
the server of --database-url, created if missing) and ends with the rows compared to the
rules applied event by event in Python (app.core.progress.apply_delta): "rows exact".

Worker runs get their own copy of the stream (same events, topics of a namespace of
their own), produced once every worker reports ready (a rebalance completed with all of
them in the group): the broker here runs with group.initial.rebalance.delay.ms=0, so
with pre-produced topics the first worker to start took every partition and a second
one, starved of CPU while starting beside it, joined seconds later and forced a
rebalance mid-stream — two workers then measured 0.85-1.25 x one worker run to run,
depending only on that start-up race. The rate is over the window from the end of the
produce to the drain (the events not yet applied when the producer finished); the drain
time from process start is reported beside it. Lag (events not yet applied, read from the positions the flushes store) is
sampled every 0.25 s and plotted. `--repeat N` runs the plan N times, interleaved, and
reports the median run of each (all rates kept in the JSON).

`--completions` runs the workers with COMPLETION_SINKS=kafka: each worker run then waits
for the goal-completed outbox to drain, reads `<namespace>.challenge.v1.goalCompleted`
back and reports completions written and consumed and the lag from a completion's
`created_at` to its record's timestamp (set by the producer when it sends).

Usage (PYTHONPATH=. so this checkout's code is imported, not another editable install):
  PYTHONPATH=. .venv/bin/python bench/kafka_bench.py --database-url postgresql://postgres:postgres@127.0.0.1:5432/x \
      --bootstrap 127.0.0.1:9092 [--events 100000] [--out bench/results]
Needs the `bench` extra (matplotlib) for the plot; JSON results are written regardless.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import text

from app.core.challenges import ChallengeConfig, load_config
from app.core.events import Event, EventType
from app.core.progress import Delta, Family, Row, applies, apply_delta, period_of
from app.core.settings import Settings, async_database_url
from app.kafka.admin import ensure_topics
from app.kafka.aiokafka_internals import refresh_metadata
from app.kafka.replay import replay_range
from app.kafka.topics import Topics
from app.lifecycle import settle_heap
from app.pipeline import source_of
from tables.db import make_engine
from tables.migrate import upgrade_async

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "challenges.json"
BASE = datetime(2026, 11, 16)  # a Monday
STAT_CODES = ("match_wins", "enemy_kills", "player_level", "games_played")


# ------------------------------------------------------------------ the stream


def make_events(ns: str, count: int, users: int, login_share: float, seed: int) -> list[Event]:
    rng = random.Random(seed)
    clock = {u: BASE + timedelta(minutes=rng.randrange(600)) for u in range(users)}
    level = dict.fromkeys(range(users), 0)
    events = []
    for i in range(count):
        u = rng.randrange(users)
        clock[u] += timedelta(minutes=rng.randrange(1, 400))
        user, when = f"kb-{u:05d}", clock[u]
        if rng.random() < login_share:
            events.append(Event(f"{ns}-{i}", EventType.LOGIN, ns, user, when))
            continue
        code = rng.choice(STAT_CODES)
        inc = rng.randrange(1, 10)
        if code == "player_level":
            level[u] += 1
            value = level[u]
        else:
            value = rng.randrange(0, 1000)
        events.append(Event(f"{ns}-{i}", EventType.STATISTIC, ns, user, when, code, value, inc))
    return events


def to_json(e: Event) -> bytes:
    body: dict[str, Any] = {
        "id": e.event_id,
        "namespace": e.namespace,
        "userId": e.user_id,
        "timestamp": e.event_time.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z"),
    }
    if e.type is EventType.STATISTIC:
        body["payload"] = {"statCode": e.stat_code, "latestValue": e.value, "inc": e.inc}
    else:
        body["payload"] = {}
    return orjson.dumps(body)


async def produce(bootstrap: str, topics: Topics, events: list[Event]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=256 * 1024
    )
    await producer.start()
    started = time.perf_counter()
    try:
        batch = []
        for e in events:
            topic = topics.login if e.type is EventType.LOGIN else topics.stat
            batch.append(await producer.send(topic, to_json(e), key=e.user_id.encode()))
            if len(batch) >= 5000:
                await asyncio.gather(*batch)
                batch.clear()
        await asyncio.gather(*batch)
    finally:
        await producer.stop()
    return time.perf_counter() - started


# ------------------------------------------------------------------ the expected rows


def oracle(config: ChallengeConfig, events: list[Event]) -> dict[tuple[str, str], tuple]:
    """The rules applied one event at a time, in per-user order (tests/db/test_property)."""
    table: dict[tuple[str, str], Row] = {}
    marks: dict[tuple[str, str], datetime] = {}
    for event in sorted(events, key=lambda e: (e.user_id, e.event_time)):
        for goal in config.goals_for(source_of(event), event.stat_code):
            if not applies(goal, event):
                continue
            delta = Delta(
                goal,
                event.user_id,
                event.namespace,
                period_of(goal, event.event_time),
                event.event_time,
            )
            delta.add(event)
            key = (event.user_id, goal.goal_id)
            updated = apply_delta(
                table.get(key), delta, event.event_time, counted_day=marks.get(key)
            )
            if delta.family is Family.COUNTER_DAILY and delta.period_start is not None:
                previous = marks.get(key)
                if previous is None or previous < delta.period_start:
                    marks[key] = delta.period_start
            if updated is not None:
                table[key] = updated
    return {k: (r.progress, r.status, r.completed_at) for k, r in table.items()}


async def check_rows(engine: Any, expected: dict[tuple[str, str], tuple]) -> dict[str, Any]:
    async with engine.connect() as conn:
        found = {
            (u, g): (p, s, c)
            for u, g, p, s, c in await conn.execute(
                text(
                    "SELECT user_id, goal_id, progress, status, completed_at "
                    "FROM user_goal_progress"
                )
            )
        }
    wrong = [k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k)]
    return {
        "rows": len(found),
        "expected": len(expected),
        "mismatched": len(wrong),
        "exact": not wrong,
        "examples": [
            {"key": list(k), "expected": str(expected.get(k)), "found": str(found.get(k))}
            for k in sorted(wrong)[:5]
        ],
    }


# ------------------------------------------------------------------ database


async def bench_database(url: str) -> str:
    """A database of our own on the same server: every run starts from empty tables."""
    admin = make_engine(async_database_url("--database-url", url.rsplit("/", 1)[0] + "/postgres"))
    try:
        async with admin.connect() as raw:
            conn = await raw.execution_options(isolation_level="AUTOCOMMIT")
            exists = (
                await conn.execute(
                    text("SELECT 1 FROM pg_database WHERE datname = 'challenge_kbench'")
                )
            ).scalar()
            if not exists:
                await conn.execute(text("CREATE DATABASE challenge_kbench"))
    finally:
        await admin.dispose()
    bench_url = url.rsplit("/", 1)[0] + "/challenge_kbench"
    await upgrade_async(async_database_url("--database-url", bench_url))
    return bench_url


async def reset(engine: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "TRUNCATE user_goal_progress, challenge_daily_marks, challenge_consumer_offsets, "
                "challenge_processed_events, challenge_dead_letters, "
                "challenge_goal_completions, challenge_completion_deliveries"
            )
        )


async def applied(engine: Any, group: str, topics: Topics) -> int:
    """Records applied by committed flushes, from the positions the flushes store: source
    partitions applied directly plus repartition partitions (records forwarded)."""
    repartition = Topics(topics.namespace, group).repartition
    async with engine.connect() as conn:
        total = (
            await conn.execute(
                text(
                    "SELECT COALESCE(sum(next_offset), 0) FROM challenge_consumer_offsets "
                    "WHERE consumer_group = :g AND topic IN (:a, :b, :r)"
                ),
                {"g": group, "a": topics.login, "b": topics.stat, "r": repartition},
            )
        ).scalar()
    return int(total or 0)


async def completion_stats(
    engine: Any, bootstrap: str, topic: str, timeout: float = 120
) -> dict[str, Any]:
    """--completions: once the outbox has drained, the completions written and the
    records on their topic, and the lag from `created_at` to the record's timestamp."""
    deadline = time.monotonic() + timeout
    async with engine.connect() as conn:
        while (
            await conn.execute(
                text("SELECT count(*) FROM challenge_goal_completions WHERE published_at IS NULL")
            )
        ).scalar() and time.monotonic() < deadline:
            await conn.commit()
            await asyncio.sleep(0.2)
        created = {
            str(r.id): r.created_at
            for r in await conn.execute(
                text("SELECT id, created_at FROM challenge_goal_completions")
            )
        }
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    first: dict[str, int] = {}
    consumed = 0
    try:
        while consumed < len(created) and time.monotonic() < deadline + 30:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    consumed += 1
                    first.setdefault(orjson.loads(record.value)["id"], record.timestamp)
    finally:
        await consumer.stop()
    lags = sorted(
        ms - created[i].replace(tzinfo=UTC).timestamp() * 1000
        for i, ms in first.items()
        if i in created
    )

    def pct(q: float) -> float | None:
        return round(lags[min(len(lags) - 1, int(q * len(lags)))], 1) if lags else None

    return {
        "written": len(created),
        "consumed": consumed,
        "all_delivered": set(created) <= set(first),
        "lag_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
    }


# ------------------------------------------------------------------ the runs


async def raw_consume(bootstrap: str, topics: Topics, total: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        parts: list[TopicPartition] = []
        while len(parts) < 2:
            await refresh_metadata(consumer)
            parts = [
                TopicPartition(t, p)
                for t in (topics.login, topics.stat)
                for p in (consumer.partitions_for_topic(t) or ())
            ]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen, started = 0, time.perf_counter()
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                for r in records:
                    orjson.loads(r.value)
                seen += len(records)
        seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {"events": seen, "seconds": round(seconds, 3), "events_per_s": round(seen / seconds)}


async def replay(
    settings: Settings,
    config: ChallengeConfig,
    topics: Topics,
    total: int,
    engine: Any,
    expected: dict,
) -> dict[str, Any]:
    await reset(engine)
    settle_heap()  # as `python -m app replay` does before it starts
    started = time.perf_counter()
    outcomes: Counter[str] = Counter()
    for topic in (topics.login, topics.stat):
        summary = await replay_range(settings, config, topic)
        outcomes.update(summary.outcomes)
    seconds = time.perf_counter() - started
    return {
        "events": total,
        "seconds": round(seconds, 3),
        "events_per_s": round(total / seconds),
        "outcomes": dict(outcomes),
        **{"check": await check_rows(engine, expected)},
    }


APP_ROOT = [ROOT]  # --app-root: run the workers of another checkout (before/after)


def start_worker(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app", "worker"],
            cwd=APP_ROOT[0],
            stdout=out,
            stderr=out,
            env={**env, "METRICS_PORT": str(port)},
            start_new_session=True,
        )


def git_commit(root: Path) -> str:
    found = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "unknown"


def machine_cpu() -> float:
    """CPU seconds the whole machine spent busy (all cores: the workers, PostgreSQL, the
    broker, this script, anything else), from /proc/stat. Per event over the window after
    producing, it is what a configuration costs the host, steadier than events/s on a
    shared one."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
    )  # steal (the hypervisor's, for other guests) is not this machine's work
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket  # noqa: PLC0415  (bench script helper)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready(port: int) -> bool:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
    except OSError:
        return False
    return b"challenge_event_handler_kafka_ready 1.0" in body


@dataclass
class Stream:
    """How to make the events of a namespace, and where to produce them."""

    bootstrap: str
    partitions: int
    make: Callable[[str], list[Event]]


async def workers(
    name: str,
    count: int,
    base_env: dict[str, str],
    stream: Stream,
    total: int,
    engine: Any,
    expected: dict,
    logdir: Path,
    kill_at: float | None = None,
    timeout: float = 900,
    static: bool = False,
) -> dict[str, Any]:
    """`static`: each worker has its own KAFKA_GROUP_INSTANCE_ID (a restarted one too)."""
    await reset(engine)
    group = f"kbench-{uuid.uuid4().hex[:8]}"
    ns = f"kb{uuid.uuid4().hex[:8]}"  # this run's own topics, empty until all are ready
    topics = Topics(ns, group)
    await ensure_topics(  # the completion topic too: measured from the first event on
        stream.bootstrap,
        {
            topics.login: stream.partitions,
            topics.stat: stream.partitions,
            f"{ns}.challenge.v1.goalCompleted": stream.partitions,
        },
    )
    events = stream.make(ns)
    env = {**base_env, "KAFKA_CONSUMER_GROUP": group, "AB_NAMESPACE": ns}
    envs = [
        {**env, "KAFKA_GROUP_INSTANCE_ID": f"{group}-{i}"} if static else env for i in range(count)
    ]
    ports = [free_port() for _ in range(count)]
    started = time.perf_counter()
    procs = [
        start_worker(envs[i], port, logdir / f"{name}-{i}.log") for i, port in enumerate(ports)
    ]
    samples: list[tuple[float, int]] = []
    killed_at: float | None = None
    completions: dict[str, Any] | None = None
    try:
        while not all(ready(p) for p in ports):
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{name}: worker exited {p.returncode}; see {logdir}")
            if time.perf_counter() - started > 120:
                raise RuntimeError(f"{name}: workers not ready after 120 s; see {logdir}")
            await asyncio.sleep(0.1)
        ready_at = time.perf_counter() - started
        await produce(stream.bootstrap, topics, events)
        produced_at = time.perf_counter() - started
        busy_at_produced, busy = machine_cpu(), 0.0
        left_at_produced = total - await applied(engine, group, topics)
        while True:
            now = time.perf_counter() - started
            done = await applied(engine, group, topics)
            samples.append((round(now, 3), total - done))
            if kill_at is not None and killed_at is None and done >= total * kill_at:
                os.killpg(procs[0].pid, signal.SIGKILL)
                procs[0].wait()
                killed_at = now
                procs[0] = start_worker(envs[0], ports[0], logdir / f"{name}-0.log")
            if done >= total:
                busy = machine_cpu() - busy_at_produced
                if "COMPLETION_SINKS" in base_env:  # the workers still run: they publish
                    completions = await completion_stats(
                        engine, stream.bootstrap, f"{ns}.challenge.v1.goalCompleted"
                    )
                break
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{name}: worker exited {p.returncode}; see {logdir}")
            if now > timeout:
                raise RuntimeError(f"{name}: not drained after {timeout} s ({done}/{total})")
            await asyncio.sleep(0.25)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    drained = samples[-1][0]
    settled = drained - produced_at
    check = await check_rows(engine, expected)
    return {
        "workers": count,
        "events": total,
        "drain_from_start_s": drained,
        "ready_after_s": round(ready_at, 3),
        "produced_after_s": round(produced_at, 3),
        "left_when_produced": left_at_produced,
        "window_after_produce_s": round(settled, 3),
        "events_per_s": round(left_at_produced / settled) if settled > 0 else None,
        "machine_cpu_us_per_event": round(busy / left_at_produced * 1e6, 1)
        if left_at_produced
        else None,
        "killed_at_s": killed_at,
        "check": check,
        "completions": completions,
        "lag": samples,
    }


def plot(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib  # noqa: PLC0415  (optional `bench` extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, run in results["runs"].items():
        if "lag" in run:
            xs, ys = zip(*run["lag"], strict=True)
            ax.plot(xs, ys, label=f"{name} ({run['events_per_s']:,} ev/s)")
    ax.set_xlabel("seconds since the worker processes started")
    ax.set_ylabel("events not yet applied (committed)")
    ax.set_title(f"Kafka worker lag, {results['events']:,} events, {results['machine']}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--login-share", type=float, default=0.2)
    parser.add_argument("--flush-interval", default="200ms")
    parser.add_argument(
        "--buffer-max-size", default="10000", help="BUFFER_MAX_SIZE for replay and workers"
    )
    parser.add_argument(
        "--runs",
        default="raw,replay,worker1,worker2,kill,kill-static",
        help="comma-separated subset of raw,replay,worker1,worker2,kill,kill-static",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the plan this many times; medians reported"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--completions",
        action="store_true",
        help="workers publish goal-completed events to Kafka; report count and lag",
    )
    parser.add_argument(
        "--app-root", help="run the workers from this checkout instead (compare versions)"
    )
    args = parser.parse_args()
    if not args.database_url or not args.database_url.startswith("postgresql"):
        parser.error("--database-url postgresql://... (or DATABASE_URL) is required")
    if not args.bootstrap:
        parser.error("--bootstrap (or KAFKA_BOOTSTRAP_SERVERS) is required")
    runs = set(args.runs.split(","))
    if args.app_root:
        APP_ROOT[0] = Path(os.path.abspath(args.app_root))  # noqa: ASYNC240
    out = Path(args.out)
    os.makedirs(out, exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix="kafka-bench-"))
    ns = f"kb{uuid.uuid4().hex[:8]}"
    topics = Topics(ns, "unused")
    config = load_config(CONFIG)
    url = await bench_database(args.database_url)
    engine = make_engine(async_database_url("--database-url", url))
    settings = Settings.from_env(
        {
            "DATABASE_URL": url,
            "AB_NAMESPACE": ns,
            "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap,
            "BUFFER_FLUSH_INTERVAL": args.flush_interval,
            "BUFFER_MAX_SIZE": args.buffer_max_size,
        }
    )
    events = make_events(ns, args.events, args.users, args.login_share, seed=11)
    expected = oracle(config, events)
    await ensure_topics(
        args.bootstrap, {topics.login: args.partitions, topics.stat: args.partitions}
    )
    produce_s = await produce(args.bootstrap, topics, events)
    machine = f"{os.cpu_count()} cores, {platform.machine()}, load {os.getloadavg()[0]:.1f}"
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "events": args.events,
        "users": args.users,
        "partitions": args.partitions,
        "login_share": args.login_share,
        "namespace": ns,
        "produce_s": round(produce_s, 2),
        "flush_interval": args.flush_interval,
        "buffer_max_size": args.buffer_max_size,
        "repeat": args.repeat,
        "commit": git_commit(APP_ROOT[0]),
        "expected_rows": len(expected),
        "runs": {},
    }
    print(f"{args.events:,} events produced in {produce_s:.1f} s; {len(expected):,} rows expected")
    stream = Stream(
        args.bootstrap,
        args.partitions,
        lambda namespace: make_events(namespace, args.events, args.users, args.login_share, 11),
    )
    worker_env = {
        **os.environ,
        "DATABASE_URL": url,
        "AB_NAMESPACE": ns,
        "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap,
        "CONFIG_PATH": str(CONFIG),
        "BUFFER_FLUSH_INTERVAL": args.flush_interval,
        "BUFFER_MAX_SIZE": args.buffer_max_size,
        "LOG_LEVEL": "warning",
        **({"COMPLETION_SINKS": "kafka"} if args.completions else {}),
    }
    try:
        plan = [
            ("raw consume", "raw", lambda: raw_consume(args.bootstrap, topics, args.events)),
            (
                "replay --topic",
                "replay",
                lambda: replay(settings, config, topics, args.events, engine, expected),
            ),
            (
                "worker x1",
                "worker1",
                lambda: workers(
                    "worker1", 1, worker_env, stream, args.events, engine, expected, logdir
                ),
            ),
            (
                "worker x2",
                "worker2",
                lambda: workers(
                    "worker2", 2, worker_env, stream, args.events, engine, expected, logdir
                ),
            ),
            (
                "worker x1, kill -9 at 50 %",
                "kill",
                lambda: workers(
                    "kill",
                    1,
                    worker_env,
                    stream,
                    args.events,
                    engine,
                    expected,
                    logdir,
                    kill_at=0.5,
                ),
            ),
            (
                "worker x1, kill -9, static id",
                "kill-static",
                lambda: workers(
                    "kill-static",
                    1,
                    worker_env,
                    stream,
                    args.events,
                    engine,
                    expected,
                    logdir,
                    kill_at=0.5,
                    static=True,
                ),
            ),
        ]
        every: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.repeat):
            for label, key, run in plan:
                if key not in runs:
                    continue
                result = await run()
                every.setdefault(label, []).append(result)
                check = result.get("check", {})
                exact = "" if not check else f"  rows exact: {check['exact']} ({check['rows']:,})"
                if result.get("completions"):
                    done_ = result["completions"]
                    exact += f"  completions {done_['written']} p99 lag {done_['lag_ms']['p99']} ms"
                cpu = result.get("machine_cpu_us_per_event")
                host = f"  machine {cpu} µs CPU per event" if cpu else ""
                print(f"{label:28s} {result['events_per_s']:>9,} events/s{host}{exact}", flush=True)
        for label, done in every.items():
            ranked = sorted(done, key=lambda r: r["events_per_s"])
            results["runs"][label] = {
                **ranked[(len(ranked) - 1) // 2],  # the median run (the lower one of two)
                "events_per_s_all": [r["events_per_s"] for r in done],
                "exact_all": all(r.get("check", {}).get("exact", True) for r in done),
            }
    finally:
        await engine.dispose()
    if args.repeat > 1:
        for label, run in results["runs"].items():
            rates = ", ".join(f"{r:,}" for r in run["events_per_s_all"])
            print(f"median {label:21s} {run['events_per_s']:>9,} events/s  ({rates})")
    one, two = results["runs"].get("worker x1"), results["runs"].get("worker x2")
    if one and two:
        results["two_over_one"] = round(two["events_per_s"] / one["events_per_s"], 2)
        print(f"two workers / one worker: {results['two_over_one']}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"kafka-{stamp}.json").write_text(json.dumps(results, indent=1, default=str))
    if plot(results, out / f"kafka-{stamp}.png"):
        print(f"plot: {out / f'kafka-{stamp}.png'}")
    print(f"results: {out / f'kafka-{stamp}.json'} (worker logs in {logdir})")


if __name__ == "__main__":
    asyncio.run(main())
