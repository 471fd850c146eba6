"""`GRPC_WORKERS=N python -m app serve`: N server processes on one port.

One grpc.aio process is bound by grpcio's per-call CPU (about half a millisecond), so a
host with spare cores serves more calls with more processes. The kernel spreads
connections over the workers (SO_REUSEPORT). Each worker is a complete `serve` with its
own buffer, flusher and health; the in-database merge and the recorded event ids keep
them correct exactly as they keep separate replicas correct.

The supervisor migrates the schema once, serves the workers' merged metrics on
METRICS_PORT (prometheus-client multiprocess mode), forwards SIGTERM/SIGINT/SIGHUP, and
exits when they have: 0 after a clean drain, or the first failing worker's code (the
others are stopped, so the platform restarts the whole pod).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

from app.bridge.service import migrate
from app.core.settings import SUPERVISED_ENV, Settings

log = logging.getLogger(__name__)


def _serve_merged_metrics(port: int, directory: str) -> None:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    start_http_server(port, registry=registry)


def supervise(settings: Settings) -> int:
    if not asyncio.run(migrate(settings)):
        return 1
    metrics_dir = tempfile.mkdtemp(prefix="challenge-metrics-")
    env = {
        **os.environ,
        "GRPC_WORKERS": "1",
        SUPERVISED_ENV: "1",
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }
    command = [sys.executable, "-m", "app", "serve"]
    workers = [subprocess.Popen(command, env=env) for _ in range(settings.grpc_workers)]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        _serve_merged_metrics(settings.metrics_port, metrics_dir)
        log.info(
            "gRPC workers started",
            extra={
                "workers": len(workers),
                "grpc_port": settings.grpc_port,
                "database": settings.database_label,
                "pids": [w.pid for w in workers],
            },
        )
        while True:
            codes = [worker.poll() for worker in workers]
            if all(code is not None for code in codes):
                break
            first_failure = next((c for c in codes if c not in (None, 0)), None)
            if not stopping and (first_failure is not None or 0 in codes):
                log.error("a gRPC worker exited, stopping the others", extra={"codes": codes})
                stopping = True
                forward(signal.SIGTERM, None)
            time.sleep(0.2)  # the supervisor only watches; signals interrupt the sleep
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    returncodes = [worker.returncode for worker in workers]
    failures = [code for code in returncodes if code != 0]
    log.info("gRPC workers stopped", extra={"codes": returncodes})
    return failures[0] if failures else 0
