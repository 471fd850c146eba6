"""Kafka mode under faults: kill -9 mid-stream, scale-out with a rebalance, broker restart.

Each compares the final table with an expectation computed independently from the
generated stream (counts per user), so a lost or a double-counted increment shows.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.helpers.faults import RowLock
from tests.helpers.kafka import (
    Record,
    Worker,
    create_topics,
    drained,
    group_offsets,
    login_topic,
    mixed_stream,
    new_namespace,
    produce,
    stat_topic,
    table,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


async def applied(engine: AsyncEngine, group: str) -> int:
    """Records covered by committed flushes: repartition partitions plus source partitions
    applied directly (the group's own position rows)."""
    async with engine.connect() as conn:
        total = await conn.scalar(
            text(
                "SELECT coalesce(sum(next_offset), 0) FROM challenge_consumer_offsets "
                "WHERE consumer_group = :g"
            ),
            {"g": group},
        )
    return int(total or 0)


async def settle(bootstrap: str, engine: AsyncEngine, ns: str, workers: list[Worker]) -> None:
    async def done() -> bool:
        for w in workers:
            assert w.proc is not None and w.proc.poll() is None, w.tail()
        return await drained(bootstrap, engine, ns, workers[0].group)

    await wait_for(done, 240, "workers drained", every=0.5)


def keyed_otherwise(record: Record) -> Record:
    """Same partition per user, but a key that is not the user id: the repartition hop.

    (Unkeyed records spread one user over all partitions; absolute values then rely on
    the in-memory late-value guard, which a restart forgets: docs/kafka.md, Ordering.)"""
    body = orjson.loads(record.value)
    user = body.get("userId") or body["payload"]["userId"]
    return replace(record, key=f"player/{user}".encode())


@pytest.mark.parametrize("keyed", [True, False], ids=["one-hop", "repartition-hop"])
async def test_kill_9_mid_stream_twice_then_restart_is_exact(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path, keyed: bool
):
    """Keyed by user id (AGS): applied from the source partitions; keyed by something
    else: through the repartition topic. Both must end exact after two kills."""
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=4)
    records, expected = mixed_stream(ns, 50_000, 1_000)
    if not keyed:
        records = [keyed_otherwise(r) for r in records]
    config = write_config(tmp_path)
    first = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "w1.log").start()
    try:
        await produce(kafka_bootstrap, records[:25_000])
        await first.wait_ready()
        rest = asyncio.create_task(produce(kafka_bootstrap, records[25_000:]))

        async def mid_stream() -> bool:
            return await applied(pg_engine, first.group) >= 15_000

        # generous: on a shared 2-core machine the repartition hop starts slowly (the
        # source backlog fills the fetcher before the forwarded copies come back)
        await wait_for(mid_stream, 180, "first worker mid-stream")
        first.kill()
        await rest
        assert not await drained(kafka_bootstrap, pg_engine, ns, first.group)
    finally:
        first.kill()
    # the second one dies too, while catching up (recovering from the first crash)
    second = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "w2.log").start()
    try:

        async def catching_up() -> bool:
            return await applied(pg_engine, first.group) >= 30_000

        await wait_for(catching_up, 180, "second worker catching up")
        second.kill()
        assert not await drained(kafka_bootstrap, pg_engine, ns, first.group)
    finally:
        second.kill()
    third = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "w3.log").start()
    try:
        await settle(kafka_bootstrap, pg_engine, ns, [third])
        assert await table(pg_engine) == expected.rows()
    finally:
        third.terminate()


async def test_two_workers_one_leaves_mid_stream_is_exact(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path
):
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=4)
    records, expected = mixed_stream(ns, 30_000, 1_000, seed=11)
    config = write_config(tmp_path)
    a = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "a.log").start()
    b = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "b.log").start()
    try:
        await a.wait_ready()
        await b.wait_ready()
        await produce(kafka_bootstrap, records[:15_000])

        async def both_working() -> bool:
            a_done = a.metric("challenge_event_handler_events_processed_total") or 0
            b_done = b.metric("challenge_event_handler_events_processed_total") or 0
            return a_done > 1000 and b_done > 1000

        await wait_for(both_working, 60, "both workers processing")
        rest = asyncio.create_task(produce(kafka_bootstrap, records[15_000:]))
        assert b.terminate() == 0, b.tail()
        await rest
        await settle(kafka_bootstrap, pg_engine, ns, [a])
        assert await table(pg_engine) == expected.rows()
    finally:
        b.kill()
        a.terminate()


