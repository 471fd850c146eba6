"""`python -m app serve`: the AccelByte Extend event-bridge gRPC server (SPEC §1.1, §2, §6).

One OnMessage call = decode + validate -> `Pipeline.submit` -> answer:
- ACK_MODE=durable: wait (bounded) for the commit of the flush holding the event
  (group commit); a timeout answers UNAVAILABLE but the event stays buffered and will be
  written, and the bridge's redelivery is absorbed by the pipeline's dedup window.
- ACK_MODE=buffered: answer once buffered.
- buffer full for longer than GRPC_BUFFER_WAIT (database down) -> UNAVAILABLE.

Lifecycle: SIGTERM/SIGINT -> health NOT_SERVING, stop accepting, let in-flight calls
finish, final flush, exit 0. SIGHUP -> reload CONFIG_PATH (validated first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from app.bridge import wire
from app.bridge.gdpr import GDPR_SERVICE, add_gdpr_service
from app.bridge.health import HealthMonitor
from app.bridge.refusals import RefusalLog
from app.bridge.shedding import OVERLOADED, Shedder, server_options
from app.core.challenges import ChallengeConfig
from app.core.clock import now_utc
from app.core.events import Event, InvalidEvent
from app.core.settings import Settings
from app.core.time_bounds import TimeBounds
from app.observability import event_times, metrics
from app.pipeline import Pipeline, reload_config, settle_heap
from tables.buffer import ABORTED, COMMITTED, BufferFull, Closed
from tables.db import make_engine
from tables.migrate import upgrade_async, wait_for_progress_table

log = logging.getLogger(__name__)

LOGIN_SERVICE, STAT_SERVICE = wire.LOGIN_SERVICE, wire.STAT_SERVICE
LOGIN_METHOD = f"/{LOGIN_SERVICE}/OnMessage"
STAT_METHOD = f"/{STAT_SERVICE}/OnMessage"
# google.protobuf.Empty serialises to no bytes: answered as such, no serializer per call.
EMPTY = b""
OK = grpc.StatusCode.OK
RECEIVED = metrics.EVENTS.labels("grpc")

Decoder = Callable[[Any, Any, TimeBounds], Event]


class Method:
    """One OnMessage method: its decoder and its metric children, looked up once."""

    __slots__ = ("decode", "duration", "name", "ok")

    def __init__(self, name: str, decode: Decoder):
        self.name = name
        self.decode = decode
        self.ok = metrics.GRPC_REQUESTS.labels(name, grpc.StatusCode.OK.name)
        self.duration = metrics.GRPC_DURATION.labels(name)


class EventHandler:
    """The shared OnMessage logic of both services."""

    def __init__(self, pipeline: Pipeline, settings: Settings):
        self.pipeline = pipeline
        self.flusher = pipeline.flusher
        self.durable = settings.ack_mode == "durable"
        self.buffer_wait = settings.grpc_buffer_wait
        self.ack_timeout = settings.grpc_ack_timeout
        self._requests: dict[tuple[str, grpc.StatusCode], Any] = {}
        self.login = Method(LOGIN_METHOD, wire.login_event)
        self.stat = Method(STAT_METHOD, wire.stat_event)
        self.shedder = Shedder(settings.grpc_max_concurrent_rpcs)
        # Group commit waits for more callers only while this many are in flight.
        self.flusher.crowd = lambda: self.shedder.in_flight
        self.refusals = RefusalLog(log)
        # event times out of bounds fall back to the receipt time, counted (contract §1.3)
        self.time_bounds = TimeBounds.from_settings(settings, note=event_times.note)
        # The in-flight gauge is read from the Shedder's count at scrape time (nothing to
        # do per call); GRPC_WORKERS' multiprocess mode cannot call back into a worker, so
        # there it is kept per call.
        self._in_flight = metrics.GRPC_IN_FLIGHT if metrics.multiprocess() else None
        if self._in_flight is None:
            metrics.GRPC_IN_FLIGHT.set_function(lambda: self.shedder.in_flight)

    def _count(self, method: Method, code: grpc.StatusCode, seconds: float) -> None:
        """A call that was not answered OK (label children cached)."""
        counter = self._requests.get((method.name, code))
        if counter is None:
            counter = self._requests[(method.name, code)] = metrics.GRPC_REQUESTS.labels(
                method.name, code.name
            )
        counter.inc()
        method.duration.observe(seconds)

    async def handle(
        self, method: Method, request: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        started = time.perf_counter()
        shedder = self.shedder
        if not shedder.enter():  # overloaded: refuse before any work, counted
            self._count(method, grpc.StatusCode.RESOURCE_EXHAUSTED, time.perf_counter() - started)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, OVERLOADED)
        in_flight = self._in_flight
        if in_flight is not None:
            in_flight.inc()
        code, message = grpc.StatusCode.INTERNAL, "internal error"
        try:
            code, message = await self._process(method.decode, request)
        except asyncio.CancelledError:  # the caller gave up (deadline, disconnect, shutdown)
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:  # a bug: answer INTERNAL (the bridge retries), keep serving
            log.exception("OnMessage failed")
        finally:
            shedder.leave()
            if in_flight is not None:
                in_flight.dec()
            if code is OK:
                method.ok.inc()
                method.duration.observe(time.perf_counter() - started)
            else:
                self._count(method, code, time.perf_counter() - started)
        if code is not OK:
            await context.abort(code, message)
        return EMPTY

    async def _process(self, decode: Decoder, request: bytes) -> tuple[grpc.StatusCode, str]:
        RECEIVED.inc()
        try:
            event = decode(request, now_utc(), self.time_bounds)
        except InvalidEvent as exc:
            metrics.FAILED.labels(exc.reason).inc()
            self.refusals.note(exc.reason, exc.message)  # one aggregated line per interval
            return grpc.StatusCode.INVALID_ARGUMENT, exc.message
        durable = self.durable
        try:
            generation = await self.pipeline.buffer(event, timeout=self.buffer_wait, urgent=durable)
        except BufferFull:
            metrics.FAILED.labels("buffer_full").inc()
            return grpc.StatusCode.UNAVAILABLE, "buffer full: database not keeping up, retry"
        except Closed:
            return grpc.StatusCode.UNAVAILABLE, "server is shutting down, retry"
        if generation is None or not durable:
            return OK, ""
        # Waits for this user's rows only: a row another transaction holds delays its
        # own user's calls, never the others of the same flush.
        state = await self.flusher.committed(generation, event.user_id, self.ack_timeout)
        if state == COMMITTED:
            return OK, ""
        if state == ABORTED:
            metrics.FAILED.labels("not_committed").inc()
            return grpc.StatusCode.UNAVAILABLE, "not committed (server shutting down), retry"
        metrics.FAILED.labels("ack_timeout").inc()
        return grpc.StatusCode.UNAVAILABLE, "not committed in time (database slow), retry"


def _add_event_services(server: grpc.aio.Server, handler: EventHandler) -> None:
    """Both OnMessage methods take the raw request bytes; app/bridge/wire.py decodes them."""
    login_method, stat_method, handle = handler.login, handler.stat, handler.handle

    async def login(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await handle(login_method, request, context)

    async def stat(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await handle(stat_method, request, context)

    wire.add_event_services(server, login, stat)


def build_server(
    handler: EventHandler, monitor: HealthMonitor, port: int, max_rpcs: int, reuse_port: bool
) -> grpc.aio.Server:
    """Both event services, health and reflection on one grpc.aio server."""
    server = grpc.aio.server(
        # No maximum_concurrent_rpcs: grpc.aio queues calls over it (it never refuses);
        # the handler's Shedder refuses past max_rpcs instead (app/bridge/shedding.py).
        # A second instance on the port fails loudly, unless GRPC_WORKERS processes share it.
        options=[("grpc.so_reuseport", 1 if reuse_port else 0), *server_options(max_rpcs)],
    )
    handler.shedder.limit = max_rpcs
    _add_event_services(server, handler)
    add_gdpr_service(server, handler.pipeline.flusher, handler.pipeline.settings)
    health_pb2_grpc.add_HealthServicer_to_server(monitor.servicer, server)
    reflection.enable_server_reflection(
        (
            LOGIN_SERVICE,
            STAT_SERVICE,
            GDPR_SERVICE,
            "grpc.health.v1.Health",
            reflection.SERVICE_NAME,
        ),
        server,
    )
    server.add_insecure_port(f"[::]:{port}")
    return server


def install_signals(stop: asyncio.Event, pipeline: Pipeline, config_path: Any) -> None:
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

    loop.add_signal_handler(signal.SIGHUP, reload_config, config_path, use_config)


async def start_serving(
    server: grpc.aio.Server,
    monitor: HealthMonitor,
    settings: Settings,
    engine: Any,
    stop: asyncio.Event,
) -> None:
    """Start the server and health. ASSIGNMENT_MODE=required: the challenge backend owns
    user_goal_progress, so until it exists health is NOT_SERVING (the server already
    answers health) and we wait for it (SPEC §5.1)."""
    if settings.assignment_mode == "required":
        await monitor.set_all(False)
        await server.start()
        await wait_for_progress_table(engine, stop, interval=settings.health_check_interval)
    await monitor.check_once()
    monitor.start()
    if settings.assignment_mode != "required":
        await server.start()


async def serve(settings: Settings, config: ChallengeConfig) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    if not settings.grpc_supervised:  # the supervisor migrated once for all its workers
        log.info("migrating database schema")
        try:
            await upgrade_async(settings.database_url, assignment_mode=settings.assignment_mode)
        except Exception as exc:  # unreachable database, bad credentials: exit 1, no traceback
            log.error("database schema upgrade failed", extra={"error": str(exc)[:500]})
            return 1
    pipeline = Pipeline.open(settings, config, record_event_ids=True)
    health_engine = make_engine(settings.database_url, pool_size=1)
    monitor = HealthMonitor(
        health_engine,
        (LOGIN_SERVICE, STAT_SERVICE, GDPR_SERVICE),
        interval=settings.health_check_interval,
        # Writes stuck (flushes failing, or one running past the ack timeout): NOT_SERVING.
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
        return 1
    stop = asyncio.Event()
    install_signals(stop, pipeline, settings.config_path)

    settle_heap()  # start-up done: the collector tuned for what traffic keeps alive
    pipeline.start()
    await start_serving(server, monitor, settings, health_engine, stop)
    log.info(
        "gRPC server started",
        extra={
            "grpc_port": settings.grpc_port,
            "metrics_port": settings.metrics_port,
            "namespace": settings.namespace,
            "ack_mode": settings.ack_mode,
            "flush_interval_ms": int(settings.flush_interval * 1000),
            "goals": len(config.goals),
        },
    )
    await stop.wait()

    log.info("shutting down: draining in-flight calls")
    started = time.perf_counter()
    grace = settings.grpc_shutdown_grace
    await monitor.drain()
    pipeline.flusher.request_flush()  # durable calls in flight: commit them now
    stopping = asyncio.create_task(server.stop(grace))  # no new calls; in-flight finish
    # The final flush gets the grace minus a moment for the calls to be answered; if the
    # database cannot take it by then, uncommitted durable calls get UNAVAILABLE.
    margin = min(1.0, grace * 0.1)
    committed = await pipeline.close(timeout=grace - margin - (time.perf_counter() - started))
    await stopping
    handler.refusals.flush()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(health_engine.dispose(), margin)
    log.info(
        "shutdown complete" if committed else "shutdown incomplete: buffered events not committed",
        extra={"duration_ms": round((time.perf_counter() - started) * 1000, 1)},
    )
    return 0 if committed else 1
