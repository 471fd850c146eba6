"""gRPC bridge benchmark, side by side in one invocation: the empty grpc.aio floor,
`serve` with durable acks and `serve` with buffered acks, under the compiled Go load
client (`bench/loadgen`, the Extend mix), at fixed offered rates and at max (N calls in
flight). Every acknowledged event is checked against the table after each run.

  .venv/bin/python bench/grpc_load.py \\
      --database-url postgresql://postgres:postgres@127.0.0.1:5432/postgres \\
      --rates 250,500,1000 --duration 20 --concurrency 500

`--completions` also publishes goal-completed events to a stand-in of the Extend Async
Messaging sidecar (tests/helpers/sidecar.py, a gRPC server on the sidecar's real proto,
in a thread of this process): each run then reports how many completions were written
and received, and the publish lag from a completion's `created_at` to its arrival at the
stand-in (p50/p99/max), most meaningful at a fixed rate.

Writes JSON (date, machine, versions, every run) and a PNG of latency percentiles
against offered rate. Needs Go (to build the client) and matplotlib (`pip install
.[bench]`) for the plot. The table is re-seeded before each run: 10,000 users x the 12
goals of bench/challenges.json as `not_started` rows, served with ASSIGNMENT_MODE=required.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.core.settings import async_database_url  # noqa: E402
from tables.migrate import upgrade  # noqa: E402
from tests.helpers.sidecar import SidecarStandIn  # noqa: E402

CONFIG = ROOT / "bench" / "challenges.json"
LOADGEN = ROOT / "bench" / ".bin" / "loadgen"
STAT_CODES = ("enemy_kills", "login_count", "games_played", "headshots", "wins")
GOALS = ["logins", "daily-login"] + [f"{k}-{c}" for c in STAT_CODES for k in ("total", "best")]
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ CPU and metrics


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of a process (+ its reaped children's with `children`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / TICK


def postgres_cpu(pg_data: Path) -> float:
    """All CPU of our PostgreSQL cluster so far: postmaster, live backends, exited ones."""
    postmaster = int((pg_data / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        ppid = next(
            (line.split()[1] for line in status.splitlines() if line.startswith("PPid")), ""
        )
        if ppid == str(postmaster):
            with contextlib.suppress(OSError):  # it just exited
                total += cpu_seconds(int(entry.name))
    return total


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        body = reply.read().decode()
    out: dict[str, float] = defaultdict(float)
    for line in body.splitlines():
        if line and not line.startswith("#"):
            sample, _, value = line.rpartition(" ")
            out[sample.split("{", 1)[0]] += float(value)
    return out


# ------------------------------------------------------------------ database


async def prepare(url: str, users: int) -> None:
    """Fresh rows: every user x every goal `not_started`, nothing else in our tables."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "TRUNCATE user_goal_progress, challenge_processed_events, challenge_daily_marks, "
            "challenge_dead_letters, challenge_goal_completions, challenge_completion_deliveries"
        )
        await conn.execute(
            "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace) "
            "SELECT format('user-%s', lpad(u::text, 5, '0')), g, "
            "CASE WHEN g LIKE '%login%' AND g NOT LIKE '%count' THEN 'bench-logins' "
            "ELSE 'bench-stats' END, 'mygame' "
            "FROM generate_series(0, $1 - 1) u, unnest($2::text[]) g",
            users,
            GOALS,
        )
        # Fresh statistics and visibility map now, so autovacuum does not run mid-measurement.
        await conn.execute("VACUUM ANALYZE user_goal_progress")
    finally:
        await conn.close()


async def database_counters(url: str) -> dict[str, float]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit + xact_rollback AS xacts FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
        return {"xacts": float(row["xacts"])}
    finally:
        await conn.close()


