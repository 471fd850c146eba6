"""`python -m app serve`: the bridge's lifecycle around the gRPC server of
app/bridge/server.py.

Start: migrate (unless the GRPC_WORKERS supervisor did), pipeline, completion publisher,
health, then the server; ASSIGNMENT_MODE=required waits for the backend's table first.
SIGTERM/SIGINT -> readiness and liveness NOT_SERVING, stop accepting, let in-flight calls
finish, final flush, exit 0 — bounded by GRPC_SHUTDOWN_GRACE (then exit 1). SIGHUP ->
reload the config (a file is re-read; CHALLENGES_JSON cannot change: app/lifecycle.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from app.bridge.gdpr import GDPR_SERVICE
from app.bridge.health import HealthMonitor
from app.bridge.server import LOGIN_SERVICE, STAT_SERVICE, EventHandler, build_server
from app.completions.service import CompletionPublishing
from app.core.challenges import ChallengeConfig
from app.core.config_source import ConfigSource, config_source
from app.core.settings import Settings
from app.lifecycle import reload_from, settle_heap
from app.observability import tracing
from app.pipeline import Pipeline
from tables.db import make_engine
from tables.migrate import upgrade_async, wait_for_progress_table

log = logging.getLogger("app.bridge.server")


def install_signals(stop: asyncio.Event, pipeline: Pipeline, source: ConfigSource) -> None:
    """SIGTERM/SIGINT -> drain (a second one exits at once); SIGHUP -> reload config."""
    loop = asyncio.get_running_loop()

    def on_stop_signal() -> None:
        if stop.is_set():  # the operator insists: whatever is still buffered is lost
            log.error(
                "second stop signal: exiting now", extra={"pending": pipeline.flusher.pending}
            )
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal)

    def use_config(config: ChallengeConfig) -> None:
        pipeline.config = config

    loop.add_signal_handler(signal.SIGHUP, reload_from, source, use_config)


async def start_serving(
    server: grpc.aio.Server,
    monitor: HealthMonitor,
    settings: Settings,
    engine: Any,
    stop: asyncio.Event,
) -> None:
    """Start the server and health. ASSIGNMENT_MODE=required: the challenge backend owns
    user_goal_progress, so until it exists readiness is NOT_SERVING (the server already
    answers health, alive) and we wait for it (contract §5.1)."""
    if settings.assignment_mode == "required":
        await monitor.set_ready(False)
        await server.start()
        await wait_for_progress_table(engine, stop, interval=settings.health_check_interval)
    await monitor.check_once()
    monitor.start()
    if settings.assignment_mode != "required":
        await server.start()


async def migrate(settings: Settings) -> bool:
    """The schema upgrade at start; False (logged, no traceback) when it cannot run."""
    log.info("migrating database schema", extra={"database": settings.database_label})
    try:
        await upgrade_async(settings.database_url, assignment_mode=settings.assignment_mode)
    except Exception as exc:  # unreachable database, bad credentials: exit 1
        log.error(
            "database schema upgrade failed",
            extra={"database": settings.database_label, "error": str(exc)[:500]},
        )
        return False
    return True


@dataclass
class Bridge:
    """The parts of a running `serve`, started and stopped in order."""

    settings: Settings
    pipeline: Pipeline
    health_engine: AsyncEngine
    monitor: HealthMonitor
    handler: EventHandler
    server: grpc.aio.Server
    completions: CompletionPublishing

    @classmethod
    async def build(cls, settings: Settings, config: ChallengeConfig) -> Bridge | None:
        """None when the port cannot be bound (logged)."""
        pipeline = Pipeline.open(settings, config, record_event_ids=True)
        health_engine = make_engine(settings.database_url, pool_size=1)
        monitor = HealthMonitor(
            health_engine,
            (LOGIN_SERVICE, STAT_SERVICE, GDPR_SERVICE),
            interval=settings.health_check_interval,
            # Writes stuck (flushes failing, or one past the ack timeout): not ready.
            writes_stuck=lambda: pipeline.flusher.stalled(settings.grpc_ack_timeout),
        )
        handler = EventHandler(pipeline, settings)
        try:
            server = build_server(
                handler,
                monitor,
                settings.grpc_port,
                settings.grpc_max_concurrent_rpcs,
                settings.grpc_supervised,
            )
        except RuntimeError as exc:  # port taken
            log.error("cannot listen", extra={"grpc_port": settings.grpc_port, "error": str(exc)})
            await pipeline.engine.dispose()
            await health_engine.dispose()
            return None
        # goal-completed events: off unless COMPLETION_SINKS is set
        completions = CompletionPublishing(settings, lambda: pipeline.config)
        return cls(settings, pipeline, health_engine, monitor, handler, server, completions)

    async def start(self, stop: asyncio.Event) -> None:
        self.pipeline.start()
        self.completions.start()
        await start_serving(self.server, self.monitor, self.settings, self.health_engine, stop)

    async def shut_down(self) -> bool:
        """Drain: no new calls, in-flight calls finish, the final flush; bounded by
        GRPC_SHUTDOWN_GRACE. False when buffered events could not be committed."""
        started = time.perf_counter()
        grace = self.settings.grpc_shutdown_grace
        await self.monitor.drain()
        self.pipeline.flusher.request_flush()  # durable calls in flight: commit them now
        stopping = asyncio.create_task(self.server.stop(grace))  # in-flight calls finish
        # The final flush gets the grace minus a moment for the calls to be answered; if
        # the database cannot take it by then, uncommitted durable calls get UNAVAILABLE.
        margin = min(1.0, grace * 0.1)
        left = grace - margin - (time.perf_counter() - started)
        committed = await self.pipeline.close(timeout=left)
        await stopping
        await self.completions.stop(margin)
        self.handler.refusals.flush()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.health_engine.dispose(), margin)
        log.info(
            "shutdown complete" if committed else "shutdown incomplete: events not committed",
            extra={"duration_ms": round((time.perf_counter() - started) * 1000, 1)},
        )
        return committed


async def serve(settings: Settings, config: ChallengeConfig) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    # GRPC_WORKERS: the supervisor migrated once for all its workers
    if not settings.grpc_supervised and not await migrate(settings):
        return 1
    bridge = await Bridge.build(settings, config)
    if bridge is None:
        return 1
    stop = asyncio.Event()
    source = config_source(settings)
    install_signals(stop, bridge.pipeline, source)
    settle_heap()  # start-up done: the collector tuned for what traffic keeps alive
    await bridge.start(stop)
    log.info(
        "gRPC server started",
        extra={
            "grpc_port": settings.grpc_port,
            "metrics_port": settings.metrics_port,
            "namespace": settings.namespace,
            "database": settings.database_label,
            "config": source.label,
            "ack_mode": settings.ack_mode,
            "flush_interval_ms": int(settings.flush_interval * 1000),
            "goals": len(config.goals),
            "tracing": tracing.active,
        },
    )
    await stop.wait()
    log.info("shutting down: draining in-flight calls")
    return 0 if await bridge.shut_down() else 1
