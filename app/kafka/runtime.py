"""State of the progress agent: positions per owned partition and the pending acks.

Records are acked to Faust only after the flush holding their effect has committed, so
Faust's own committed offsets never run ahead of the database. The positions that make
the effect exactly-once are written by that same flush (tables/positions.py); records
at or below them (redelivered after a crash or rebalance) are dropped.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from sqlalchemy.ext.asyncio import AsyncConnection
from tenacity import AsyncRetrying, retry_if_exception, stop_never, wait_exponential_jitter

from app.core.challenges import ChallengeConfig
from app.core.latest import LatestValues
from app.kafka import metrics as kafka_metrics
from app.kafka.codec import decode
from app.pipeline import Pipeline
from tables import positions as pos
from tables.buffer import Generation
from tables.db import is_transient
from tables.writer import Extra

log = logging.getLogger(__name__)


class PositionBook:
    """Positions of the repartition partitions this worker owns, and which changed.

    `extra_for` is handed to the pipeline's flusher: when a flush takes a generation it
    stores exactly the positions of the records folded into it (and earlier), and acks
    those records to Faust once the flush has committed.
    """

    def __init__(self, group: str, topic: str):
        self.group = group
        self.topic = topic
        self.positions: dict[int, pos.PartitionPositions] = {}
        self.dirty: set[int] = set()

    def extra_for(self, generation: Generation) -> Extra | None:
        """Called by the flusher when it takes a generation (before any await)."""
        acks: list[faust.EventT[bytes]] = generation.meta.get("acks", [])
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

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: Faust has waited for all their acks (= our commits)."""
        for p in partitions:
            self.positions.pop(p, None)
            self.dirty.discard(p)


class ProgressRuntime:
    """Applies repartition records to the pipeline, dropping the already-applied ones."""

    def __init__(self, pipeline: Pipeline, book: PositionBook):
        self.pipeline = pipeline
        self.book = book
        self.latest = LatestValues(pipeline.config)

    def use_config(self, config: ChallengeConfig) -> None:
        """A reloaded challenges.json: goal index and the late-value rule follow it."""
        self.pipeline.config = config
        self.latest = LatestValues(config)

    async def apply(self, record: faust.EventT[bytes]) -> None:
        message = record.message
        partition, offset = message.partition, message.offset
        positions = self.book.positions.get(partition)
        if positions is None:
            positions = self.book.positions[partition] = await self._load(partition)
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
        self.book.dirty.add(partition)
        self._pending(record)

    async def _load(self, partition: int) -> pos.PartitionPositions:
        """Positions of a newly owned partition; waits out a database outage."""
        book = self.book
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential_jitter(initial=0.1, max=5.0),
            stop=stop_never,
            before_sleep=_log_retry("loading partition positions failed, retrying", partition),
            reraise=True,
        ):
            with attempt:
                return await pos.load(self.pipeline.engine, book.group, book.topic, partition)
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _pending(self, record: faust.EventT[bytes]) -> None:
        generation = self.pipeline.flusher.generation()
        generation.meta.setdefault("acks", []).append(record)


def _log_retry(message: str, partition: int) -> Any:
    def before_sleep(state: Any) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            message,
            extra={
                "partition": partition,
                "attempt": state.attempt_number,
                "error": str(error)[:300],
            },
        )

    return before_sleep


def _ack_all(records: list[faust.EventT[bytes]]) -> None:
    for record in records:
        try:
            record.ack()
        except Exception:  # consumer gone (shutdown): offsets are in the database anyway
            log.debug("ack failed", exc_info=True)
