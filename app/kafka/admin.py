"""Topic housekeeping for local development: create the event topics and their
dead-letter topics when missing (existing topics, e.g. AGS-managed ones, are left alone)."""

from __future__ import annotations

import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from app.core.settings import Settings
from app.kafka.topics import Topics, dlq_topic

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


async def ensure_event_topics(settings: Settings) -> None:
    """The source and dead-letter topics of this namespace, waiting for a restarting broker."""
    topics = Topics(settings.require_namespace(), settings.kafka_consumer_group)
    parts = settings.kafka_source_partitions
    wanted: dict[str, int] = {}
    for name in topics.sources:
        wanted[name] = parts
        wanted[dlq_topic(name)] = 1
    created: list[str] = []
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(KafkaConnectionError),
        wait=wait_exponential_jitter(initial=0.1, max=2.0),
        stop=stop_after_attempt(30),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    ):
        with attempt:
            created = await ensure_topics(settings.kafka_bootstrap_servers, wanted)
    if created:
        log.info("created missing topics", extra={"topics": created, "partitions": parts})