async def verify(url: str, acked_path: Path, errors: int) -> dict[str, Any]:
    """Every acknowledged event against the table (contract §6: none lost, none twice)."""
    logins: dict[str, int] = defaultdict(int)
    totals: dict[tuple[str, str], int] = defaultdict(int)
    values: dict[tuple[str, str], set[int]] = defaultdict(set)
    acked = 0
    with acked_path.open() as handle:
        for line in handle:
            parts = line.split()
            acked += 1
            if parts[0] == "L":
                logins[parts[1]] += 1
            else:
                _, user, code, value, inc = parts
                totals[(user, code)] += int(inc)
                values[(user, code)].add(int(value))
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT user_id, goal_id, progress, status FROM user_goal_progress "
            "WHERE progress <> 0 OR status <> 'not_started'"
        )
    finally:
        await conn.close()
    found = {(r["user_id"], r["goal_id"]): (r["progress"], r["status"]) for r in rows}
    lost = extra = other_value = 0
    expected: dict[tuple[str, str], Any] = {}
    for user, n in logins.items():
        expected[(user, "logins")] = n
        expected[(user, "daily-login")] = "completed"
    for (user, code), total in totals.items():
        expected[(user, f"total-{code}")] = total
        expected[(user, f"best-{code}")] = values[(user, code)]
    for key, want in expected.items():
        progress, status = found.get(key, (0, "not_started"))
        if isinstance(want, int):
            lost += progress < want
            extra += progress > want
        elif isinstance(want, set):
            # the latest value: with failed calls it may be one of theirs (a call answered
            # UNAVAILABLE can still be written), which no count here can tell from a loss
            mismatch = progress not in want and not (progress == 0 and 0 in want)
            if errors:
                other_value += mismatch
            else:
                lost += mismatch
        else:
            lost += status != want
    extra += sum(1 for key in found if key not in expected)
    return {
        "acked_events": acked,
        "rows_checked": len(expected),
        "rows_short_of_acked": lost,  # an acknowledged update missing: must be 0
        "rows_beyond_acked": extra,  # written though not acknowledged: only with errors
        # latest-value rows holding a value no acknowledged call sent (only with errors)
        "value_rows_from_failed_calls": other_value,
        "exact": lost == 0 and (extra == 0 or errors > 0),
    }


# ------------------------------------------------------------------ completions


class StandInSidecar:
    """The sidecar stand-in on its own event loop in a thread (this script is sync)."""

    def __init__(self) -> None:
        self.sidecar = SidecarStandIn()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.sidecar.start(), self.loop).result(30)

    def env(self) -> dict[str, str]:
        host, port = self.sidecar.target
        return {
            "COMPLETION_SINKS": "async-messaging",
            "ASYNC_MESSAGING_PUBLISHER_GRPC_HOST": host,
            "ASYNC_MESSAGING_PUBLISHER_GRPC_PORT": str(port),
        }

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sidecar.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


def with_sidecar(args: argparse.Namespace, extra: dict[str, str]) -> dict[str, str]:
    """--completions: start the stand-in; serve's extra environment points at it."""
    args.sidecar = StandInSidecar() if args.completions else None
    return extra if args.sidecar is None else {**args.sidecar.env(), **extra}


def stop_sidecar(args: argparse.Namespace) -> None:
    if args.sidecar is not None:
        args.sidecar.stop()


async def publish_lag(url: str, sidecar: Any, timeout: float = 120) -> dict[str, Any]:
    """Once the outbox has drained: completions written, received, and the lag from
    `created_at` to the first arrival at the stand-in."""
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval(
            "SELECT count(*) FROM challenge_goal_completions WHERE published_at IS NULL"
        ):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        created = {
            str(r["id"]): r["created_at"]
            for r in await conn.fetch("SELECT id, created_at FROM challenge_goal_completions")
        }
    finally:
        await conn.close()
    first: dict[str, datetime] = {}
    for received in list(sidecar.received):
        first.setdefault(received.id, received.at)
    lags = sorted(
        (at - created[i]).total_seconds() * 1000 for i, at in first.items() if i in created
    )

    def pct(q: float) -> float | None:
        return round(lags[min(len(lags) - 1, int(q * len(lags)))], 2) if lags else None

    return {
        "written": len(created),
        "received": len(sidecar.received),
        "distinct_received": len(first),
        "all_delivered": set(created) <= set(first),
        "lag_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": lags[-1] if lags else None},
    }


