"""Replay a topic range into the database with a plain aiokafka consumer.

No consumer group: nothing is committed to Kafka and the live workers' positions are
untouched. Events go through the same core Pipeline (and the same late-value rule as the
worker) with event time from the payload or the record timestamp, so the rows equal what
live processing produced for that range.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from app.core.challenges import ChallengeConfig
from app.core.clock import epoch_ms, now_utc
from app.core.events import Event, EventType, InvalidEvent, decode_json_event
from app.core.latest import LatestValues
from app.core.settings import Settings, SettingsError
from app.core.time_bounds import TimeBounds
from app.kafka.aiokafka_internals import refresh_metadata
from app.kafka.topics import event_type_for
from app.pipeline import running
from app.replay import ReplaySummary


async def _start_offsets(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    from_offset: int | None,
    from_time: datetime | None,
    end: dict[TopicPartition, int],
) -> dict[TopicPartition, int]:
    if from_time is not None:
        found = await consumer.offsets_for_times({tp: epoch_ms(from_time) for tp in partitions})
        return {tp: (found[tp].offset if found.get(tp) else end[tp]) for tp in partitions}
    if from_offset is not None:
        return {tp: from_offset for tp in partitions}
    begin = await consumer.beginning_offsets(partitions)
    return dict(begin)


async def replay_range(
    settings: Settings,
    config: ChallengeConfig,
    topic: str,
    *,
    from_offset: int | None = None,
    from_time: datetime | None = None,
    to_time: datetime | None = None,
) -> ReplaySummary:
    summary = ReplaySummary()
    event_type = event_type_for(topic)
    latest = LatestValues(config)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    started = time.perf_counter()
    async with running(settings, config) as pipeline:
        await consumer.start()
        try:
            ids = consumer.partitions_for_topic(topic) or await _partitions(consumer, topic)
            partitions = [TopicPartition(topic, p) for p in sorted(ids)]
            consumer.assign(partitions)
            end = dict(await consumer.end_offsets(partitions))  # the end now: a fixed range
            start = await _start_offsets(consumer, partitions, from_offset, from_time, end)
            stop_ms = epoch_ms(to_time) if to_time is not None else None
            active = {tp for tp in partitions if start[tp] < end[tp]}
            for tp in partitions:
                consumer.seek(tp, min(start[tp], end[tp]))

            bounds = summary.bounds(settings)
            receipt = (bounds, now_utc())

            def event_of(record: ConsumerRecord[bytes, bytes]) -> Event | None:
                return _event(latest, summary, record, event_type, receipt)

            while active:
                batches = await consumer.getmany(*active, timeout_ms=1000, max_records=5000)
                receipt = (bounds, now_utc())  # the replay's clock, once per fetch
                records = _in_range(batches, active, end, stop_ms)
                for first in range(0, len(records), SLICE):
                    await pipeline.add_batch(records[first : first + SLICE], event_of)
                    await asyncio.sleep(0)  # the flush in flight goes on meanwhile
            await pipeline.flusher.flush_now()
        finally:
            await consumer.stop()
        summary.outcomes.update(pipeline.outcomes)
    summary.seconds = time.perf_counter() - started
    return summary


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await refresh_metadata(consumer)
        ids: set[int] | None = consumer.partitions_for_topic(topic)
        if ids:
            return ids
        await asyncio.sleep(0.2)
    raise SettingsError(f"--topic: topic {topic!r} not found")


# Records handed to the pipeline between two yields to the event loop.
SLICE = 128


def _in_range(
    batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    active: set[TopicPartition],
    end: dict[TopicPartition, int],
    stop_ms: int | None,
) -> list[ConsumerRecord[bytes, bytes]]:
    """The fetched records inside the replayed range; a partition that reached its end
    (or the stop time) leaves `active`."""
    records = []
    for tp, fetched in batches.items():
        for record in fetched:
            if tp not in active:
                break
            if record.offset >= end[tp] or (stop_ms is not None and record.timestamp >= stop_ms):
                active.discard(tp)
                break
            records.append(record)
            if record.offset + 1 >= end[tp]:
                active.discard(tp)
    return records


def _event(
    latest: LatestValues,
    summary: ReplaySummary,
    record: ConsumerRecord[bytes, bytes],
    event_type: EventType | None,
    receipt: tuple[TimeBounds, datetime],
) -> Event | None:
    """The record's event to apply; None when invalid (counted) or stale. `receipt`: the
    bounds and the replay's clock (old times are kept as they are, contract §1.3)."""
    summary.lines += 1
    try:
        if not record.value:
            raise InvalidEvent("nil_message", "message cannot be nil")
        event = decode_json_event(
            record.value,
            event_type,
            received=receipt[1],
            record_ms=record.timestamp,
            bounds=receipt[0],
        )
    except InvalidEvent as exc:
        summary.refused(
            exc.reason, f"partition {record.partition} offset {record.offset}", exc.message
        )
        return None
    if latest.stale(event):
        summary.outcomes["stale"] += 1
        return None
    return event
