"""The dedup buffer and its flusher (SPEC §6).

Events merge into one `Delta` per (user, goal, period) of the current *generation*.
A flush takes the whole generation, writes it in one transaction, and only then resolves
the generation's future: durable gRPC acks and Kafka offset commits wait on it (group
commit: every call of a generation shares one flush). While a generation is being
written, the next one fills; when it is full too, callers wait (backpressure) instead
of growing memory. A failed write is retried with backoff and never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.core.challenges import Goal
from app.core.events import Event
from app.core.progress import BufferKey, Delta, fold
from tables.db import backoff_delay
from tables.event_ids import EventClaim, prune
from tables.writer import Extra, TransientWriteError, Writer, WriteResult

log = logging.getLogger(__name__)


class BufferFull(Exception):
    """The buffer stayed full (database not keeping up) for longer than the caller waits."""


class Closed(Exception):
    """The flusher is shut down and takes no more events."""


@dataclass
class Generation:
    """Everything buffered between two flushes, and the future its writers wait on."""

    deltas: dict[BufferKey, Delta] = field(default_factory=dict)
    events: int = 0
    done: asyncio.Future[WriteResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. Kafka positions
    # With event-id tracking: every event with its goals, to re-fold without duplicates.
    log: list[tuple[Event, tuple[Goal, ...]]] | None = None

    def add(self, event: Event, goals: Iterable[Goal]) -> int:
        """Merge the event into its deltas; returns how many goals it moved."""
        self.events += 1
        if self.log is not None:
            goals = tuple(goals)
            self.log.append((event, goals))
        return fold(self.deltas, event, goals)


FlushListener = Callable[[Generation, WriteResult, float], None]


class Flusher:
    """Owns the buffer generations and the flush loop."""

    def __init__(
        self,
        writer: Writer,
        *,
        interval: float = 1.0,
        max_size: int = 10_000,
        extra_for: Callable[[Generation], Extra | None] | None = None,
        on_flush: FlushListener | None = None,
        on_retry: Callable[[BaseException, int], None] | None = None,
        max_backoff: float = 5.0,
        event_id_window: float | None = None,
    ):
        self.writer = writer
        self.interval = interval
        self.max_size = max_size
        self.extra_for = extra_for
        self.on_flush = on_flush
        self.on_retry = on_retry
        self.max_backoff = max_backoff
        # Record event ids with the rows (gRPC): dedup across replicas and restarts.
        self.event_id_window = event_id_window
        self._pruned_at = time.monotonic()
        self.current: Generation | None = None
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False

    # ---------------------------------------------------------------- intake

    @property
    def pending(self) -> int:
        return len(self.current.deltas) if self.current else 0

    def generation(self) -> Generation:
        if self.current is None:
            self.current = Generation(log=None if self.event_id_window is None else [])
        return self.current

    def try_add(self, event: Event, goals: Iterable[Goal]) -> tuple[Generation, int] | None:
        """Add without waiting; None when the buffer is full."""
        if self._closed:
            raise Closed("flusher is closed")
        if self.pending >= self.max_size:
            self._wake.set()
            return None
        generation = self.generation()
        moved = generation.add(event, goals)
        if len(generation.deltas) >= self.max_size:
            self._wake.set()
        return generation, moved

    async def add(
        self, event: Event, goals: Iterable[Goal], *, timeout: float | None = None
    ) -> tuple[Generation, int]:
        """Add, waiting for space while the buffer is full (BufferFull after `timeout`)."""
        goals = tuple(goals)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            added = self.try_add(event, goals)
            if added is not None:
                return added
            self._space.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise BufferFull("buffer full: database not keeping up")
            try:
                await asyncio.wait_for(self._space.wait(), remaining)
            except TimeoutError:
                raise BufferFull("buffer full: database not keeping up") from None

    def request_flush(self) -> None:
        self._wake.set()

    def drop_user(self, user_id: str) -> int:
        """GDPR deletion: forget everything still buffered for `user_id` — its deltas and,
        with event-id tracking, its logged events — so no later flush re-creates its rows.
        A generation already being written is not touched (tables/gdpr.py waits for it).
        Returns how many buffered entries were dropped."""
        generation = self.current
        if generation is None:
            return 0
        keys = [key for key, delta in generation.deltas.items() if delta.user_id == user_id]
        for key in keys:
            del generation.deltas[key]
        if generation.log is not None:
            generation.log[:] = [item for item in generation.log if item[0].user_id != user_id]
        if keys:
            self._space.set()
        return len(keys)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="flusher")

    async def close(self) -> None:
        """Final flush of everything buffered, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        else:
            await self._flush_all()
        self._closed = True

    async def flush_now(self) -> None:
        """Flush everything buffered so far and wait for the commit (replay, tests)."""
        generation = self.current
        if generation is None:
            return
        if self._task is None:
            await self._flush_all()
        else:
            self._wake.set()
            await asyncio.shield(generation.done)

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            timeout = max(0.0, last + self.interval - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self.current is not None:
                await self._flush_generation()
            last = time.monotonic()
            if self._closing and self.current is None:
                return

    async def _flush_all(self) -> None:
        while self.current is not None:
            await self._flush_generation()

    async def _flush_generation(self) -> None:
        generation, self.current = self.current, None
        if generation is None:
            return
        self._space.set()  # the next generation may fill while this one is written
        deltas = list(generation.deltas.values())
        extra = self.extra_for(generation) if self.extra_for else None
        claim = (
            EventClaim(generation.log, self.event_id_window)
            if generation.log and self.event_id_window is not None
            else None
        )
        attempt = 0
        started = time.perf_counter()
        result = WriteResult()
        while deltas or extra is not None:
            try:
                result.merge(await self.writer.write(deltas, extra, claim=claim))
                break
            except TransientWriteError as exc:
                if exc.remaining is not None:  # some shards committed: retry only the rest
                    deltas = exc.remaining
                    if exc.committed is not None:
                        result.merge(exc.committed)
                    if claim is not None:
                        claim = claim.only_users({d.user_id for d in deltas})
                attempt += 1
                if self.on_retry:
                    self.on_retry(exc, attempt)
                delay = backoff_delay(attempt, cap=self.max_backoff)
                log.warning(
                    "flush failed, retrying",
                    extra={
                        "attempt": attempt,
                        "retry_in_ms": int(delay * 1000),
                        "error": str(exc)[:300],
                        "rows": len(deltas),
                    },
                )
                await asyncio.sleep(delay)
            except Exception as exc:  # a bug: keep the data, keep retrying, shout
                attempt += 1
                if self.on_retry:
                    self.on_retry(exc, attempt)
                log.exception("flush failed unexpectedly, retrying", extra={"attempt": attempt})
                await asyncio.sleep(backoff_delay(attempt, cap=self.max_backoff))
        elapsed = time.perf_counter() - started
        if self.on_flush:
            self.on_flush(generation, result, elapsed)
        if not generation.done.done():
            generation.done.set_result(result)
        self._space.set()
        if claim is not None and time.monotonic() - self._pruned_at > 60:
            self._pruned_at = time.monotonic()
            await self._prune_event_ids()

    async def _prune_event_ids(self) -> None:
        """Forget event ids older than the window (best effort, its own transaction)."""
        try:
            async with self.writer.engine.begin() as conn:
                removed = await prune(conn)
            log.debug("expired event ids pruned", extra={"rows": removed})
        except Exception as exc:
            log.warning("pruning event ids failed", extra={"error": str(exc)[:300]})
