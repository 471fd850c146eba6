"""The shared core every source feeds: namespace filter -> goal index -> dedup -> buffer.

gRPC, replay files, the demo and the Kafka worker call `Pipeline.submit`, which returns
the future of the flush that will hold the event (durable acks await it), or None when
there is nothing to write. `running()` is the one start-up/shut-down sequence (migrate,
engine, flusher; final flush, dispose) every mode uses, and `reload_config()` the one
SIGHUP reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.challenges import ChallengeConfig, ConfigError, Goal, Source, load_config
from app.core.dedup import DedupWindow
from app.core.events import Event, EventType
from app.core.settings import Settings
from app.core.time_bounds import TimeBounds
from app.observability import metrics
from tables.buffer import BufferFull, Flusher, Generation
from tables.db import make_engine
from tables.migrate import upgrade_async
from tables.writer import Extra, Writer, WriteResult

log = logging.getLogger(__name__)


# Label children looked up once (a `labels()` call per event costs a lock and a dict).
_SKIPPED_NAMESPACE = metrics.SKIPPED.labels("namespace")
_SKIPPED_NO_GOAL = metrics.SKIPPED.labels("no_goal")
_SKIPPED_IGNORED = metrics.SKIPPED.labels("ignored_value")


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
        self.writer = Writer(
            engine,
            batch_size=settings.db_batch_size,
            assignment_mode=settings.assignment_mode,
            parallelism=max(1, min(4, settings.db_pool_size // 2)),
            time_bounds=TimeBounds.from_settings(settings),
        )
        self.flusher = Flusher(
            self.writer,
            interval=settings.flush_interval,
            max_size=settings.buffer_max_size,
            extra_for=extra_for,
            on_flush=self._flushed,
            on_retry=self._retrying,
            event_id_window=settings.dedup_window if record_event_ids else None,
            commit_delay=settings.commit_delay,
            busy_commit_delay=settings.busy_commit_delay,
            commit_siblings=settings.commit_siblings,
        )
        # With event ids recorded in the database the window is only the fast path (a
        # duplicate it misses is found by the flush's claim and folded out), so it is
        # kept small: each entry holds a generation, and a full garbage collection walks
        # all of them (pauses of 100+ ms after ~10^5 events: docs/durability.md).
        self.dedup: DedupWindow[Generation] = DedupWindow(
            settings.dedup_window,
            max_entries=_CLAIMED_WINDOW_ENTRIES if record_event_ids else 1_000_000,
        )
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            # Read at scrape time: nothing to do per event. (GRPC_WORKERS' multiprocess
            # mode cannot call back into a worker: there it is set per flush.)
            metrics.BUFFER_SIZE.set_function(lambda: self.flusher.pending)
        self.owns_engine = False
        # What happened to submitted events (for summaries; metrics hold the same counts).
        self.outcomes: Counter[str] = Counter()
        self._unmeasured = 0  # events buffered by buffer_nowait since `measured`

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
                        extra={
                            "pending": self.flusher.pending,
                            "carried": self.flusher.carried,
                        },
                    )
                    self.flusher.abort()
        finally:
            if self.owns_engine:
                with contextlib.suppress(Exception):  # a dead server: do not wait long
                    await asyncio.wait_for(self.engine.dispose(), 5.0 if committed else 0.5)
        return committed

    async def submit(
        self, event: Event, *, timeout: float | None = None
    ) -> asyncio.Future[WriteResult] | None:
        """Buffer one validated event; the returned future resolves once its flush is done.

        Nothing is awaited after the event joins its generation, so a caller can attach
        bookkeeping to `flusher.generation()` right after this returns (Kafka positions
        and acks rely on it).
        """
        generation = await self.buffer(event, timeout=timeout)
        return None if generation is None else generation.done

    async def buffer(
        self, event: Event, *, timeout: float | None = None, urgent: bool = False
    ) -> Generation | None:
        """Buffer one validated event; returns the generation holding it (None: nothing
        to write). `urgent`: the caller waits for the commit (`flusher.committed`), so
        the flush starts at once when none is in flight."""
        started = time.perf_counter()
        goals = self._goals(event)
        if goals is None:
            return None
        if event.event_id:
            earlier = self.dedup.get(event.event_id)
            if earlier is not None:
                metrics.DUPLICATES.inc()
                self.outcomes["duplicate"] += 1
                return earlier  # the original's generation: wait for its commit
        generation, moved = await self.flusher.add(event, goals, timeout=timeout, urgent=urgent)
        self._added(event, generation, moved)
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

    def buffer_nowait(self, event: Event) -> Generation | None:
        """The batch form of `buffer` (Kafka, replay): never waits, returns what `buffer`
        returns. Raises `BufferFull` when the buffer is full — nothing was counted; the
        caller awaits `buffer` for this event instead. Metrics are per batch (`measured`).
        """
        goals = self._goals(event)
        if goals is None:
            return None
        if event.event_id:
            earlier = self.dedup.get(event.event_id)
            if earlier is not None:
                metrics.DUPLICATES.inc()
                self.outcomes["duplicate"] += 1
                return earlier
        added = self.flusher.try_add(event, goals)
        if added is None:
            raise BufferFull("buffer full")
        generation, moved = added
        self._added(event, generation, moved)
        self._unmeasured += 1
        return generation

    async def buffer_batched(self, event: Event) -> bool:
        """`buffer_nowait`, or, when the buffer is full, `buffer` (waits for space; the
        event then joins a new generation). True when it had to wait: a caller that
        attaches bookkeeping to the current generation takes it afresh then."""
        try:
            self.buffer_nowait(event)
        except BufferFull:
            await self.buffer(event)
            return True
        return False

    def measured(self, seconds: float) -> None:
        """Metrics of a batch that went through `buffer_nowait`: the events it buffered,
        and one processing-time sample (the batch's mean per event)."""
        events, self._unmeasured = self._unmeasured, 0
        if events:
            metrics.PROCESSED.inc(events)
            metrics.PROCESSING.observe(seconds / events)

    def _goals(self, event: Event) -> tuple[Goal, ...] | None:
        """The goals the event moves; None (counted) when there is nothing to write."""
        namespace = self.settings.namespace
        if namespace and event.namespace != namespace:
            _SKIPPED_NAMESPACE.inc()
            self.outcomes["other_namespace"] += 1
            return None
        goals = self.config.goals_for(source_of(event), event.stat_code)
        if not goals:
            _SKIPPED_NO_GOAL.inc()
            self.outcomes["no_goal"] += 1
            return None
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
        metrics.FLUSH_DURATION.observe(elapsed)
        metrics.DB_BATCH_SIZE.observe(result.rows)
        metrics.DB_ROUND_TRIPS.inc(result.round_trips)
        metrics.BUFFER_SIZE.set(self.flusher.pending)
        if result.duplicates:
            metrics.DUPLICATES.inc(result.duplicates)
        if result.missing:
            metrics.DROPPED_ROWS.labels("no_row").inc(result.missing)
        if result.skipped:
            metrics.DROPPED_ROWS.labels("guarded").inc(result.skipped)
        if result.carried:
            metrics.ROWS_CARRIED.inc(len(result.carried))
        for _delta, reason in result.poisoned:
            metrics.FAILED.labels("poison_row").inc()
            metrics.DEAD_LETTERED.labels("database", "poison_row").inc()
            log.error("row dead-lettered", extra={"reason": reason[:300]})
        if result.dead_letters_lost:
            metrics.FAILED.labels("dead_letter_failed").inc(result.dead_letters_lost)
        if result.abandoned:
            metrics.FAILED.labels("flush_abandoned").inc(result.abandoned)
        log.info(
            "flush committed",
            extra={
                "rows": result.rows,
                "events": generation.events,
                "inserted": result.inserted,
                "updated": result.updated,
                "skipped": result.skipped,
                "missing": result.missing,
                "duplicates": result.duplicates,
                "poisoned": len(result.poisoned),
                "carried": len(result.carried),
                "statements": result.statements,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )

    def _retrying(self, exc: BaseException, attempt: int) -> None:
        metrics.FLUSH_RETRIES.inc()


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


# Young-generation collections every this many allocations (Python: 700).
YOUNG_COLLECTION_EVERY = 50_000


def settle_heap() -> None:
    """Tune the garbage collector once start-up is done (serve, worker).

    What start-up built (modules, protos, config) lives as long as the process: frozen,
    a full collection never walks it again (measured in serve: 60-110 ms pauses of the
    event loop without this). And the traffic's own objects are mostly long-lived too —
    a generation's deltas and events until its flush commits, the dedup window, Kafka
    records until acked: with the default 700-allocation threshold the collector
    re-walked them so often that it took ~20 % of a Kafka worker's CPU (issue 11: one
    worker 9,805 -> 12,037 events/s with young collections every 50,000 allocations).
    Nothing here relies on prompt cycle collection (no __del__, bounded buffers)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, middle, old)


def reload_config(path: Path, apply: Callable[[ChallengeConfig], None]) -> bool:
    """SIGHUP: validate the file first; keep the running config when it is unusable."""
    try:
        config = load_config(path)
    except Exception as exc:  # load_config maps every unusable file to ConfigError; the
        # catch-all keeps a signal handler from ever raising into the event loop
        problems = (
            exc.problems if isinstance(exc, ConfigError) else [f"{type(exc).__name__}: {exc}"]
        )
        for problem in problems:
            log.error("config reload refused", extra={"problem": problem, "path": str(path)})
        return False
    apply(config)
    log.info(
        "config reloaded",
        extra={"path": str(path), "challenges": len(config.challenges), "goals": len(config.goals)},
    )
    return True