# ------------------------------------------------------------------ servers


class Target:
    def __init__(self, name: str, env: dict[str, str], log_dir: Path):
        self.name = name
        self.port = free_port()
        self.metrics_port = free_port()
        self.env = env
        self.log = log_dir / f"{re.sub(r'[^A-Za-z0-9_.+=-]', '_', name)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def app(self) -> bool:
        return self.name != "empty"

    def start(self) -> None:
        if self.app:
            cmd = [sys.executable, "-m", "app", "serve"]
            env = {
                **os.environ,
                **self.env,
                "GRPC_PORT": str(self.port),
                "METRICS_PORT": str(self.metrics_port),
            }
        else:
            cmd = [
                sys.executable,
                str(ROOT / "bench" / "empty_server.py"),
                "--port",
                str(self.port),
            ]
            env = dict(os.environ)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                if (
                    not self.app
                    or self.metric("challenge_event_handler_grpc_in_flight_requests") >= 0
                ):
                    time.sleep(0.5)  # health monitor's first probe, config loaded
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"{self.name} did not start")

    def metric(self, name: str) -> float:
        return scrape(self.metrics_port).get(name, 0.0)

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid, children=True)

    def settle(self, timeout: float = 30) -> None:
        """Wait until everything acknowledged is committed (buffered acks flush later)."""
        deadline = time.monotonic() + timeout
        last = -1.0
        while time.monotonic() < deadline:
            body = scrape(self.metrics_port)
            flushes = body.get("challenge_event_handler_flush_duration_seconds_count", 0)
            if body.get("challenge_event_handler_buffer_size", 1) == 0 and flushes == last:
                return
            last = flushes
            time.sleep(0.5)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


# ------------------------------------------------------------------ runs


def loadgen_cmd(
    target: Target, mode: str, value: float, args: argparse.Namespace, acked: Path
) -> list[str]:
    cmd = [
        str(LOADGEN),
        f"-target=127.0.0.1:{target.port}",
        f"-mode={mode}",
        f"-duration={args.duration}s",
        f"-users={args.users}",
        f"-conns={args.conns}",
        f"-acked={acked}",
        f"-run={target.name}-{mode}-{int(value)}-{time.time_ns()}",
    ]
    cmd.append(f"-rate={value}" if mode == "fixed" else f"-concurrency={int(value)}")
    return cmd


