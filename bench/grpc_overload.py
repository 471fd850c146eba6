"""Overload probe: keep N OnMessage calls in flight against a running `serve`
for D seconds and print the answers by code with client-side latency percentiles.

    .venv/bin/python bench/grpc_overload.py 127.0.0.1:6565 1500 20 4
    # then: curl -s localhost:8080/metrics | grep -E "grpc_requests_total|grpc_shed_total"

Compare the client's counts with the server's `grpc_requests_total`: a call answered
but not counted there was dropped before our handler saw it. The client is Python on the
same machine; its latencies include its own queueing.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.bridge.client import login_message, stat_message
from proto.build import load as load_protos

pb = load_protos()


async def main(target: str, in_flight: int, seconds: float, channels: int) -> None:
    chans = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    stubs = [
        (
            pb.login_grpc.UserAuthenticationUserLoggedInServiceStub(c),
            pb.stat_grpc.StatisticStatItemUpdatedServiceStub(c),
        )
        for c in chans
    ]
    answers: Counter[str] = Counter()
    latency: dict[str, list[float]] = {}
    end = time.monotonic() + seconds

    async def caller(i: int) -> None:
        login_stub, stat_stub = stubs[i % len(stubs)]
        while time.monotonic() < end:
            user = f"ov-{random.randrange(10_000)}"
            started = time.perf_counter()
            try:
                if random.random() < 0.2:
                    await login_stub.OnMessage(login_message(user, "mygame"), timeout=30)
                else:
                    message = stat_message(user, "mygame", "enemy_kills", 5, 1)
                    await stat_stub.OnMessage(message, timeout=30)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            answers[code] += 1
            latency.setdefault(code, []).append(time.perf_counter() - started)

    await asyncio.gather(*(caller(i) for i in range(in_flight)))
    for c in chans:
        await c.close()
    print(dict(answers))
    for code, values in latency.items():
        values.sort()
        p50, p99 = values[len(values) // 2], values[int(len(values) * 0.99)]
        print(
            f"{code}: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {values[-1] * 1000:.1f} ms"
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])))
