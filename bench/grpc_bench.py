"""Benchmark: `python -m app serve` under an Extend-bridge-like load.

Starts a real server process (PostgreSQL given by --database-url), then a load process
keeps `--concurrency` OnMessage calls in flight (the bridge sends up to ~500) for
`--events` calls over `--users` users (70 % stat updates, 30 % logins), and reports
calls/s and latency percentiles. Run it once per ACK_MODE.

  .venv/bin/python bench/grpc_bench.py --database-url postgresql://postgres:postgres@127.0.0.1:5432/challenge_db --ack-mode durable
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.bridge.client import login_message, stat_message  # noqa: E402
from proto.build import load as load_protos  # noqa: E402

LOGIN = "/accelbyte.iam.account.v1.UserAuthenticationUserLoggedInService/OnMessage"
STAT = "/accelbyte.social.statistic.v1.StatisticStatItemUpdatedService/OnMessage"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_serving(target: str, deadline: float) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("server did not become SERVING")


async def load(
    target: str, events: int, users: int, concurrency: int, channels: int = 1
) -> tuple[float, list[float], int]:
    pb = load_protos()
    rng = random.Random(11)
    messages = []
    for _ in range(events):
        user = f"grpc-bench-{rng.randrange(users):06d}"
        if rng.random() < 0.3:
            messages.append((LOGIN, login_message(user, "mygame")))
        else:
            code = rng.choice(("match_wins", "enemy_kills", "player_level"))
            value = float(rng.randrange(1, 500))
            messages.append((STAT, stat_message(user, "mygame", code, value, 1.0)))
    latencies: list[float] = []
    failures = 0
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    stubs = [
        {
            LOGIN: channel.unary_unary(
                LOGIN,
                request_serializer=pb.login_pb2.UserLoggedIn.SerializeToString,
                response_deserializer=lambda b: b,
            ),
            STAT: channel.unary_unary(
                STAT,
                request_serializer=pb.stat_pb2.StatItemUpdated.SerializeToString,
                response_deserializer=lambda b: b,
            ),
        }
        for channel in opened
    ]
    queue = iter(messages)

    async def worker(calls) -> None:
        nonlocal failures
        for method, message in queue:
            started = time.perf_counter()
            try:
                await calls[method](message, timeout=30)
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError:
                failures += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(stubs[i % channels]) for i in range(concurrency)))
    finally:
        for channel in opened:
            await channel.close()
    elapsed = time.perf_counter() - started
    return events / elapsed, latencies, failures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--ack-mode", default="durable", choices=("durable", "buffered"))
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--flush-interval", default="100ms")
    parser.add_argument("--workers", type=int, default=1, help="GRPC_WORKERS of the server")
    parser.add_argument("--channels", type=int, default=4, help="client connections")
    args = parser.parse_args()
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "AB_NAMESPACE": "mygame",
        "GRPC_PORT": str(port),
        "METRICS_PORT": str(metrics_port),
        "ACK_MODE": args.ack_mode,
        "BUFFER_FLUSH_INTERVAL": args.flush_interval,
        "LOG_LEVEL": "warning",
        "CONFIG_PATH": str(ROOT / "config" / "challenges.json"),
        "GRPC_WORKERS": str(args.workers),
    }
    server = subprocess.Popen([sys.executable, "-m", "app", "serve"], cwd=ROOT, env=env)
    target = f"127.0.0.1:{port}"
    try:
        asyncio.run(wait_serving(target, time.monotonic() + 60))
        rate, latencies, failures = asyncio.run(
            load(target, args.events, args.users, args.concurrency)
        )
    finally:
        server.terminate()
        server.wait(30)
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    print(
        f"ACK_MODE={args.ack_mode} workers={args.workers} flush={args.flush_interval} "
        f"concurrency={args.concurrency} channels={args.channels}: "
        f"{rate:,.0f} calls/s over {args.events} calls, {failures} failed; latency ms "
        f"p50 {p(0.5):.1f} p95 {p(0.95):.1f} p99 {p(0.99):.1f} (mean {statistics.fmean(latencies) * 1000:.1f})"
    )


if __name__ == "__main__":
    main()