async def test_broker_restart_mid_stream_worker_recovers(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path, outage
):
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=4)
    records, expected = mixed_stream(ns, 20_000, 500, seed=5)
    w = Worker(pg_url, kafka_bootstrap, ns, write_config(tmp_path), tmp_path / "w.log").start()
    try:
        await w.wait_ready()
        await produce(kafka_bootstrap, records[:10_000])
        await wait_for(lambda: applied(pg_engine, w.group), 60, "some progress")
        outage.stop("kafka")
        outage.start("kafka")
        await produce(kafka_bootstrap, records[10_000:])
        await settle(kafka_bootstrap, pg_engine, ns, [w])
        assert await table(pg_engine) == expected.rows()
    finally:
        w.terminate()


async def test_tiny_buffer_backpressure_loses_nothing(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path
):
    """BUFFER_MAX_SIZE far below the working set: the progress agent waits for flushes
    (consumption pauses) and the result is still exact."""
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=4)
    records, expected = mixed_stream(ns, 5_000, 1_000, seed=3, keyed=False)
    await produce(kafka_bootstrap, records)
    w = Worker(
        pg_url,
        kafka_bootstrap,
        ns,
        write_config(tmp_path),
        tmp_path / "w.log",
        BUFFER_MAX_SIZE="50",
        BUFFER_FLUSH_INTERVAL="1s",
    ).start()
    try:
        await settle(kafka_bootstrap, pg_engine, ns, [w])
        assert await table(pg_engine) == expected.rows()
        assert (w.metric("challenge_event_handler_buffer_size") or 0) <= 50
    finally:
        w.terminate()


async def test_database_outage_mid_stream_worker_waits_and_catches_up(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path, outage
):
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=4)
    records, expected = mixed_stream(ns, 20_000, 500, seed=9)
    w = Worker(pg_url, kafka_bootstrap, ns, write_config(tmp_path), tmp_path / "w.log").start()
    try:
        await w.wait_ready()
        await produce(kafka_bootstrap, records[:10_000])
        await wait_for(lambda: applied(pg_engine, w.group), 60, "some progress")
        outage.stop("pg")
        await produce(kafka_bootstrap, records[10_000:])  # the broker takes them meanwhile
        outage.start("pg")
        await settle(kafka_bootstrap, pg_engine, ns, [w])
        assert await table(pg_engine) == expected.rows()
    finally:
        w.terminate()


async def test_a_worker_with_a_static_id_takes_its_partitions_back_at_once_after_kill_9(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path
):
    """KAFKA_GROUP_INSTANCE_ID: killed -9 and restarted with the same id, the worker
    rejoins as itself and applies again long before the (here 60 s) session timeout,
    after which a new member would get the partitions; rows exact."""
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=4)
    records, expected = mixed_stream(ns, 20_000, 500)
    config = write_config(tmp_path)
    env = {"KAFKA_GROUP_INSTANCE_ID": f"{ns}-0", "KAFKA_SESSION_TIMEOUT": "60s"}
    first = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "w1.log", **env).start()
    try:
        await produce(kafka_bootstrap, records[:10_000])
        await first.wait_ready()

        async def some_applied() -> bool:
            return await applied(pg_engine, first.group) >= 5_000

        await wait_for(some_applied, 120, "first worker applying")
        first.kill()
    finally:
        first.kill()
    await produce(kafka_bootstrap, records[10_000:])
    before = await applied(pg_engine, first.group)
    second = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "w2.log", **env).start()
    started = asyncio.get_running_loop().time()
    try:

        async def applying_again() -> bool:
            assert second.running(), second.tail()
            return await applied(pg_engine, first.group) > before

        await wait_for(applying_again, 45, "restarted worker applying (static id)")
        assert asyncio.get_running_loop().time() - started < 45  # not after the 60 s
        await settle(kafka_bootstrap, pg_engine, ns, [second])
        assert await table(pg_engine) == expected.rows()
    finally:
        second.terminate()


