"""What the agents apply to the pipeline: positions per owned partition, pending acks.

Two paths reach the pipeline: records keyed by their user id straight from the source
partition (`direct`), and records forwarded through the repartition topic
(`forwarded`). Either way a record is acked to Faust only after the flush holding its
effect has committed, so Faust's own committed offsets never run ahead of the database.
The positions that make the effect exactly-once are written by that same flush
(tables/positions.py); records below them (redelivered after a crash or rebalance) are
dropped.

A large flush is written in parts at once, on several connections (tables/writer.py):
each part holds the users of some partitions and stores exactly those partitions'
positions, so each part commits apart and a crash between two parts loses nothing and
applies nothing twice. A partition's users are known from the records: each generation
notes which partition every user's events came from (`Node`); partitions that share a
user (a user with records in two of them) go in one part.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from sqlalchemy.ext.asyncio import AsyncConnection
from tenacity import AsyncRetrying, retry_if_exception, stop_never, wait_exponential_jitter

from app.core.challenges import ChallengeConfig
from app.core.events import Event
from app.core.latest import LatestValues
from app.core.progress import Delta
from app.kafka import metrics as kafka_metrics
from app.kafka.codec import Forwarded, decode
from app.pipeline import Pipeline
from tables import positions as pos
from tables.db import is_transient
from tables.generation import Generation
from tables.write_result import Extra, TransientWriteError, WriteResult

# Where a generation's events came from: ("d", n) the source partitions numbered n of
# every source topic (applied directly: AGS keys by user id, so a user's records of both
# topics sit in partitions of the same number), ("r", n) repartition partition n.
Node = tuple[str, int]
Users = dict[str, Node]
Links = set[tuple[Node, Node]]
Record = faust.EventT[bytes]


@dataclass(slots=True)
class KafkaNotes:
    """What a generation notes about its records (`Generation.notes`): the records to
    ack once its flush has committed, and where its users' events came from."""

    acks: list[Record] = field(default_factory=list)
    users: Users = field(default_factory=dict)
    links: Links = field(default_factory=set)

    def user_from(self, user_id: str, node: Node) -> None:
        seen = self.users.setdefault(user_id, node)
        if seen != node:
            self.links.add((seen, node))


def notes_of(generation: Generation) -> KafkaNotes:
    notes = generation.notes
    if not isinstance(notes, KafkaNotes):
        notes = generation.notes = KafkaNotes()
    return notes


@dataclass
class FlushPositions:
    """The positions one flush stores (rows per node), and the nodes its users came from.

    Called, it stores every row (the flush as one transaction); `split` shares the rows
    and the deltas among parts that commit apart (tables/writer.py PartedExtra)."""

    rows: dict[Node, list[dict[str, object]]]
    users: Users = field(default_factory=dict)
    links: Links = field(default_factory=set)

    async def __call__(self, conn: AsyncConnection) -> None:
        await pos.store(conn, [row for rows in self.rows.values() for row in rows])

    def split(self, deltas: Sequence[Delta], ways: int) -> list[tuple[list[Delta], Extra]]:
        """Nodes linked by a user form one component; components go to the part with
        the fewest deltas so far (largest first). Deltas of users seen nowhere and
        positions without deltas go to the first part."""
        root = _components({*self.rows, *self.users.values()}, self.links)
        by_root: dict[Node, list[Delta]] = {}
        orphans: list[Delta] = []
        for delta in deltas:
            node = self.users.get(delta.user_id)
            if node is None:
                orphans.append(delta)
            else:
                by_root.setdefault(root[node], []).append(delta)
        parts: list[list[Delta]] = [[] for _ in range(ways)]
        part_of: dict[Node, int] = {}
        for component, members in sorted(by_root.items(), key=lambda kv: -len(kv[1])):
            smallest = min(range(ways), key=lambda i: len(parts[i]))
            parts[smallest].extend(members)
            part_of[component] = smallest
        parts[0].extend(orphans)
        rows: list[list[dict[str, object]]] = [[] for _ in range(ways)]
        for node, node_rows in self.rows.items():
            rows[part_of.get(root[node], 0)].extend(node_rows)
        return [
            (part, _storing(part_rows))
            for part, part_rows in zip(parts, rows, strict=True)
            if part or part_rows
        ]


def _components(nodes: set[Node], links: Links) -> dict[Node, Node]:
    """node -> a representative of its connected component (links are edges)."""
    parent = {node: node for node in nodes}

    def find(node: Node) -> Node:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in links:
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        parent[find(a)] = find(b)
    return {node: find(node) for node in parent}


def _storing(rows: list[dict[str, object]]) -> Extra:
    async def store(conn: AsyncConnection) -> None:
        await pos.store(conn, rows)

    return store


