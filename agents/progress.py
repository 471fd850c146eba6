"""Progress agent: batches of the repartition topic into the core buffer.

Records are not acked here: the runtime acks them once the flush holding their effect
has committed (app/kafka/runtime.py).
"""

from __future__ import annotations

import logging

import faust

from app.kafka.faust_app import KafkaApp

log = logging.getLogger(__name__)


def make_progress_agent(kafka: KafkaApp) -> None:
    runtime = kafka.runtime
    size, wait = kafka.batch_size, kafka.batch_wait

    async def progress(stream: faust.StreamT[bytes]) -> None:
        async for records in stream.noack_take(size, within=wait):  # type: ignore[attr-defined]
            await runtime.forwarded(records)

    kafka.app.agent(kafka.by_user, name="progress", concurrency=1)(progress)