def loadgen(target: Target, mode: str, value: float, args: argparse.Namespace, acked: Path) -> dict:
    cmd = loadgen_cmd(target, mode, value, args, acked)
    done = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=args.duration + 120
    )
    if done.returncode != 0:
        raise SystemExit(f"loadgen failed: {done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def one_run(
    target: Target, mode: str, value: float, args: argparse.Namespace, url: str, work: Path
) -> dict[str, Any]:
    sidecar = getattr(args, "sidecar", None)
    if target.app:
        asyncio.run(prepare(url, args.users))
        if sidecar is not None:
            sidecar.sidecar.received.clear()
    acked = work / f"{target.name}-{mode}-{int(value)}.acked"
    before_cpu, before_pg = target.cpu(), postgres_cpu(args.pg_data)
    before_db = asyncio.run(database_counters(url)) if target.app else {}
    before_m = scrape(target.metrics_port) if target.app else {}
    summary = loadgen(target, mode, value, args, acked)
    if target.app:
        target.settle()
    run: dict[str, Any] = {"target": target.name, **summary}
    ok = max(1, summary["ok"])
    cpu = target.cpu() - before_cpu
    pg = postgres_cpu(args.pg_data) - before_pg
    run["server_cpu_s"] = round(cpu, 2)
    run["server_cpu_ms_per_event"] = round(cpu * 1000 / ok, 3)
    run["postgres_cpu_s"] = round(pg, 2)
    run["postgres_cpu_ms_per_event"] = round(pg * 1000 / ok, 3)
    if target.app:
        after_m = scrape(target.metrics_port)
        after_db = asyncio.run(database_counters(url))
        seconds = summary["seconds"]

        def delta(name: str) -> float:
            return after_m.get(name, 0) - before_m.get(name, 0)

        flushes = delta("challenge_event_handler_flush_duration_seconds_count")
        statements = delta("challenge_event_handler_db_statements_total")
        run["flushes"] = int(flushes)
        run["events_per_flush"] = round(ok / max(1, flushes), 1)
        run["flush_statements_per_s"] = round(statements / seconds, 1)
        run["flush_statements_per_event"] = round(statements / ok, 3)
        run["db_transactions_per_s"] = round((after_db["xacts"] - before_db["xacts"]) / seconds, 1)
        run["rows_carried"] = int(delta("challenge_event_handler_rows_carried_total"))
        errors = summary["sent"] - summary["ok"]
        run["verify"] = asyncio.run(verify(url, acked, errors))
        if sidecar is not None:
            run["completions"] = asyncio.run(publish_lag(url, sidecar.sidecar))
    acked.unlink(missing_ok=True)
    return run


def lock_scenario(target: Target, args: argparse.Namespace, url: str, work: Path) -> dict:
    """Contract §6: the backend's claim holds one user's rows FOR UPDATE for 10 s while
    1,000 users send 200 events/s; the others must not wait, the held user stays exact."""
    users, rate, duration, lock_at, lock_for = 1000, 200.0, 20, 5.0, 10.0
    asyncio.run(prepare(url, args.users))
    acked, calls = work / "lock.acked", work / "lock.calls"
    cmd = loadgen_cmd(target, "fixed", rate, args, acked)
    cmd = [c for c in cmd if not c.startswith(("-users=", "-duration="))]
    cmd += [f"-users={users}", f"-duration={duration}s", f"-calls={calls}"]
    before = target.metric("challenge_event_handler_rows_carried_total")
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    async def hold() -> int:
        await asyncio.sleep(lock_at)
        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                locked = await conn.fetch(
                    "SELECT 1 FROM user_goal_progress WHERE user_id = 'user-00000' FOR UPDATE"
                )
                await asyncio.sleep(lock_for)
            return len(locked)
        finally:
            await conn.close()

    locked = asyncio.run(hold())
    out, _ = client.communicate(timeout=duration + 120)
    summary = json.loads(out.strip().splitlines()[-1])
    target.settle()
    others: list[float] = []
    other_codes: dict[str, int] = defaultdict(int)
    held_codes: dict[str, int] = defaultdict(int)
    held_latencies: list[float] = []
    for line in calls.read_text().splitlines():
        sent, user, code, latency = line.split()
        if user == "user-00000":
            held_codes[code] += 1
            held_latencies.append(float(latency))
        elif lock_at <= float(sent) / 1000 < lock_at + lock_for:
            other_codes[code] += 1
            if code == "OK":
                others.append(float(latency))
    others.sort()

    def pct(q: float) -> float:
        return others[int(q * (len(others) - 1))] if others else 0.0

    errors = summary["sent"] - summary["ok"]
    result = {
        "target": target.name,
        "mode": "lock",
        "offered_rate": rate,
        "users": users,
        "lock": f"user-00000's {locked} rows FOR UPDATE from {lock_at:.0f} s for {lock_for:.0f} s",
        "others_during_lock": {
            "calls": sum(other_codes.values()),
            "codes": dict(other_codes),
            "p50_ms": pct(0.5),
            "p95_ms": pct(0.95),
            "p99_ms": pct(0.99),
            "max_ms": others[-1] if others else 0.0,
        },
        "held_user": {"codes": dict(held_codes), "max_ms": max(held_latencies, default=0.0)},
        "rows_carried": int(target.metric("challenge_event_handler_rows_carried_total") - before),
        "overall": summary,
        "verify": asyncio.run(verify(url, acked, errors)),
    }
    acked.unlink(missing_ok=True)
    return result


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()[0].split()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(int(meminfo[1]) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg(),
        "note": "client, server and PostgreSQL share the machine (and other work may run)",
    }


