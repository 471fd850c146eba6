"""Drains the goal-completed outbox to the sinks (docs/completions.md).

One task per process, started and stopped with the service like the flusher; inside it
each sink has its own loop, so a sink that is down never holds up the others. A sink's
loop, while this replica holds the sink's lease (tables/lease.py), reads the next
unpublished completions in id order, sends them, and marks what the sink accepted; what
it refused stays in the outbox and is retried with backoff. Nothing here sits on the
acknowledgement path: progress is committed (with its outbox row) before any publish.

At-least-once with a stable id: a crash between a publish and its mark sends that event
again after the restart, with the same id; consumers dedup on it. Memory is one batch per
sink. Each loop remembers how far it got and reads from where it was `late_window`
seconds ago, so a row committed late under a lower id (its transaction began before one
that committed first) is found within that window however busy the outbox is; every
`rescan_every` it reads from the start, for rows re-opened by `republish` or committed
later still.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from app.core.clock import now_utc
from app.core.completions import Completion, encode_batch, metadata
from app.observability import metrics, tracing
from tables import outbox
from tables.lease import SinkLease

log = logging.getLogger(__name__)


class Outgoing(NamedTuple):
    """One event as a sink sends it: its id, the user (the key), its JSON body, its
    metadata. Plain values: a sink may run in a process of its own (app/completions/relay.py)."""

    id: int
    user_id: str
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
    """How far a sink's loop got: the highest id it delivered since it took the lease,
    and that mark as it moved, kept for `late_window` seconds."""

    rescanned: float = field(default_factory=time.monotonic)  # when it last read from 0
    marks: deque[tuple[float, int]] = field(default_factory=lambda: deque([(0.0, 0)]))

    @property
    def after(self) -> int:
        return self.marks[-1][1]

    def advance(self, delivered: int) -> None:
        if delivered > self.after:
            self.marks.append((time.monotonic(), delivered))

    def reset(self) -> None:
        self.marks = deque([(0.0, 0)])

    def floor(self, window: float) -> int:
        """The mark as it was `window` seconds ago: ids below it were all committed
        or rolled back by then, if no flush transaction lasts longer."""
        then = time.monotonic() - window
        while len(self.marks) > 1 and self.marks[1][0] <= then:
            self.marks.popleft()
        return self.marks[0][1]


class Publisher:
    def __init__(
        self,
        engine: AsyncEngine,
        sinks: Sequence[Sink],
        *,
        rotating: Callable[[str], bool],
        batch_size: int = 2000,
        poll_interval: float = 0.5,
        standby_interval: float = 2.0,
        rescan_every: float = 10.0,
        late_window: float = 5.0,
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
        self.late_window = late_window
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
        for sink in self.sinks:  # bounded: a Kafka producer flushes to brokers maybe down
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sink.close(), timeout)

    async def _run(self) -> None:
        await self._settle()
        loops = [self._sink_loop(sink) for sink in self.sinks]
        await asyncio.gather(*loops, self._gauges(), return_exceptions=True)

    async def _settle(self) -> None:
        """Completions every configured sink already has are published (a sink taken out
        of the configuration left them pending for none). Once per start."""
        try:
            async with self.engine.begin() as conn:
                settled = await outbox.settle(conn, self.names, now_utc())
        except Exception as exc:  # the sink loops run anyway; the next start tries again
            log.warning("outbox not settled", extra={"error": str(exc)[:300]})
            return
        if settled:
            log.info(
                "completions every configured sink already had are published",
                extra={"completions": settled, "sinks": self.names},
            )

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
                    cursor.reset()
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
            bodies = encode_batch(batch, now, self.rotating)
            trace_id = publish.trace_id
            events = [
                Outgoing(c.id, c.user_id, body, metadata(c, trace_id))
                for c, body in zip(batch, bodies, strict=True)
            ]
            accepted = await self._send(sink, events)
            publish.note(accepted=accepted)
        if accepted:
            ids = [c.id for c in batch[:accepted]]
            async with self.engine.begin() as conn:
                await outbox.mark(conn, sink.name, ids, self.names, now)
            cursor.advance(ids[-1])
        if accepted < len(batch):
            raise SinkRefused(f"{sink.name} accepted {accepted} of {len(batch)} completions")
        return len(batch) >= self.batch_size

    async def _read(self, sink: str, cursor: _Cursor) -> list[Completion]:
        after = cursor.floor(self.late_window)
        if time.monotonic() - cursor.rescanned >= self.rescan_every:
            cursor.rescanned, after = time.monotonic(), 0
        async with self.engine.connect() as conn:
            return await outbox.pending(conn, sink, after=after, limit=self.batch_size)

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
