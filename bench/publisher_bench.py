"""The completion publisher alone: CPU of the publishing process per completion.

Seeds N completions into the outbox of a fresh PostgreSQL database, then runs the
service's own Publisher (tables/publisher.py) with one sink until the outbox is drained,
and reports the CPU time of this process per completion (what the publisher adds to the
process it shares with the service) and the drain rate; `SINK+relay` runs the sink's
calls in a process of their own (COMPLETION_SENDER=process), whose CPU is reported apart. The sink's other end runs in a
separate process, as it does in production: for `async-messaging` the sidecar stand-in
(tests/helpers/sidecar.py, a gRPC server on the sidecar's real proto), for `kafka` the
real broker. Configurations are alternated run by run; medians are reported.

    .venv/bin/python bench/publisher_bench.py --database-url postgresql://postgres:postgres@127.0.0.1:5432/postgres \
        --bootstrap 127.0.0.1:9092 --completions 20000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from app.completions.async_messaging import AsyncMessagingSink  # noqa: E402
from app.completions.kafka_sink import KafkaSink  # noqa: E402
from app.completions.relay import RelayedSink  # noqa: E402
from app.core.settings import async_database_url  # noqa: E402
from bench.kafka_bench import git_commit, machine_cpu  # noqa: E402
from tables import outbox  # noqa: E402
from tables.db import make_engine  # noqa: E402
from tables.migrate import upgrade_async  # noqa: E402
from tables.publisher import Publisher, Sink  # noqa: E402
from tests.helpers.process import free_port  # noqa: E402
from tests.helpers.sidecar import SidecarStandIn  # noqa: E402

SEED = """
INSERT INTO challenge_goal_completions
    (namespace, user_id, challenge_id, goal_id, completed_at, period_start, period_end)
SELECT 'bench', 'user-' || (i % 10000), 'season-1', 'goal-' || (i / 10000),
       now() AT TIME ZONE 'UTC', NULL, NULL
FROM generate_series(1, $1) AS i
"""


def sidecar_main(port: int) -> None:
    """The stand-in sidecar in its own process (`--sidecar PORT`)."""

    async def serve() -> None:
        sidecar = await SidecarStandIn(port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()
        await sidecar.stop()

    asyncio.run(serve())


async def prepare(admin_url: str, database: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    url = async_database_url("--database-url", admin_url.rsplit("/", 1)[0] + f"/{database}")
    await upgrade_async(url)
    return url


async def one_run(url: str, sink: Sink, completions: int, batch_size: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute("TRUNCATE challenge_goal_completions, challenge_completion_deliveries")
        await conn.execute(SEED, completions)
        engine = make_engine(url, pool_size=3, planner=outbox.PLANNER)  # as the service's
        publisher = Publisher(
            engine, [sink], rotating=lambda _goal: False, batch_size=batch_size, poll_interval=0.05
        )
        cpu, wall, machine = time.process_time(), time.perf_counter(), machine_cpu()
        publisher.start()
        while await conn.fetchval(  # noqa: ASYNC110 - the outbox is in another process's view
            "SELECT count(*) FROM challenge_goal_completions WHERE published_at IS NULL"
        ):
            await asyncio.sleep(0.1)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        machine = machine_cpu() - machine
        relay_cpu = _cpu_of(getattr(sink, "pid", None))
        await publisher.stop()
        await engine.dispose()
    finally:
        await conn.close()
    found = {
        "cpu_us_per_completion": round(cpu / completions * 1e6, 1),
        "completions_per_s": round(completions / wall),
        "machine_cpu_us_per_completion": round(machine / completions * 1e6, 1),
    }
    if relay_cpu is not None:
        found["relay_cpu_us_per_completion"] = round(relay_cpu / completions * 1e6, 1)
    return found


def _cpu_of(pid: int | None) -> float | None:
    """User + system CPU seconds of a running process (the relay), from /proc."""
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_sink(name: str, args: argparse.Namespace, port: int) -> Sink:
    """`name`: a sink, `+relay` for it in a process of its own (COMPLETION_SENDER=process)."""
    sink, _, relayed = name.partition("+")
    if sink == "async-messaging":
        spec = {"sink": sink, "host": "127.0.0.1", "port": port, "topic": "goalCompleted"}
        inline: Sink = AsyncMessagingSink("127.0.0.1", port, "goalCompleted")
    else:
        spec = {"sink": sink, "servers": [args.bootstrap], "topic": "bench.goalCompleted"}
        inline = KafkaSink([args.bootstrap], "bench.goalCompleted")
    return RelayedSink({**spec, "timeout": 30.0}) if relayed else inline


async def main_async(args: argparse.Namespace, port: int) -> dict[str, Any]:
    url = await prepare(args.database_url, args.database)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.sinks.split(",")}
    for _ in range(args.repeat):
        for name, found in runs.items():
            run = await one_run(url, make_sink(name, args, port), args.completions, args.batch)
            found.append(run)
            print(f"{name:16} {run}", flush=True)
    return {
        name: {
            "cpu_us_per_completion": statistics.median(r["cpu_us_per_completion"] for r in found),
            "completions_per_s": statistics.median(r["completions_per_s"] for r in found),
            "machine_cpu_us_per_completion": statistics.median(
                r["machine_cpu_us_per_completion"] for r in found
            ),
            "runs": found,
        }
        for name, found in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--database", default="bench_publisher")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument(
        "--sinks", default="async-messaging,async-messaging+relay,kafka,kafka+relay"
    )
    parser.add_argument("--completions", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sidecar", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "publisher.json")
    args = parser.parse_args()
    if args.sidecar:
        sidecar_main(args.sidecar)
        return
    port = free_port()
    sidecar = subprocess.Popen(
        [sys.executable, __file__, "--sidecar", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sidecar.stdout is not None and sidecar.stdout.readline().strip() == "ready"
        results = asyncio.run(main_async(args, port))
    finally:
        sidecar.kill()
        sidecar.wait()
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "commit": git_commit(ROOT),
        "command": " ".join(sys.argv),
        "completions": args.completions,
        "batch": args.batch,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    for name, found in results.items():
        print(
            f"{name:16} median {found['cpu_us_per_completion']} µs CPU per completion, "
            f"{found['completions_per_s']} completions/s, "
            f"machine {found['machine_cpu_us_per_completion']} µs CPU per completion"
        )
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