async def committed_within_stored(bootstrap: str, engine: AsyncEngine, ns: str, group: str) -> None:
    """Nothing acknowledged early: Kafka's committed offset of every source partition
    applied directly is at or behind the position stored with the rows."""
    committed = await group_offsets(bootstrap, group)
    async with engine.connect() as conn:
        stored = {
            (topic, partition): offset
            for topic, partition, offset in (
                await conn.execute(
                    text(
                        "SELECT topic, partition, next_offset FROM challenge_consumer_offsets "
                        "WHERE consumer_group = :g"
                    ),
                    {"g": group},
                )
            ).all()
        }
    for tp, offset in committed.items():
        if tp.topic in (login_topic(ns), stat_topic(ns)) and offset > 0:
            assert offset <= stored.get((tp.topic, tp.partition), 0), (tp, offset, stored)


async def test_broker_restart_while_forwarding_loses_nothing(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path, outage
):
    """Records keyed by something else go through the repartition topic; the broker stops
    while copies are on their way. A copy that failed is resent before anything after it
    is acknowledged (idempotent producer), so no copy overtakes it: rows exact."""
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=4)
    records, expected = mixed_stream(ns, 20_000, 500, seed=21)
    records = [keyed_otherwise(r) for r in records]
    w = Worker(pg_url, kafka_bootstrap, ns, write_config(tmp_path), tmp_path / "w.log").start()
    try:
        await w.wait_ready()
        await produce(kafka_bootstrap, records[:10_000])

        async def forwarding() -> bool:
            return (w.metric("challenge_event_handler_events_total") or 0) >= 2_000

        await wait_for(forwarding, 120, "worker forwarding")
        outage.stop("kafka")
        outage.start("kafka")
        await produce(kafka_bootstrap, records[10_000:])
        await settle(kafka_bootstrap, pg_engine, ns, [w])
        assert await table(pg_engine) == expected.rows()
    finally:
        w.terminate()


FAIL_POSITIONS = (
    "ALTER TABLE challenge_consumer_offsets ADD CONSTRAINT fail_positions "
    "CHECK (next_offset < 0) NOT VALID"
)


async def test_a_held_then_failing_flush_is_redelivered_after_restart(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path
):
    """A flush waits on a row another session holds, then cannot store its positions at
    all (a constraint refuses them: not an outage, so it ends isolated and given up).
    The worker acknowledges none of its records and exits for a restart; the next worker
    reads them again from the stored positions: rows exact, nothing acknowledged early."""
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=4)
    records, expected = mixed_stream(ns, 6_000, 200, seed=31)
    config = write_config(tmp_path)
    first = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "w1.log").start()
    try:
        await first.wait_ready()
        await produce(kafka_bootstrap, records[:3_000])
        await wait_for(lambda: applied(pg_engine, first.group), 60, "first rows written")
        async with RowLock(pg_url, [u for (u, _g) in await table(pg_engine)][:20]) as lock:
            assert lock.locked > 0
            await produce(kafka_bootstrap, records[3_000:])

            async def waiting_on_the_lock() -> bool:
                return (first.metric("challenge_event_handler_flush_retries_total") or 0) > 0

            await wait_for(waiting_on_the_lock, 60, "a flush waiting on the held rows")
            async with pg_engine.begin() as conn:
                await conn.execute(text(FAIL_POSITIONS))

        async def exited() -> bool:
            return not first.running()

        await wait_for(exited, 120, "worker gave up the flush and exited")
        assert first.proc is not None and first.proc.returncode == 70, first.tail()
        await committed_within_stored(kafka_bootstrap, pg_engine, ns, first.group)
    finally:
        first.kill()
        async with pg_engine.begin() as conn:
            await conn.execute(
                text(
                    "ALTER TABLE challenge_consumer_offsets DROP CONSTRAINT IF EXISTS fail_positions"
                )
            )
    second = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "w2.log").start()
    try:
        await settle(kafka_bootstrap, pg_engine, ns, [second])
        assert await table(pg_engine) == expected.rows()
        await committed_within_stored(kafka_bootstrap, pg_engine, ns, first.group)
    finally:
        second.terminate()
