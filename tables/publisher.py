"""Drains the goal-completed outbox to the sinks (docs/completions.md).

One task per process, started and stopped with the service like the flusher; inside it
each sink has its own loop, so a sink that is down never holds up the others. A sink's
loop, while this replica holds the sink's lease (tables/lease.py), reads the next
unpublished completions in id order, sends them, and marks what the sink accepted; what
it refused stays in the outbox and is retried with backoff. Nothing here sits on the
acknowledgement path: progress is committed (with its outbox row) before any publish.

At-least-once with a stable id: a crash between a publish and its mark sends that event
again after the restart, with the same id; consumers dedup on it. Memory is one batch per
sink. Each loop remembers how far it got (`after`) and reads from the start again now
and then, so a row committed late under a lower id, or re-opened by `republish`, is
still found.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from app.core.clock import now_utc
from app.core.completions import Completion, encode, event_body, metadata
from app.observability import metrics, tracing
from tables import outbox
from tables.lease import SinkLease

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event as a sink sends it: the row, its JSON body, its metadata."""

    completion: Completion
    body: bytes
    metadata: dict[str, str]


class Sink(Protocol):
    """Where completions go. `send` delivers in order and returns how many of the
    leading events the sink accepted (all of them, or up to the first it refused)."""

    name: str

    async def start(self) -> None: ...

    async def send(self, events: Sequence[Outgoing]) -> int: ...

    async def close(self) -> None: ...


class SinkRefused(Exception):
    """The sink took fewer events than offered: the rest are retried after a backoff."""


@dataclass
class _Cursor:
    after: int = 0  # highest id this loop has delivered since it took the lease
    rescanned: float = 0.0  # when it last read from the start


class Publisher:
    def __init__(
        self,
        engine: AsyncEngine,
        sinks: Sequence[Sink],
        *,
        rotating: Callable[[str], bool],
        batch_size: int = 500,
        poll_interval: float = 0.5,
        standby_interval: float = 2.0,
        rescan_every: float = 10.0,
        max_backoff: float = 30.0,
        gauge_interval: float = 5.0,
    ):
        """`rotating(goal_id)`: the goal rotates (its period is the event's schedule)."""
        self.engine = engine
        self.sinks = list(sinks)
        self.names = [sink.name for sink in self.sinks]
        self.rotating = rotating
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.standby_interval = standby_interval
        self.rescan_every = rescan_every
        self.max_backoff = max_backoff
        self.gauge_interval = gauge_interval
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and self.sinks:
            self._task = asyncio.create_task(self._run(), name="completion-publisher")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop publishing (what is unpublished stays in the outbox for the next start)."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                await sink.close()

    async def _run(self) -> None:
        loops = [self._sink_loop(sink) for sink in self.sinks]
        await asyncio.gather(*loops, self._gauges(), return_exceptions=True)

    async def _pause(self, seconds: float) -> None:
        """Sleep, cut short by stop()."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _retrying(self, sink: str) -> AsyncRetrying:
        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            log.warning(
                "completion publish failed, retrying",
                extra={
                    "sink": sink,
                    "attempt": state.attempt_number,
                    "retry_in_ms": int((state.upcoming_sleep or 0) * 1000),
                    "error": str(error)[:300],
                },
            )

        return AsyncRetrying(
            sleep=self._pause,
            stop=lambda _state: self._stop.is_set(),
            wait=wait_exponential_jitter(multiplier=0.2, max=self.max_backoff, jitter=0.1),
            retry=retry_if_exception_type(Exception),
            before_sleep=before_sleep,
            reraise=True,
        )

    async def _sink_loop(self, sink: Sink) -> None:
        lease = SinkLease(self.engine, sink.name)
        cursor = _Cursor()
        retrying = self._retrying(sink.name)
        try:
            await retrying(sink.start)
            while not self._stop.is_set():
                try:
                    more: bool | None = await retrying(self._cycle, sink, lease, cursor)
                except Exception:  # stopping while it failed
                    break
                if more is None:  # standing by: another replica publishes to this sink
                    cursor.after = 0
                    await self._pause(self.standby_interval)
                elif not more:
                    await self._pause(self.poll_interval)
        finally:
            await lease.release()

    async def _cycle(self, sink: Sink, lease: SinkLease, cursor: _Cursor) -> bool | None:
        """One batch: None when another replica holds the sink, else whether a full batch
        went out (more may be waiting). Raises when the sink refused part of it."""
        if not await lease.acquire():
            return None
        batch = await self._read(sink.name, cursor)
        if not batch:
            return False
        now = now_utc()
        destination = getattr(sink, "topic", sink.name)
        with tracing.publish_span(sink.name, destination, len(batch)) as publish:
            events = [
                Outgoing(
                    c,
                    encode(event_body(c, now, rotating=self.rotating(c.goal_id))),
                    metadata(c, publish.trace_id),
                )
                for c in batch
            ]
            accepted = await self._send(sink, events)
            publish.note(accepted=accepted)
        if accepted:
            ids = [c.id for c in batch[:accepted]]
            async with self.engine.begin() as conn:
                await outbox.mark(conn, sink.name, ids, self.names, now)
            cursor.after = max(cursor.after, ids[-1])
        if accepted < len(batch):
            raise SinkRefused(f"{sink.name} accepted {accepted} of {len(batch)} completions")
        return len(batch) >= self.batch_size

    async def _read(self, sink: str, cursor: _Cursor) -> list[Completion]:
        async with self.engine.connect() as conn:
            batch = await outbox.pending(conn, sink, after=cursor.after, limit=self.batch_size)
            if batch or not cursor.after:
                return batch
            if time.monotonic() - cursor.rescanned < self.rescan_every:
                return []
            cursor.rescanned = time.monotonic()
            return await outbox.pending(conn, sink, after=0, limit=self.batch_size)

    async def _send(self, sink: Sink, events: list[Outgoing]) -> int:
        try:
            accepted = min(max(0, await sink.send(events)), len(events))
        except Exception as exc:
            log.debug("sink send raised", extra={"sink": sink.name, "error": str(exc)[:300]})
            accepted = 0
        if accepted:
            metrics.COMPLETIONS.labels(sink.name, "published").inc(accepted)
        if accepted < len(events):
            metrics.COMPLETIONS.labels(sink.name, "failed").inc()
        return accepted

    async def _gauges(self) -> None:
        """Outbox depth and the age of its oldest unpublished completion."""
        while not self._stop.is_set():
            try:
                async with self.engine.connect() as conn:
                    found = await outbox.backlog(conn)
                metrics.COMPLETION_OUTBOX_DEPTH.set(found.depth)
                metrics.COMPLETION_OLDEST_UNPUBLISHED.set(_age(found.oldest))
            except Exception as exc:
                log.debug("outbox gauges not updated", extra={"error": str(exc)[:200]})
            await self._pause(self.gauge_interval)


def _age(oldest: datetime | None) -> float:
    if oldest is None:
        return 0.0
    return max(0.0, (now_utc() - oldest).total_seconds())
