"""The `kafka` sink: COMPLETION_KAFKA_TOPIC on the worker's brokers, keyed by user id.

An idempotent producer (acks=all): a retry inside the producer never writes an event
twice, and one user's events (one key, one partition) stay in order. A batch is sent
whole, then awaited; what the brokers acknowledged counts, up to the first failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from tables.publisher import Outgoing

log = logging.getLogger(__name__)

NAME = "kafka"


class KafkaSink:
    name = NAME

    def __init__(self, bootstrap_servers: list[str], topic: str, *, timeout: float = 30.0):
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout = timeout
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            request_timeout_ms=int(self.timeout * 1000),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def send(self, events: Sequence[Outgoing]) -> int:
        await self.start()
        assert self._producer is not None
        pending = []
        for event in events:
            headers = [(key, value.encode()) for key, value in event.metadata.items()]
            pending.append(
                await self._producer.send(
                    self.topic,
                    event.body,
                    key=event.completion.user_id.encode(),
                    headers=headers,
                )
            )
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        for accepted, outcome in enumerate(outcomes):
            if isinstance(outcome, BaseException):
                log.debug("kafka refused a completion", extra={"error": str(outcome)[:300]})
                await self.close()  # a fresh producer for the retry
                return accepted
        return len(events)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
