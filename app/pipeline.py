"""The shared core every source feeds: namespace filter -> goal index -> dedup -> buffer.

gRPC, replay files and the demo call `Pipeline.submit`; the Kafka worker uses the same
flusher with its own positions bookkeeping. Returns the future of the flush that will
hold the event (durable acks await it), or None when there is nothing to write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict

from sqlalchemy.ext.asyncio import AsyncEngine

from app import metrics
from app.challenges import ChallengeConfig, Source
from app.events import Event, EventType
from app.settings import Settings
from tables.buffer import Flusher, Generation
from tables.writer import Writer, WriteResult

log = logging.getLogger(__name__)


class DedupWindow:
    """Event ids seen in the last `window` seconds -> the future of their flush.

    Bounded twice: by age and by `max_entries` (oldest forgotten first).
    """

    def __init__(self, window: float, max_entries: int = 1_000_000):
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[str, tuple[float, asyncio.Future]] = OrderedDict()

    def get(self, event_id: str) -> asyncio.Future | None:
        entry = self._seen.get(event_id)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def remember(self, event_id: str, future: asyncio.Future) -> None:
        now = time.monotonic()
        seen = self._seen
        seen[event_id] = (now + self.window, future)
        seen.move_to_end(event_id)
        while seen:
            oldest_expiry = next(iter(seen.values()))[0]
            if oldest_expiry >= now and len(seen) <= self.max_entries:
                break
            seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


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
    ):
        """`record_event_ids`: also dedup redeliveries across replicas and restarts (gRPC)."""
        self.settings = settings
        self.config = config
        self.engine = engine
        self.writer = Writer(
            engine,
            batch_size=settings.db_batch_size,
            assignment_mode=settings.assignment_mode,
            parallelism=max(1, min(4, settings.db_pool_size // 2)),
        )
        self.flusher = Flusher(
            self.writer,
            interval=settings.flush_interval,
            max_size=settings.buffer_max_size,
            on_flush=self._flushed,
            on_retry=self._retrying,
            event_id_window=settings.dedup_window if record_event_ids else None,
        )
        self.dedup = DedupWindow(settings.dedup_window)
        # What happened to submitted events (for summaries; metrics hold the same counts).
        self.outcomes: Counter[str] = Counter()

    def start(self) -> None:
        self.flusher.start()

    async def close(self) -> None:
        await self.flusher.close()

    async def submit(self, event: Event, *, timeout: float | None = None) -> asyncio.Future | None:
        """Buffer one validated event; the returned future resolves once it is committed.

        Nothing is awaited after the event joins its generation, so a caller can attach
        bookkeeping to `flusher.generation()` right after this returns (Kafka positions
        and acks rely on it).
        """
        started = time.perf_counter()
        namespace = self.settings.namespace
        if namespace and event.namespace != namespace:
            metrics.SKIPPED.labels("namespace").inc()
            self.outcomes["other_namespace"] += 1
            return None
        goals = self.config.goals_for(source_of(event), event.stat_code)
        if not goals:
            metrics.SKIPPED.labels("no_goal").inc()
            self.outcomes["no_goal"] += 1
            return None
        if event.event_id:
            earlier = self.dedup.get(event.event_id)
            if earlier is not None:
                metrics.DUPLICATES.inc()
                self.outcomes["duplicate"] += 1
                return earlier
        generation, moved = await self.flusher.add(event, goals, timeout=timeout)
        if event.event_id:
            self.dedup.remember(event.event_id, generation.done)
        metrics.PROCESSED.inc()
        metrics.BUFFER_SIZE.set(self.flusher.pending)
        metrics.PROCESSING.observe(time.perf_counter() - started)
        if moved == 0:
            metrics.SKIPPED.labels("ignored_value").inc()
            self.outcomes["ignored_value"] += 1
        else:
            self.outcomes["applied"] += 1
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
        return generation.done

    def _flushed(self, generation: Generation, result: WriteResult, elapsed: float) -> None:
        metrics.FLUSH_DURATION.observe(elapsed)
        metrics.DB_BATCH_SIZE.observe(result.rows)
        metrics.BUFFER_SIZE.set(self.flusher.pending)
        if result.duplicates:
            metrics.DUPLICATES.inc(result.duplicates)
        if result.missing:
            metrics.DROPPED_ROWS.labels("no_row").inc(result.missing)
        if result.skipped:
            metrics.DROPPED_ROWS.labels("guarded").inc(result.skipped)
        for _delta, reason in result.poisoned:
            metrics.FAILED.labels("poison_row").inc()
            metrics.DEAD_LETTERED.labels("database", "poison_row").inc()
            log.error("row dead-lettered", extra={"reason": reason[:300]})
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
                "statements": result.statements,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )

    def _retrying(self, exc: BaseException, attempt: int) -> None:
        metrics.FLUSH_RETRIES.inc()
