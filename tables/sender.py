"""The flush loop: decides when the buffer's generation is written, writes it (with
retries, tables/write_retry.py) and answers its callers.

A flush starts:
- at once when a durable caller waits (`urgent`) and no flush is in flight, after the
  group-commit delay; whatever arrives while a flush is in flight forms the next group;
- otherwise when the oldest entry is `interval` old (buffered gRPC acks, Kafka, replay),
  or when `max_size` entries are pending;
- for carried rows (held by another transaction) at least every `carry_retry`.

It also feeds the health signal (failed attempts in a row, the flush in flight's start)
and deletes expired event ids and erasure tombstones beside the flushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from tables.accumulator import Accumulator
from tables.event_ids import EventClaim
from tables.generation import Generation
from tables.housekeeping import tidy
from tables.write_result import Extra, WriteResult
from tables.write_retry import FailureListener, WriteAttempts
from tables.writer import Writer

FlushListener = Callable[[Generation, WriteResult, float], None]


@dataclass(slots=True)
class GroupCommit:
    """Urgent flushes wait `delay` for more callers to join (0: start at once), and
    `busy_delay` while at least `siblings` callers are in flight (`crowd`, set by the
    gRPC server): a busy server gathers bigger groups, whose flush costs less per event,
    without a quiet one paying that latency."""

    delay: float = 0.0
    busy_delay: float = 0.0
    siblings: int = 0
    crowd: Callable[[], int] | None = None

    def wait(self) -> float:
        crowd = self.crowd
        if crowd is not None and crowd() >= self.siblings:
            return self.busy_delay
        return self.delay


class Sender:
    def __init__(
        self,
        buffer: Accumulator,
        writer: Writer,
        wake: asyncio.Event,
        *,
        interval: float,
        group_commit: GroupCommit,
        extra_for: Callable[[Generation], Extra | None] | None,
        event_id_window: float | None,
        max_backoff: float,
        carry_retry: float,
        prune_every: float,
        erasure_retention: float | None = None,
    ):
        self.buffer = buffer
        self.writer = writer
        self.wake = wake
        self.interval = interval
        self.group_commit = group_commit
        self.extra_for = extra_for
        self.event_id_window = event_id_window  # record event ids with the rows (gRPC)
        self.max_backoff = max_backoff
        self.carry_retry = min(carry_retry, interval)
        self.prune_every = prune_every
        self.erasure_retention = erasure_retention  # purge older tombstones (long-running)
        self.on_flush: FlushListener | None = None
        self.on_retry: FailureListener | None = None
        self.closing = False
        self.flushing: Generation | None = None
        # Health: failed attempts in a row, and when the flush in flight started.
        self.failures = 0
        self.flush_started: float | None = None
        self._pruned_at = time.monotonic()
        self._prune_task: asyncio.Task[None] | None = None

    def due_in(self) -> float | None:
        """Seconds until the next flush is due (0: now); None: nothing to flush."""
        buffer, generation = self.buffer, self.buffer.current
        now = time.monotonic()
        if self.closing:  # flush what is buffered now; held rows at their retry pace
            if generation is not None:
                return 0.0
            return max(0.0, buffer.carry_due - now) if buffer.carry else None
        due: float | None = None
        if generation is not None:
            if generation.urgent or len(generation.deltas) >= buffer.max_size:
                return 0.0
            due = generation.created + self.interval - now
        if buffer.carry:
            carry_due = buffer.carry_due - now
            due = carry_due if due is None else min(due, carry_due)
        return None if due is None else max(0.0, due)

    async def run(self) -> None:
        while True:
            self.wake.clear()
            due = self.due_in()
            if due is None:
                if self.closing:
                    return
                await self.wake.wait()
                continue
            if due > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), due)
                continue
            delay = self.group_commit.wait()
            if delay and not self.closing:
                await asyncio.sleep(delay)  # let more callers join the group
            await self.flush()

    async def flush_all(self) -> None:
        """Without the loop: flush until nothing is buffered or carried."""
        while self.buffer.current is not None or self.buffer.carry:
            await self.flush()
            if self.buffer.carry and self.buffer.current is None:
                await asyncio.sleep(self.carry_retry)

    async def flush(self) -> None:
        buffer = self.buffer
        taken = buffer.take()
        generation = taken.generation
        self.flushing = generation
        extra = self.extra_for(generation) if self.extra_for else None
        window = self.event_id_window
        claim = EventClaim(taken.events, window) if taken.events and window is not None else None
        started = time.perf_counter()
        self.flush_started = time.monotonic()
        try:
            result = await WriteAttempts(
                lambda: self.writer,
                taken.deltas,
                extra,
                claim,
                max_backoff=self.max_backoff,
                on_failure=self._failed,
            ).run()
        finally:
            self.flush_started = None
        self.failures = 0
        elapsed = time.perf_counter() - started
        buffer.settle(taken, result, self.carry_retry)
        self.flushing = None
        if self.on_flush:
            self.on_flush(generation, result, elapsed)
        generation.release()
        buffer.space_freed()
        self._maybe_tidy()

    def stalled(self, after: float) -> bool:
        """Writes stuck: the last attempts failed, or one flush has run for `after` s."""
        started = self.flush_started
        return self.failures >= 2 or (started is not None and time.monotonic() - started > after)

    def _failed(self, exc: BaseException, attempt: int) -> None:
        self.failures += 1
        if self.on_retry:
            self.on_retry(exc, attempt)

    def _maybe_tidy(self) -> None:
        """Expired event ids and tombstones, beside the flushes (tables/housekeeping.py)."""
        if time.monotonic() - self._pruned_at <= self.prune_every:
            return
        self._pruned_at = time.monotonic()
        if self._prune_task is None or self._prune_task.done():
            self._prune_task = asyncio.create_task(
                tidy(
                    self.writer.engine,
                    event_ids=self.event_id_window is not None,
                    erasure_retention=self.erasure_retention,
                ),
                name="housekeeping",
            )

    async def stop_pruning(self) -> None:
        if self._prune_task is not None:
            await self._prune_task  # best effort, never raises

    def cancel_pruning(self) -> None:
        if self._prune_task is not None:
            self._prune_task.cancel()
