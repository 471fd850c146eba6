"""The AccelByte Extend event-bridge gRPC server (contract §1.1, §2, §6): the OnMessage
handler and the server with its services (its lifecycle: app/bridge/service.py).

One OnMessage call = decode + validate -> `Pipeline.add` -> answer:
- ACK_MODE=durable: wait (bounded) for the commit of the flush holding the event
  (group commit); a timeout answers UNAVAILABLE but the event stays buffered and will be
  written, and the bridge's redelivery is absorbed by the pipeline's dedup window.
- ACK_MODE=buffered: answer once buffered.
- buffer full for longer than GRPC_BUFFER_WAIT (database down) -> UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
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
from app.core.clock import now_utc
from app.core.events import Event, InvalidEvent
from app.core.settings import Settings
from app.core.time_bounds import TimeBounds
from app.observability import event_times, metrics, tracing
from app.pipeline import Pipeline
from tables.accumulator import BufferFull, Closed
from tables.waiters import Ack

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
            generation = await self.pipeline.add(event, timeout=self.buffer_wait, urgent=durable)
        except BufferFull:
            metrics.FAILED.labels("buffer_full").inc()
            return grpc.StatusCode.UNAVAILABLE, "buffer full: database not keeping up, retry"
        except Closed:
            return grpc.StatusCode.UNAVAILABLE, "server is shutting down, retry"
        if tracing.active:  # the event on the call's span, the call on its flush's links
            tracing.note_call(event, generation)
        if generation is None or not durable:
            return OK, ""
        # Waits for this user's rows only: a row another transaction holds delays its
        # own user's calls, never the others of the same flush.
        state = await self.flusher.committed(generation, event.user_id, self.ack_timeout)
        if state == Ack.COMMITTED:
            return OK, ""
        if state == Ack.ABORTED:
            metrics.FAILED.labels("not_committed").inc()
            return grpc.StatusCode.UNAVAILABLE, "not committed (server shutting down), retry"
        metrics.FAILED.labels("ack_timeout").inc()
        return grpc.StatusCode.UNAVAILABLE, "not committed in time (database slow), retry"


def _add_event_services(server: grpc.aio.Server, handler: EventHandler) -> None:
    """Both OnMessage methods take the raw request bytes; app/bridge/wire.py decodes them.
    With tracing on each call runs in a span (off: registered as they are)."""
    login_method, stat_method, handle = handler.login, handler.stat, handler.handle

    async def login(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await handle(login_method, request, context)

    async def stat(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await handle(stat_method, request, context)

    wire.add_event_services(
        server,
        tracing.server_call(LOGIN_METHOD, login),
        tracing.server_call(STAT_METHOD, stat),
    )


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
