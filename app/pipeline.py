"""The shared core every source feeds: namespace filter -> goal index -> dedup -> buffer.

Two ways in: `add` for one event (gRPC: a caller that may wait for its commit) and
`add_batch` for many (Kafka, replays: never waits unless the buffer is full). Both
return/hand back the generation holding the event, whose `done` future resolves once
its flush has committed. `running()` is the one start-up/shut-down sequence (migrate,
engine, flusher; final flush, dispose) the batch modes use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.challenges import ChallengeConfig, Goal, Source
from app.core.dedup import DedupWindow
from app.core.events import Event, EventType
from app.core.settings import Settings
from app.core.time_bounds import TimeBounds
from app.flush_report import erased_events, report_flush
from app.observability import metrics, tracing
from tables.db import make_engine
from tables.flusher import Flusher
from tables.generation import Generation
from tables.migrate import upgrade_async
from tables.waiters import Ack
from tables.write_result import Extra, WriteResult
from tables.writer import Writer

log = logging.getLogger(__name__)

T = TypeVar("T")

# Label children looked up once (a `labels()` call per event costs a lock and a dict).
_SKIPPED_NAMESPACE = metrics.SKIPPED.labels("namespace")
_SKIPPED_NO_GOAL = metrics.SKIPPED.labels("no_goal")
_SKIPPED_IGNORED = metrics.SKIPPED.labels("ignored_value")
_SKIPPED_ERASED = metrics.SKIPPED.labels("erased")

# In-memory dedup entries when the flushes also record event ids (gRPC, Kafka).
_CLAIMED_WINDOW_ENTRIES = 50_000


def source_of(event: Event) -> Source:
    return Source.LOGIN if event.type is EventType.LOGIN else Source.STATISTIC


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        config: ChallengeConfig,
        engine: AsyncEngine,
        *,
        record_event_ids: bool = False,
        extra_for: Callable[[Generation], Extra | None] | None = None,
    ):
        """`record_event_ids`: also dedup redeliveries across replicas and restarts.
        `extra_for`: work joining each flush transaction (Kafka positions)."""
        self.settings = settings
        self.config = config
        self.engine = engine
        writer = Writer(
            engine,
            batch_size=settings.db_batch_size,
            assignment_mode=settings.assignment_mode,
            parallelism=max(1, min(4, settings.db_pool_size // 2)),
            time_bounds=TimeBounds.from_settings(settings),
        )
        self.flusher = Flusher(
            writer,
            interval=settings.flush_interval,
            max_size=settings.buffer_max_size,
            extra_for=extra_for,
            on_flush=self._flushed,
            on_retry=lambda _exc, _attempt: metrics.FLUSH_RETRIES.inc(),
            event_id_window=settings.dedup_window if record_event_ids else None,
            commit_delay=settings.commit_delay,
            busy_commit_delay=settings.busy_commit_delay,
            commit_siblings=settings.commit_siblings,
            erasure_retention=settings.erasure_retention,
        )
        # With event ids recorded in the database the window is only the fast path (a
        # duplicate it misses is found by the flush's claim and folded out), so it is
        # kept small: each entry holds a generation, and a full garbage collection walks
        # all of them (pauses of 100+ ms after ~10^5 events: docs/durability.md).
        self.dedup: DedupWindow[Generation] = DedupWindow(
            settings.dedup_window,
            max_entries=_CLAIMED_WINDOW_ENTRIES if record_event_ids else 1_000_000,
        )
        if not metrics.multiprocess():
            # Read at scrape time: nothing to do per event. (GRPC_WORKERS' multiprocess
            # mode cannot call back into a worker: there it is set per flush.)
            metrics.BUFFER_SIZE.set_function(lambda: self.flusher.pending)
        self.owns_engine = False
        # What happened to submitted events (for summaries; metrics hold the same counts).
        self.outcomes: Counter[str] = Counter()

    @classmethod
    def open(
        cls,
        settings: Settings,
        config: ChallengeConfig,
        *,
        record_event_ids: bool = False,
        extra_for: Callable[[Generation], Extra | None] | None = None,
    ) -> Pipeline:
        """A pipeline with its own engine (disposed by `close`)."""
        engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
        pipeline = cls(
            settings, config, engine, record_event_ids=record_event_ids, extra_for=extra_for
        )
        pipeline.owns_engine = True
        return pipeline

    def start(self) -> None:
        self.flusher.start()

    async def close(self, timeout: float | None = None) -> bool:
        """Final flush of everything buffered, then release the engine we opened.

        With `timeout` (shutdown grace) the final flush is given up when it cannot
        commit in time (database down): waiting callers are told so, and False returned.
        """
        committed = True
        try:
            if timeout is None:
                await self.flusher.close()
            else:
                try:
                    await asyncio.wait_for(self.flusher.close(), max(0.0, timeout))
                except TimeoutError:
                    committed = False
                    log.error(
                        "final flush gave up: not committed within the shutdown grace",
                        extra={"pending": self.flusher.pending, "carried": self.flusher.carried},
                    )
                    self.flusher.abort()
        finally:
            if self.owns_engine:
                with contextlib.suppress(Exception):  # a dead server: do not wait long
                    await asyncio.wait_for(self.engine.dispose(), 5.0 if committed else 0.5)
        return committed

    async def add(
        self, event: Event, *, timeout: float | None = None, urgent: bool = False
    ) -> Generation | None:
        """Buffer one validated event; returns the generation holding it (None: nothing
        to write), waiting for space while the buffer is full (BufferFull after
        `timeout`). `urgent`: the caller waits for the commit (`flusher.committed`), so
        the flush starts at once when none is in flight."""
        started = time.perf_counter()
        admitted = self._admit(event)
        if not isinstance(admitted, tuple):
            return admitted
        generation, moved = await self.flusher.add(event, admitted, timeout=timeout, urgent=urgent)
        self._added(event, generation, moved)
        if tracing.active:
            tracing.note_goals(moved)
        metrics.PROCESSED.inc()  # the buffer_size gauge is set per flush, not per event
        metrics.PROCESSING.observe(time.perf_counter() - started)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "event buffered",
                extra={
                    "event_id": event.event_id,
                    "user_id": event.user_id,
                    "event_type": str(event.type),
                    "goals_affected": moved,
                    "processing_time_ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )
        return generation

    async def add_batch(
        self,
        items: Iterable[T],
        event_of: Callable[[T], Event | None],
        on_added: Callable[[T, Generation | None], None] | None = None,
    ) -> None:
        """Buffer each item's event in order (`event_of`: None passes the item by).

        `on_added(item, generation)` runs right after the item's event joined its
        generation (None: nothing buffered), before anything is awaited, so per-item
        bookkeeping (Kafka positions and acks) joins the generation holding the event.
        Waits only while the buffer is full; the event then joins a new generation.
        Metrics are per batch."""
        started = time.perf_counter()
        buffered = 0
        flusher = self.flusher
        for item in items:
            event = event_of(item)
            generation: Generation | None = None
            if event is not None:
                admitted = self._admit(event)
                if isinstance(admitted, tuple):
                    added = flusher.try_add(event, admitted) or await flusher.add(event, admitted)
                    generation = added[0]
                    self._added(event, generation, added[1])
                    buffered += 1
                else:
                    generation = admitted
            if on_added is not None:
                on_added(item, generation)
        if buffered:
            metrics.PROCESSED.inc(buffered)
            metrics.PROCESSING.observe((time.perf_counter() - started) / buffered)

    def _admit(self, event: Event) -> tuple[Goal, ...] | Generation | None:
        """The goals the event moves; the generation of an earlier copy (a duplicate:
        wait for its commit); None (counted) when there is nothing to write."""
        namespace = self.settings.namespace
        if namespace and event.namespace != namespace:
            _SKIPPED_NAMESPACE.inc()
            self.outcomes["other_namespace"] += 1
            return None
        if event.user_id in self.flusher.erased:
            _SKIPPED_ERASED.inc()
            self.outcomes["erased"] += 1
            return None
        goals = self.config.goals_for(source_of(event), event.stat_code)
        if not goals:
            _SKIPPED_NO_GOAL.inc()
            self.outcomes["no_goal"] += 1
            return None
        if event.event_id:
            earlier = self.dedup.get(event.event_id)
            # a copy whose flush was given up is not applied: this one tries again
            if earlier is not None and earlier.waiters.state is not Ack.ABORTED:
                metrics.DUPLICATES.inc()
                self.outcomes["duplicate"] += 1
                return earlier
        return goals

    def _added(self, event: Event, generation: Generation, moved: int) -> None:
        if event.event_id:
            self.dedup.remember(event.event_id, generation)
        if moved == 0:
            _SKIPPED_IGNORED.inc()
            self.outcomes["ignored_value"] += 1
        else:
            self.outcomes["applied"] += 1

    def _flushed(self, generation: Generation, result: WriteResult, elapsed: float) -> None:
        for delta in result.erased:  # erased on another replica: skipped here from now on
            self.flusher.erased.add(delta.user_id)
        if result.erased:
            self.outcomes["erased"] += erased_events(result)
        report_flush(generation, result, elapsed, self.flusher.pending)
        if tracing.active:  # linked to the traced calls it acknowledges
            tracing.record_flush(generation, result, elapsed)


@asynccontextmanager
async def running(
    settings: Settings,
    config: ChallengeConfig,
    *,
    migrate: bool = True,
    record_event_ids: bool = False,
    extra_for: Callable[[Generation], Extra | None] | None = None,
) -> AsyncIterator[Pipeline]:
    """Migrate, open the engine, start the flusher; on exit the final flush, then dispose."""
    if migrate:
        await upgrade_async(settings.database_url)
    pipeline = Pipeline.open(
        settings, config, record_event_ids=record_event_ids, extra_for=extra_for
    )
    pipeline.start()
    try:
        yield pipeline
    finally:
        await pipeline.close()
