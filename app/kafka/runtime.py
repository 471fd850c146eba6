"""What the agents apply to the pipeline: positions per owned partition, pending acks.

Two paths reach the pipeline: records keyed by their user id straight from the source
partition (`direct`), and records forwarded through the repartition topic
(`forwarded`). Either way a record is acked to Faust only after the flush holding its
effect has committed, so Faust's own committed offsets never run ahead of the database.
The positions that make the effect exactly-once are written by that same flush
(tables/positions.py); records below them (redelivered after a crash or rebalance) are
dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import faust
from sqlalchemy.ext.asyncio import AsyncConnection
from tenacity import AsyncRetrying, retry_if_exception, stop_never, wait_exponential_jitter

from app.core.challenges import ChallengeConfig
from app.core.events import Event
from app.core.latest import LatestValues
from app.kafka import metrics as kafka_metrics
from app.kafka.codec import decode
from app.pipeline import Pipeline
from tables import positions as pos
from tables.buffer import Generation
from tables.db import is_transient
from tables.writer import Extra

log = logging.getLogger(__name__)
_REDELIVERED_DIRECT = kafka_metrics.REDELIVERED.labels("direct")


class PositionBook:
    """Positions of the partitions this worker applies, and which changed.

    `extra_for` is handed to the pipeline's flusher: when a flush takes a generation it
    stores exactly the positions of the records folded into it (and earlier), and acks
    those records to Faust once the flush has committed.
    """

    def __init__(self, group: str, topic: str):
        self.group = group
        self.topic = topic
        self.positions: dict[int, pos.PartitionPositions] = {}  # repartition partitions
        self.dirty: set[int] = set()
        self.direct: dict[pos.SourceTP, int] = {}  # source partitions applied directly
        self.dirty_direct: set[pos.SourceTP] = set()

    def extra_for(self, generation: Generation) -> Extra | None:
        """Called by the flusher when it takes a generation (before any await)."""
        acks: list[faust.EventT[bytes]] = generation.meta.get("acks", [])
        if acks:
            generation.done.add_done_callback(lambda _f: _ack_all(acks))
        if not self.dirty and not self.dirty_direct:
            return None
        changed = {
            p: pos.PartitionPositions(
                self.positions[p].next_offset, dict(self.positions[p].sources)
            )
            for p in self.dirty
            if p in self.positions
        }
        direct = {tp: self.direct[tp] for tp in self.dirty_direct if tp in self.direct}
        self.dirty.clear()
        self.dirty_direct.clear()
        rows = pos.rows_for(self.group, self.topic, changed) + pos.direct_rows(self.group, direct)

        async def store(conn: AsyncConnection) -> None:
            await pos.store(conn, rows)

        return store

    def forget(self, partitions: set[int], sources: set[pos.SourceTP]) -> None:
        """Partitions revoked: Faust has waited for all their acks (= our commits)."""
        for p in partitions:
            self.positions.pop(p, None)
            self.dirty.discard(p)
        for tp in sources:
            self.direct.pop(tp, None)
            self.dirty_direct.discard(tp)


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

    async def direct(self, items: Sequence[tuple[faust.EventT[bytes], Event]]) -> None:
        """Source records keyed by their user id: applied without the repartition hop.

        Each record's position advance and ack join the generation its event went into:
        nothing awaits between buffering an event and recording its position, except
        when the buffer is full (then `Pipeline.buffer` waits for space and the record
        joins the next generation, with its position).
        """
        started = time.perf_counter()
        book, pipeline, latest = self.book, self.pipeline, self.latest
        positions, dirty = book.direct, book.dirty_direct
        acks = self._acks()
        for record, event in items:
            message = record.message
            tp = (message.topic, message.partition)
            offset = message.offset
            next_offset = positions.get(tp)
            if next_offset is None:
                next_offset = positions[tp] = await self._load_direct(tp)
                acks = self._acks()
            if offset < next_offset:
                _REDELIVERED_DIRECT.inc()
                acks.append(record)
                continue
            if latest.stale(event):
                kafka_metrics.LATE.inc()
            elif await pipeline.buffer_batched(event):  # waited for space: a new generation
                acks = self._acks()
            positions[tp] = offset + 1
            dirty.add(tp)
            acks.append(record)
        pipeline.measured(time.perf_counter() - started)

    async def forwarded(self, records: Sequence[faust.EventT[bytes]]) -> None:
        """Records of the repartition topic (forwarded by an ingest agent), in order.

        A record that fails for a bug is logged and acked; the batch goes on.
        """
        started = time.perf_counter()
        for record in records:
            try:
                await self._forwarded(record)
            except Exception:  # a bug: log it, never stall the partition
                log.exception("repartition record failed, skipped")
                record.ack()
        self.pipeline.measured(time.perf_counter() - started)

    async def _forwarded(self, record: faust.EventT[bytes]) -> None:
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
            self._acks().append(record)
            return
        source = (item.source_topic, item.source_partition)
        if positions.seen(offset, source, item.source_offset):
            kafka_metrics.REDELIVERED.labels(
                "repartition" if offset < positions.next_offset else "source"
            ).inc()
        elif self.latest.stale(item.event):
            kafka_metrics.LATE.inc()
        else:
            await self.pipeline.buffer_batched(item.event)
        # No await between buffering and here: the flusher cannot take the generation
        # in between, so positions and acks join the one holding the event.
        positions.advance(offset, source, item.source_offset)
        self.book.dirty.add(partition)
        self._acks().append(record)

    async def _load_direct(self, tp: pos.SourceTP) -> int:
        """Next directly applied offset of a newly owned source partition."""
        book = self.book
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential_jitter(initial=0.1, max=5.0),
            stop=stop_never,
            before_sleep=_log_retry("loading source positions failed, retrying", tp[1]),
            reraise=True,
        ):
            with attempt:
                found = await pos.load_direct(self.pipeline.engine, book.group, *tp)
                log.info(
                    "source partition positions loaded",
                    extra={"topic": tp[0], "partition": tp[1], "next_offset": found},
                )
                return found
        raise AssertionError("unreachable: tenacity either returns or raises")

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

    def _acks(self) -> list[faust.EventT[bytes]]:
        """Records to ack once the flush of the current generation (holding them) commits."""
        meta = self.pipeline.flusher.generation().meta
        acks: list[faust.EventT[bytes]] | None = meta.get("acks")
        if acks is None:
            acks = meta["acks"] = []
        return acks


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
