"""Progress agent: per-user stream from the repartition topic into the core buffer.

Records are acked to Faust only after the flush holding their effect has committed, so
Faust's own committed offsets never run ahead of the database. The positions that make
the effect exactly-once are written by that same flush (tables/positions.py); records
at or below them (redelivered after a crash or rebalance) are dropped here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import datetime

import faust
from sqlalchemy.ext.asyncio import AsyncConnection

from app import kafka_metrics
from app.challenges import ChallengeConfig, Source
from app.events import Event, EventType
from app.kafka_codec import decode
from app.pipeline import Pipeline
from app.progress import Family, family_of
from tables import positions as pos
from tables.buffer import Generation
from tables.db import backoff_delay, is_transient
from tables.writer import Extra

log = logging.getLogger(__name__)


class LatestValues:
    """Per (user, stat) the newest event time applied, for stats whose goals all take the
    latest value (absolute / relative SET goals).

    The buffer keeps the latest value by event time within a flush; this extends it
    across flushes, so values of one user that reached different source partitions and
    arrive out of order still end at the newest one. Bounded (oldest forgotten).
    """

    def __init__(self, config: ChallengeConfig, max_entries: int = 1_000_000):
        self.config = config
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], datetime] = OrderedDict()
        self._set_only: dict[str, bool] = {}

    def _guarded(self, stat_code: str) -> bool:
        known = self._set_only.get(stat_code)
        if known is None:
            goals = self.config.goals_for(Source.STATISTIC, stat_code)
            known = bool(goals) and all(family_of(g) is Family.SET for g in goals)
            self._set_only[stat_code] = known
        return known

    def stale(self, event: Event) -> bool:
        if event.type is not EventType.STATISTIC or not self._guarded(event.stat_code):
            return False
        key = (event.user_id, event.stat_code)
        newest = self._seen.get(key)
        if newest is not None and event.event_time < newest:
            return True
        self._seen[key] = event.event_time
        self._seen.move_to_end(key)
        if len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return False


class ProgressRuntime:
    """State of the progress agent: positions per owned partition, pending acks."""

    def __init__(self, pipeline: Pipeline, group: str, topic: str):
        self.pipeline = pipeline
        self.group = group
        self.topic = topic
        self.positions: dict[int, pos.PartitionPositions] = {}
        self.dirty: set[int] = set()
        self.latest = LatestValues(pipeline.config)
        pipeline.flusher.extra_for = self.extra_for

    def use_config(self, config: ChallengeConfig) -> None:
        """A reloaded challenges.json: goal index and the late-value rule follow it."""
        self.pipeline.config = config
        self.latest = LatestValues(config)

    # ------------------------------------------------------------------ flush side

    def extra_for(self, generation: Generation) -> Extra | None:
        """Called by the flusher when it takes a generation (before any await): the
        positions now are exactly those of the records folded into it and earlier."""
        acks: list[faust.EventT] = generation.meta.get("acks", [])
        if acks:
            generation.done.add_done_callback(lambda _f: _ack_all(acks))
        if not self.dirty:
            return None
        changed = {
            p: pos.PartitionPositions(
                self.positions[p].next_offset, dict(self.positions[p].sources)
            )
            for p in self.dirty
            if p in self.positions
        }
        self.dirty.clear()
        rows = pos.rows_for(self.group, self.topic, changed)

        async def store(conn: AsyncConnection) -> None:
            await pos.store(conn, rows)

        return store

    # ------------------------------------------------------------------ rebalance

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: Faust has waited for all their acks (= our commits)."""
        for p in partitions:
            self.positions.pop(p, None)
            self.dirty.discard(p)

    # ------------------------------------------------------------------ per record

    async def apply(self, record: faust.EventT) -> None:
        message = record.message
        partition, offset = message.partition, message.offset
        positions = self.positions.get(partition)
        if positions is None:
            positions = self.positions[partition] = await self._load(partition)
            log.info(
                "partition positions loaded",
                extra={
                    "partition": partition,
                    "next_offset": positions.next_offset,
                    "sources": len(positions.sources),
                },
            )
        try:
            item = decode(record.value)
        except Exception:  # our own format: only a bug or a foreign producer gets here
            log.exception("undecodable repartition record", extra={"offset": offset})
            self._pending(record)
            return
        source = (item.source_topic, item.source_partition)
        if positions.seen(offset, source, item.source_offset):
            kafka_metrics.REDELIVERED.labels(
                "repartition" if offset < positions.next_offset else "source"
            ).inc()
        elif self.latest.stale(item.event):
            kafka_metrics.LATE.inc()
        else:
            await self.pipeline.submit(item.event)
        # No await between submit returning and here: the flusher cannot take the
        # generation in between, so positions and acks join the one holding the event.
        positions.advance(offset, source, item.source_offset)
        self.dirty.add(partition)
        self._pending(record)

    async def _load(self, partition: int) -> pos.PartitionPositions:
        """Positions of a newly owned partition; waits out a database outage."""
        attempt = 0
        while True:
            try:
                return await pos.load(self.pipeline.engine, self.group, self.topic, partition)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempt += 1
                log.warning(
                    "loading partition positions failed, retrying",
                    extra={"partition": partition, "attempt": attempt, "error": str(exc)[:300]},
                )
                await asyncio.sleep(backoff_delay(attempt, base=0.1))

    def _pending(self, record: faust.EventT) -> None:
        generation = self.pipeline.flusher.generation()
        generation.meta.setdefault("acks", []).append(record)


def _ack_all(records: list[faust.EventT]) -> None:
    for record in records:
        try:
            record.ack()
        except Exception:  # consumer gone (shutdown): offsets are in the database anyway
            log.debug("ack failed", exc_info=True)


def make_progress_agent(app: faust.App, by_user: faust.TopicT, runtime: ProgressRuntime) -> None:
    async def progress(stream: faust.StreamT) -> None:
        async for record in stream.noack().events():
            await runtime.apply(record)

    app.agent(by_user, name="progress", concurrency=1)(progress)
