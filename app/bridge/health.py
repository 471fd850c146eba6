"""gRPC health (grpc.health.v1): liveness on the overall name, readiness on the services.

- `""` (the overall status) is the **liveness** check: SERVING from the moment the server
  listens until draining starts, whatever the database does. A platform that restarts a
  container on a failed probe must not restart every replica during a database outage:
  a restart cannot bring the database back, and the process recovers by itself.
- The event services' names (and the GDPR service's) are the **readiness** check:
  SERVING only while `SELECT 1` answers within a short timeout and writes are not stuck
  (flushes failing in a row, or one running far too long); NOT_SERVING otherwise. The
  config is loaded before the server starts and a reload never unloads it.
- Draining (SIGTERM) turns every name NOT_SERVING for good.

The probe uses its own one-connection engine so a busy flush pool never makes a healthy
database look down. docs/deploy.md says what a platform does with each check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from grpc_health.v1 import health, health_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS = ""  # the overall status


class HealthMonitor:
    def __init__(
        self,
        engine: AsyncEngine,
        services: tuple[str, ...],
        *,
        interval: float = 1.0,
        probe_timeout: float | None = None,
        writes_stuck: Callable[[], bool] | None = None,
    ):
        self.engine = engine
        self.readiness = services  # LIVENESS is not among them: it never follows the database
        self.interval = interval
        self.probe_timeout = probe_timeout or max(0.5, min(2.0, interval))
        self.writes_stuck = writes_stuck
        self.servicer = health.aio.HealthServicer()  # LIVENESS starts SERVING
        self.serving: bool | None = None  # the readiness last set
        self._task: asyncio.Task[None] | None = None

    async def probe(self) -> bool:
        """True when the database answers `SELECT 1` in time."""
        try:
            async with asyncio.timeout(self.probe_timeout):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            return True
        except Exception as exc:  # any failure means "not reachable now"
            log.debug("database probe failed", extra={"error": str(exc)[:200]})
            with contextlib.suppress(Exception):
                await self.engine.dispose()  # drop a half-open connection
            return False

    async def set_ready(self, serving: bool) -> None:
        """The readiness names; liveness stays SERVING until `drain`."""
        status = SERVING if serving else NOT_SERVING
        for name in self.readiness:
            await self.servicer.set(name, status)
        if serving != self.serving:
            if self.serving is not None:
                level = logging.INFO if serving else logging.WARNING
                log.log(level, "readiness " + ("SERVING" if serving else "NOT_SERVING"))
            self.serving = serving

    async def check_once(self) -> bool:
        healthy = await self.probe()
        if healthy and self.writes_stuck is not None and self.writes_stuck():
            log.debug("database answers but flushes keep failing")
            healthy = False
        await self.set_ready(healthy)
        return healthy

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="health")

    async def drain(self) -> None:
        """Every name NOT_SERVING for good (shutdown), liveness too, and stop probing."""
        await self.stop()
        await self.servicer.enter_graceful_shutdown()
        self.serving = False

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
