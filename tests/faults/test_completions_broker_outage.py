"""The `kafka` completion sink while the real broker is stopped and started again
(scripts/services.sh): the publisher keeps the events in the outbox, retries, and once
the broker is back every completion is on the topic, each user's in id order."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy.ext.asyncio import AsyncEngine

from app.completions.kafka_sink import KafkaSink
from app.core.challenges import parse_config
from app.kafka.admin import ensure_topics
from app.observability import metrics
from tables import outbox
from tables.publisher import Publisher
from tests.helpers.faults import Outage
from tests.helpers.kafka import wait_for
from tests.helpers.support import completions, flush, goal, stat

pytestmark = [pytest.mark.postgres, pytest.mark.kafka, pytest.mark.slow]

CFG = parse_config(
    {
        "challenges": [
            {
                "challengeId": "season",
                "goals": [
                    goal("win-1", "statistic:match_wins", target=1),
                    goal("win-3", "statistic:match_wins", target=3),
                ],
            }
        ]
    }
)


async def _complete(engine: AsyncEngine, users: list[str]) -> None:
    result = await flush(
        engine, CFG, [stat(user, "match_wins", 5, "2026-11-18 10:00") for user in users]
    )
    assert result.completions == 2 * len(users)


async def _drained(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return (await outbox.backlog(conn)).depth == 0


def _failures() -> float:
    return metrics.COMPLETIONS.labels("kafka", "failed")._value.get()


async def test_the_kafka_sink_delivers_everything_after_the_broker_was_down(
    pg_engine: AsyncEngine, kafka_bootstrap: str, outage: Outage
) -> None:
    topic = f"mygame.challenge.v1.goalCompleted.{uuid.uuid4().hex[:8]}"
    servers = kafka_bootstrap.split(",")
    await ensure_topics(kafka_bootstrap, {topic: 3})
    publisher = Publisher(
        pg_engine,
        [KafkaSink(servers, topic, timeout=3.0)],
        rotating=lambda _goal: False,
        batch_size=40,
        poll_interval=0.05,
        max_backoff=1.0,
    )
    publisher.start()
    try:
        await _complete(pg_engine, [f"before-{i}" for i in range(50)])
        await wait_for(lambda: _drained(pg_engine), 60, "the first wave published")
        failed = _failures()
        outage.stop("kafka")
        await _complete(pg_engine, [f"during-{i}" for i in range(150)])

        async def refused() -> bool:
            return _failures() > failed

        await wait_for(refused, 60, "the sink refusing while the broker is down")
        assert not await _drained(pg_engine)  # kept in the outbox meanwhile
        outage.start("kafka")
        await wait_for(lambda: _drained(pg_engine), 120, "the outbox drained after the outage")
    finally:
        await publisher.stop()
    rows = await completions(pg_engine)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    bodies: list[dict] = []
    try:
        while {b["id"] for b in bodies} != {str(r.id) for r in rows}:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
            for records in batch.values():
                bodies.extend(orjson.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    first_by_user: dict[str, list[int]] = {}
    seen: set[str] = set()
    for body in bodies:
        if body["id"] not in seen:
            seen.add(body["id"])
            first_by_user.setdefault(body["userId"], []).append(int(body["id"]))
    expected: dict[str, list[int]] = {}
    for row in rows:
        expected.setdefault(row.user_id, []).append(row.id)
    assert first_by_user == expected  # every completion, each user's in id order
