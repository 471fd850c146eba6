"""Topic housekeeping for local development: create the event topics and their
dead-letter topics when missing (existing topics, e.g. AGS-managed ones, are left alone)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from app.kafka_settings import KafkaSettings, dlq_topic
from tables.db import backoff_delay

log = logging.getLogger(__name__)


async def ensure_topics(
    bootstrap: str, topics: dict[str, int], replication_factor: int = 1
) -> list[str]:
    """Create each missing topic with its partition count; returns the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name=name, num_partitions=parts, replication_factor=replication_factor)
            for name, parts in topics.items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        await admin.close()


async def ensure_event_topics(kafka: KafkaSettings) -> None:
    parts = int(os.environ.get("KAFKA_SOURCE_PARTITIONS") or 4)
    wanted: dict[str, int] = {}
    for name in kafka.source_topics:
        wanted[name] = parts
        wanted[dlq_topic(name)] = 1
    for attempt in range(1, 31):  # a broker restarting next to us: wait, then give up
        try:
            created = await ensure_topics(kafka.bootstrap, wanted)
            break
        except KafkaConnectionError as exc:
            if attempt == 30:
                raise
            log.warning("broker not reachable at startup, retrying", extra={"error": str(exc)})
            await asyncio.sleep(backoff_delay(attempt, base=0.1, cap=2.0))
    if created:
        log.info("created missing topics", extra={"topics": created, "partitions": parts})
