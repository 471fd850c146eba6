"""The `kafka` sink: COMPLETION_KAFKA_TOPIC on the worker's brokers, keyed by user id.

An idempotent producer (acks=all): a retry inside the producer never writes an event
twice, and one user's events (one key, one partition) stay in order. A publisher batch
becomes one record batch per partition, filled in id order (aiokafka's batch API: a
record per event costs a future and an accumulator pass with `send`, about half the
publisher's CPU), with the partition chosen as `send` would choose it, the murmur2 hash
of the key. Then every record batch is awaited; the events count as accepted up to the
first one whose record batch failed (later ones of other partitions that did arrive are
sent again with the same ids). With the brokers away, the producer retries a record
batch until they answer: the sink then refuses new batches until those settle, so at
most one publish waits in memory; once through, its events are sent once more (same ids).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from typing import cast

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from tables.publisher import Outgoing

log = logging.getLogger(__name__)

NAME = "kafka"
TIMEOUT = 30.0  # seconds a produce request may take
MAX_BATCH_BYTES = 512 * 1024  # under the broker's default 1 MiB message.max.bytes


@functools.lru_cache(maxsize=65_536)
def key_hash(key: bytes) -> int:
    """The partitioning hash of a key, as aiokafka's (and Java's) default partitioner
    takes it: the partition is this modulo the partition count. Cached: murmur2 is pure
    Python, and a user who completes one goal tends to complete more."""
    return int(murmur2(key)) & 0x7FFFFFFF


class KafkaSink:
    name = NAME

    def __init__(self, bootstrap_servers: list[str], topic: str, *, timeout: float = TIMEOUT):
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self._unsettled: list[asyncio.Future[object]] = []  # record batches still on their way

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_batch_size=MAX_BATCH_BYTES,
            request_timeout_ms=int(self.timeout * 1000),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def send(self, events: Sequence[Outgoing]) -> int:
        if self._unsettled and not await self._settled():
            return 0
        await self.start()
        producer = self._producer
        assert producer is not None
        # bounded: with the brokers unreachable, aiokafka waits for metadata without end
        partitions = sorted(
            await asyncio.wait_for(producer.partitions_for(self.topic), self.timeout)
        )
        sent: list[tuple[int, asyncio.Future[object]]] = []  # (first event, its batch)
        filling: dict[int, tuple[int, BatchBuilder]] = {}  # partition -> (first event, batch)
        taken = len(events)
        for index, event in enumerate(events):
            key = event.user_id.encode()
            partition = partitions[key_hash(key) % len(partitions)]
            headers = [(name, value.encode()) for name, value in event.metadata.items()]
            first, batch = filling.get(partition) or (index, producer.create_batch())
            if batch.append(key=key, value=event.body, timestamp=None, headers=headers) is None:
                sent.append((first, await self._send_batch(batch, partition)))
                first, batch = index, producer.create_batch()
                if batch.append(key=key, value=event.body, timestamp=None, headers=headers) is None:
                    log.error(
                        "completion larger than a record batch",
                        extra={"completion_id": event.id},
                    )
                    taken = index  # sent up to here; it is retried (and refused) again
                    break
            filling[partition] = (first, batch)
        for partition, (first, batch) in filling.items():
            sent.append((first, await self._send_batch(batch, partition)))
        return await self._accepted(sent, before=taken)

    async def _send_batch(self, batch: BatchBuilder, partition: int) -> asyncio.Future[object]:
        assert self._producer is not None
        return cast(
            "asyncio.Future[object]",
            await self._producer.send_batch(batch, self.topic, partition=partition),
        )

    async def _accepted(self, sent: list[tuple[int, asyncio.Future[object]]], before: int) -> int:
        """How many leading events the brokers have: up to the first event of the first
        record batch not through (at most `before`). An idempotent producer never gives
        a record batch up: with the brokers away it retries until they answer, so what
        is still on its way after the wait is kept (`_unsettled`) and nothing new is
        sent until it settles."""
        batches = [done for _, done in sent]
        if batches:
            await asyncio.wait(batches, timeout=2 * self.timeout)
        behind = [first for first, done in sent if not _through(done)]
        if any(not done.done() for done in batches):
            self._unsettled = batches
        elif behind:
            log.debug("kafka refused a completion batch", extra={"refused": len(behind)})
            await self.close()  # a fresh producer for the retry
        return min(behind, default=before)

    async def _settled(self) -> bool:
        """Whether the record batches of an earlier publish are through or failed by
        now (then sending goes on: the publisher sends their events again, same ids)."""
        _, pending = await asyncio.wait(self._unsettled, timeout=self.timeout)
        if pending:
            return False
        failed = any(not _through(done) for done in self._unsettled)
        self._unsettled = []
        if failed:
            await self.close()
        return True

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


def _through(batch: asyncio.Future[object]) -> bool:
    return batch.done() and not batch.cancelled() and batch.exception() is None