def versions(url: str) -> dict[str, str]:
    async def pg() -> str:
        conn = await asyncpg.connect(url)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    go = subprocess.run(["go", "version"], check=False, capture_output=True, text=True)
    return {
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "postgresql": asyncio.run(pg()),
        "go": go.stdout.strip(),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.strip(),
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - optional (the bench extra), only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(9, 5.5))
    styles = {"p50_ms": ":", "p95_ms": "--", "p99_ms": "-"}
    colors = {"empty": "tab:gray", "durable": "tab:blue", "buffered": "tab:orange"}
    colors.update({t: None for t in results["targets"] if t not in colors})
    for target in results["targets"]:
        fixed = sorted(
            (r for r in results["runs"] if r["target"] == target and r["mode"] == "fixed"),
            key=lambda r: r["offered_rate"],
        )
        for key, style in styles.items():
            ax.plot(
                [r["offered_rate"] for r in fixed],
                [max(r[key], 0.01) for r in fixed],
                style,
                marker="o",
                color=colors[target],
                label=f"{target} {key[:3]}",
            )
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (events/s, open loop)")
    ax.set_ylabel("latency (ms, log scale)")
    maxes: dict[str, list[float]] = defaultdict(list)
    for run in results["runs"]:
        if run["mode"] == "max":
            maxes[run["target"]].append(run["ok_per_second"])
    note = "max mode, median ok/s: " + ", ".join(
        f"{t} {sorted(v)[len(v) // 2]:,.0f}" for t, v in maxes.items()
    )
    ax.set_title(
        f"gRPC OnMessage latency, Extend mix ({results['date'][:10]})\n{note}", fontsize=10
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", required=True, help="postgresql:// URL of the server")
    parser.add_argument("--database", default="bench_grpc", help="database created for the runs")
    parser.add_argument("--targets", default="empty,durable,buffered")
    parser.add_argument("--rates", default="250,500,1000,1500")
    parser.add_argument("--concurrency", type=int, default=500, help="max mode: calls in flight")
    parser.add_argument("--max-runs", type=int, default=1, help="max-mode runs per target")
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for serve")
    parser.add_argument(
        "--zipkin",
        default="http://127.0.0.1:9411/api/v2/spans",
        help="span endpoint of the `+tracing` variants (e.g. --targets durable,durable+tracing)",
    )
    parser.add_argument(
        "--lock-scenario", action="store_true", help="also the held-row scenario (durable)"
    )
    parser.add_argument(
        "--completions",
        action="store_true",
        help="publish goal-completed events to the sidecar stand-in; report the publish lag",
    )
    services = os.environ.get("SERVICES_DIR", str(Path.home() / ".cache" / "challenge-services"))
    parser.add_argument("--pg-data", type=Path, default=Path(services) / "pg" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grpc_load.json")
    args = parser.parse_args()

    subprocess.run(
        ["go", "build", "-o", str(LOADGEN), "."], cwd=ROOT / "bench" / "loadgen", check=True
    )
    base, _, _ = args.database_url.rpartition("/")
    url = f"{base}/{args.database}"

    async def create() -> None:
        conn = await asyncpg.connect(args.database_url)
        try:
            if not await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", args.database
            ):
                await conn.execute(f'CREATE DATABASE "{args.database}"')
        finally:
            await conn.close()

    asyncio.run(create())
    upgrade(async_database_url("DATABASE_URL", url))
    asyncio.run(prepare(url, args.users))
    extra = with_sidecar(args, dict(item.split("=", 1) for item in args.env))
    serve_env = {
        "DATABASE_URL": url,
        "AB_NAMESPACE": "mygame",
        "CONFIG_PATH": str(CONFIG),
        "ASSIGNMENT_MODE": "required",
        **extra,
    }
    targets = args.targets.split(",")
    plan = [("fixed", float(r)) for r in args.rates.split(",") if r] + [
        ("max", float(args.concurrency))
    ] * args.max_runs
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": machine(),
        "versions": versions(url),
        "settings": {
            "serve_env": serve_env,
            "duration_s": args.duration,
            "users": args.users,
            "client_connections": args.conns,
            "zipkin_of_tracing_variants": args.zipkin,
        },
        "targets": targets,
        "runs": [],
    }
    work = Path(tempfile.mkdtemp(prefix="grpc-load-"))
    for name in targets:
        # "durable+BUFFER_COMMIT_DELAY=2ms": a variant with more settings; "+tracing":
        # with OTEL_EXPORTER_ZIPKIN_ENDPOINT=--zipkin
        mode_name, *overrides = name.split("+")
        env = {}
        if mode_name in ("durable", "buffered"):
            variant = dict(
                ("OTEL_EXPORTER_ZIPKIN_ENDPOINT", args.zipkin)
                if o == "tracing"
                else o.split("=", 1)
                for o in overrides
            )
            env = {**serve_env, "ACK_MODE": mode_name, **variant}
        target = Target(name, env, work)
        target.start()
        try:
            for mode, value in plan:
                run = one_run(target, mode, value, args, url, work)
                results["runs"].append(run)
                print(
                    f"{name:8} {mode:5} {value:6.0f}: {run['ok_per_second']:8,.0f} ok/s "
                    f"p50 {run['p50_ms']:7.2f} p95 {run['p95_ms']:7.2f} p99 {run['p99_ms']:7.2f} "
                    f"max {run['max_ms']:7.1f} ms  codes {run['codes']}  cpu/ev "
                    f"{run['server_cpu_ms_per_event']} ms  pg/ev {run['postgres_cpu_ms_per_event']} ms"
                    + (
                        f"  stmts/ev {run['flush_statements_per_event']} exact {run['verify']['exact']}"
                        if "verify" in run
                        else ""
                    )
                    + (
                        f"  completions {run['completions']['written']} publish lag "
                        f"p99 {run['completions']['lag_ms']['p99']} ms"
                        if "completions" in run
                        else ""
                    ),
                    flush=True,
                )
            if args.lock_scenario and name == "durable":
                run = lock_scenario(target, args, url, work)
                results["runs"].append(run)
                print(
                    f"{name:8} lock: {json.dumps(run['others_during_lock'])} held "
                    f"{run['held_user']} exact {run['verify']['exact']}",
                    flush=True,
                )
        finally:
            results.setdefault("exit_codes", {})[name] = target.stop()
    stop_sidecar(args)
    maxes: dict[str, list[float]] = defaultdict(list)
    for run in results["runs"]:
        if run["mode"] == "max":
            maxes[run["target"]].append(run["ok_per_second"])
    best = {k: sorted(v)[len(v) // 2] for k, v in maxes.items()}
    if "durable" in best:
        results["ratios_at_max"] = {
            f"durable/{other}": round(best["durable"] / best[other], 3)
            for other in ("buffered", "empty")
            if best.get(other)
        } | {
            f"{other}/durable": round(best[other] / best["durable"], 3)
            for other in best
            if other.startswith("durable+")
        }
        print("ratios at max:", results["ratios_at_max"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    try:
        plot(results, args.out.with_suffix(".png"))
    except ImportError:
        print("matplotlib missing: no plot (pip install .[bench])")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
