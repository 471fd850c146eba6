"""`python -m app replay --topic`: a topic range back into the database, by event time."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tables.schema import user_goal_progress
from tests.helpers.kafka import (
    BASE_TIME,
    Expected,
    Record,
    Worker,
    create_topics,
    drained,
    iso,
    login_topic,
    mixed_stream,
    ms,
    new_namespace,
    produce,
    stat_topic,
    table,
    wait_for,
    write_config,
)
from tests.helpers.process import run_app

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

# Record timestamps inside the broker's retention (24 h locally): older records may be
# deleted by the retention check at any moment. Event times (payloads) are older.
_NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
OLD = _NOW - timedelta(hours=3)
MID = _NOW - timedelta(hours=2)
LATE = _NOW - timedelta(hours=1)


def stamped(records: list[Record], start: datetime) -> list[Record]:
    for i, r in enumerate(records):
        r.timestamp_ms = ms(start + timedelta(milliseconds=i))
    return records


async def full_rows(engine: AsyncEngine) -> dict:
    t = user_goal_progress
    # database times of the write differ between runs by design
    columns = [c for c in t.c if c.name not in ("created_at", "updated_at", "assigned_at")]
    async with engine.connect() as conn:
        rows = await conn.execute(select(*columns))
        return {(r.user_id, r.goal_id): tuple(r) for r in rows}


async def clear_rows(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM user_goal_progress"))


def replay(env: dict[str, str], *args: str) -> str:
    return run_app(env, "replay", *args)


async def test_replay_reproduces_the_live_rows_and_honours_a_time_range(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path
):
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=3)
    # each user's events in event-time order across the three ranges: a flush applies its
    # events in event-time order, flushes in arrival order, so live and replay (flushed
    # at other boundaries) agree only on a stream that arrives in time order per user
    old, _ = mixed_stream(ns, 1_500, 100, seed=1)
    mid, expected_mid = mixed_stream(ns, 3_000, 100, seed=2, start=BASE_TIME + timedelta(days=1))
    late, _ = mixed_stream(ns, 1_500, 100, seed=3, start=BASE_TIME + timedelta(days=2))
    await produce(kafka_bootstrap, stamped(old, OLD) + stamped(mid, MID) + stamped(late, LATE))
    config = write_config(tmp_path)

    live = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "w.log").start()
    try:
        await wait_for(lambda: drained(kafka_bootstrap, pg_engine, ns, live.group), 60, "live")
    finally:
        assert live.terminate() == 0, live.tail()
    live_rows = await full_rows(pg_engine)

    env = {
        **os.environ,
        "DATABASE_URL": pg_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "AB_NAMESPACE": ns,
        "CONFIG_PATH": str(config),
        "LOG_LEVEL": "warning",
    }
    await clear_rows(pg_engine)
    for topic in (login_topic(ns), stat_topic(ns)):
        out = replay(env, "--topic", topic, "--from-offset", "0")
        assert "0 invalid" in out, out
    assert await full_rows(pg_engine) == live_rows

    await clear_rows(pg_engine)
    for topic in (login_topic(ns), stat_topic(ns)):
        out = replay(env, "--topic", topic, "--from-time", iso(MID), "--to-time", iso(LATE))
        assert " 0 invalid" in out and "read 0 lines" not in out, out
    assert await table(pg_engine) == expected_mid.rows()
    assert isinstance(expected_mid, Expected)