log = logging.getLogger(__name__)
_REDELIVERED_DIRECT = kafka_metrics.REDELIVERED.labels("direct")


class PositionBook:
    """Positions of the partitions this worker applies, and which changed.

    `extra_for` is handed to the pipeline's flusher: when a flush takes a generation it
    stores exactly the positions of the records folded into it (and earlier), and acks
    those records to Faust once the flush has committed.
    """

    def __init__(self, group: str, topic: str, on_broken: Callable[[str], None] | None = None):
        self.group = group
        self.topic = topic
        self.positions: dict[int, pos.PartitionPositions] = {}  # repartition partitions
        self.dirty: set[int] = set()
        self.direct: dict[pos.SourceTP, int] = {}  # source partitions applied directly
        self.dirty_direct: set[pos.SourceTP] = set()
        # A flush was given up: its records must come back from the stored positions,
        # so nothing is acked or committed from then on and the worker restarts.
        self.broken: str | None = None
        self.on_broken = on_broken
        self._last: asyncio.Future[WriteResult] | None = None  # the previous flush's result

    def extra_for(self, generation: Generation) -> Extra | None:
        """Called by the flusher when it takes a generation (before any await). Flushes
        run one after the other, so the previous one has its result by now: when it was
        given up, this one is fenced at once (its positions would cover those records),
        not only once the done-callback has run."""
        last, self._last = self._last, generation.done
        if last is not None and last.done():
            self._flushed(last, [])
        if self.broken is not None:
            return _refuse(self.broken)
        notes = generation.notes if isinstance(generation.notes, KafkaNotes) else KafkaNotes()
        generation.done.add_done_callback(lambda done: self._flushed(done, notes.acks))
        if not self.dirty and not self.dirty_direct:
            return None
        rows: dict[Node, list[dict[str, object]]] = {}
        for p in sorted(self.dirty):
            if p in self.positions:  # as of now: a snapshot, later records move on
                now = self.positions[p]
                snapshot = pos.PartitionPositions(now.next_offset, dict(now.sources))
                rows[("r", p)] = pos.rows_for(self.group, self.topic, {p: snapshot})
        for tp in sorted(self.dirty_direct):
            if tp in self.direct:
                node_rows = rows.setdefault(("d", tp[1]), [])
                node_rows += pos.direct_rows(self.group, {tp: self.direct[tp]})
        self.dirty.clear()
        self.dirty_direct.clear()
        return FlushPositions(rows, notes.users, notes.links)

    def _flushed(self, done: asyncio.Future[WriteResult], acks: list[Record]) -> None:
        """Ack the flush's records, unless it was given up: then none of them is acked
        (their positions were not stored) and the worker restarts for redelivery."""
        if done.cancelled() or done.result().abandoned:
            if self.broken is None:
                self.broken = "a flush was given up: its records must be redelivered"
                log.critical(self.broken, extra={"records": len(acks)})
                if self.on_broken is not None:
                    self.on_broken(self.broken)
            return
        _ack_all(acks)

    def forget(self, partitions: set[int], sources: set[pos.SourceTP]) -> None:
        """Partitions revoked: Faust has waited for all their acks (= our commits)."""
        for p in partitions:
            self.positions.pop(p, None)
            self.dirty.discard(p)
        for tp in sources:
            self.direct.pop(tp, None)
            self.dirty_direct.discard(tp)


