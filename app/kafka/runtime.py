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

import logging
import time
from collections.abc import Sequence
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
from app.kafka.codec import decode
from app.pipeline import Pipeline
from tables import positions as pos
from tables.buffer import Generation
from tables.db import is_transient
from tables.writer import Extra

# Where a generation's events came from: ("d", n) the source partitions numbered n of
# every source topic (applied directly: AGS keys by user id, so a user's records of both
# topics sit in partitions of the same number), ("r", n) repartition partition n.
Node = tuple[str, int]
Users = dict[str, Node]
Links = set[tuple[Node, Node]]


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
        meta = generation.meta
        return FlushPositions(rows, meta.get("users", {}), meta.get("links", set()))

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
        acks, users, links = self._noted()
        for record, event in items:
            message = record.message
            tp = (message.topic, message.partition)
            offset = message.offset
            next_offset = positions.get(tp)
            if next_offset is None:
                next_offset = positions[tp] = await self._load_direct(tp)
                # the flusher may have taken the generation meanwhile
                acks, users, links = self._noted()
            if offset < next_offset:
                _REDELIVERED_DIRECT.inc()
                acks.append(record)
                continue
            if latest.stale(event):
                kafka_metrics.LATE.inc()
            else:
                if await pipeline.buffer_batched(event):  # waited for space: a new generation
                    acks, users, links = self._noted()
                node = ("d", tp[1])
                seen = users.setdefault(event.user_id, node)
                if seen != node:
                    links.add((seen, node))
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
            self._noted()[0].append(record)
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
            _, users, links = self._noted()
            node = ("r", partition)
            seen = users.setdefault(item.event.user_id, node)
            if seen != node:
                links.add((seen, node))
        # No await between buffering and here: the flusher cannot take the generation
        # in between, so positions and acks join the one holding the event.
        positions.advance(offset, source, item.source_offset)
        self.book.dirty.add(partition)
        self._noted()[0].append(record)

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

    def _noted(self) -> tuple[list[faust.EventT[bytes]], Users, Links]:
        """What the current generation notes: the records to ack once its flush commits,
        and where its users' events came from (FlushPositions)."""
        meta = self.pipeline.flusher.generation().meta
        if not meta:
            meta.update(acks=[], users={}, links=set())
        return meta["acks"], meta["users"], meta["links"]


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