class ProgressRuntime:
    """Applies source and repartition records to the pipeline, dropping the ones whose
    effect is already committed (below the stored positions)."""

    def __init__(self, pipeline: Pipeline, book: PositionBook):
        self.pipeline = pipeline
        self.book = book
        self.latest = LatestValues(pipeline.config)
        self._noted_in: Generation | None = None
        self._noted = KafkaNotes()

    def use_config(self, config: ChallengeConfig) -> None:
        """A reloaded challenges.json: goal index and the late-value rule follow it."""
        self.pipeline.config = config
        self.latest = LatestValues(config)

    def _notes(self) -> KafkaNotes:
        """The current generation's notes (looked up again only when it changed)."""
        generation = self.pipeline.flusher.generation()
        if generation is not self._noted_in:
            self._noted_in, self._noted = generation, notes_of(generation)
        return self._noted

    async def direct(self, items: Sequence[tuple[Record, Event]]) -> None:
        """Source records keyed by their user id: applied without the repartition hop.

        Each record's position advance and ack join the generation its event went into
        (`Pipeline.add_batch` calls back before anything is awaited).
        """
        positions, dirty, latest = self.book.direct, self.book.dirty_direct, self.latest
        for tp in {(record.message.topic, record.message.partition) for record, _ in items}:
            if tp not in positions:
                positions[tp] = await self._load_direct(tp)

        def event_of(item: tuple[Record, Event]) -> Event | None:
            message = item[0].message
            if message.offset < positions[(message.topic, message.partition)]:
                _REDELIVERED_DIRECT.inc()
                return None
            if latest.stale(item[1]):
                kafka_metrics.LATE.inc()
                return None
            return item[1]

        def on_added(item: tuple[Record, Event], generation: Generation | None) -> None:
            record, event = item
            message = record.message
            tp = (message.topic, message.partition)
            notes = self._notes()
            if generation is not None:
                notes.user_from(event.user_id, ("d", tp[1]))
            if message.offset >= positions[tp]:
                positions[tp] = message.offset + 1
                dirty.add(tp)
            notes.acks.append(record)

        await self.pipeline.add_batch(items, event_of, on_added)

    async def forwarded(self, records: Sequence[Record]) -> None:
        """Records of the repartition topic (forwarded by an ingest agent), in order.

        A batch that fails for a bug is applied again record by record: the records it
        had applied are found below their positions, and a record that fails alone is
        logged and acked; the partition never stalls.
        """
        for partition in {record.message.partition for record in records}:
            await self._ensure_loaded(partition)
        items = [(record, self._decoded(record)) for record in records]
        try:
            await self.pipeline.add_batch(items, self._forwarded_event, self._forwarded_added)
        except Exception:
            log.exception("repartition batch failed, applying its records one by one")
            for item in items:
                try:
                    await self.pipeline.add_batch(
                        [item], self._forwarded_event, self._forwarded_added
                    )
                except Exception:  # a bug: log it, never stall the partition
                    log.exception("repartition record failed, skipped")
                    item[0].ack()

    def _decoded(self, record: Record) -> Forwarded | None:
        try:
            return decode(record.value)
        except Exception:  # our own format: only a bug or a foreign producer gets here
            log.exception("undecodable repartition record", extra={"offset": record.message.offset})
            return None

    def _forwarded_event(self, item: tuple[Record, Forwarded | None]) -> Event | None:
        record, forwarded = item
        if forwarded is None:
            return None
        message = record.message
        positions = self.book.positions[message.partition]
        source = (forwarded.source_topic, forwarded.source_partition)
        if positions.seen(message.offset, source, forwarded.source_offset):
            kafka_metrics.REDELIVERED.labels(
                "repartition" if message.offset < positions.next_offset else "source"
            ).inc()
            return None
        if self.latest.stale(forwarded.event):
            kafka_metrics.LATE.inc()
            return None
        return forwarded.event

    def _forwarded_added(
        self, item: tuple[Record, Forwarded | None], generation: Generation | None
    ) -> None:
        record, forwarded = item
        notes = self._notes()
        if forwarded is not None:
            partition = record.message.partition
            if generation is not None:
                notes.user_from(forwarded.event.user_id, ("r", partition))
            source = (forwarded.source_topic, forwarded.source_partition)
            self.book.positions[partition].advance(
                record.message.offset, source, forwarded.source_offset
            )
            self.book.dirty.add(partition)
        notes.acks.append(record)

    async def _ensure_loaded(self, partition: int) -> None:
        if partition in self.book.positions:
            return
        positions = self.book.positions[partition] = await self._load(partition)
        log.info(
            "partition positions loaded",
            extra={
                "partition": partition,
                "next_offset": positions.next_offset,
                "sources": len(positions.sources),
            },
        )

    async def _load_direct(self, tp: pos.SourceTP) -> int:
        """Next directly applied offset of a newly owned source partition."""
        book = self.book
        async for attempt in _retrying("loading source positions failed, retrying", tp[1]):
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
        async for attempt in _retrying("loading partition positions failed, retrying", partition):
            with attempt:
                return await pos.load(self.pipeline.engine, book.group, book.topic, partition)
        raise AssertionError("unreachable: tenacity either returns or raises")


def _retrying(message: str, partition: int) -> AsyncRetrying:
    """Retries while the database is unreachable (positions are needed to go on)."""

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

    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(initial=0.1, max=5.0),
        stop=stop_never,
        before_sleep=before_sleep,
        reraise=True,
    )


def _refuse(reason: str) -> Extra:
    """Joins a flush after one was given up: fails it like an outage, so nothing more
    commits before the worker restarts."""

    async def refuse(_conn: AsyncConnection) -> None:
        raise TransientWriteError(reason)

    return refuse


def _ack_all(records: list[Record]) -> None:
    for record in records:
        try:
            record.ack()
        except Exception:  # consumer gone (shutdown): offsets are in the database anyway
            log.debug("ack failed", exc_info=True)
