"""Writes under faults with real processes: a row lock held by a second real PostgreSQL
session (the backend's claim), writes that keep failing while the database answers,
shutdown with the database down, and Kafka exactness under a held lock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.settings import async_database_url
from tables.db import make_engine
from tests.helpers.faults import RowLock
from tests.helpers.grpc import (
    LIVENESS,
    NOT_SERVING,
    SERVING,
    Bridge,
    Server,
    codes,
    login,
    progress,
    server_env,
    stat,
    users,
    write_config,
)
from tests.helpers.kafka import (
    Worker,
    create_topics,
    drained,
    mixed_stream,
    new_namespace,
    produce,
    table,
    wait_for,
)
from tests.helpers.kafka import write_config as kafka_config

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def started(tmp_path: Path):
    servers: list[Server] = []

    def start(env: dict[str, str], name: str = "server") -> Server:
        server = Server(env, tmp_path / f"{name}-{len(servers)}.log").start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop_quietly()


async def _metric_at_least(server: Server, name: str, value: float) -> bool:
    return await server.metric(name) >= value


async def test_a_held_user_delays_only_its_own_calls(pg_url, tmp_path, started, row_lock):
    """One user's rows held FOR UPDATE while 30 users send: everyone else is answered
    within a flush, the held user's calls wait and then commit, exact.

    The flush interval is an hour and the lock outlives the other calls: answered within
    their 10 s deadline, they waited for neither."""
    server = started(server_env(pg_url, write_config(tmp_path), BUFFER_FLUSH_INTERVAL="1h"))
    await server.wait_health(SERVING)
    people = users(30)
    held = people[0]
    async with Bridge(server.target) as bridge:
        assert codes(await bridge.call_all([login(u) for u in people])) == {"OK": 30}
        async with row_lock([held]) as lock:
            assert lock.locked == 2  # logins + daily-login
            held_calls: asyncio.Future = asyncio.ensure_future(  # noqa: RUF006 - awaited below
                bridge.call_all([login(held) for _ in range(5)])
            )
            messages = [m for u in people[1:] for m in (login(u), stat(u, "enemy_kills", 0, 3))]
            others = await asyncio.gather(*(bridge.call(m, timeout=10) for m in messages))
            assert codes(others) == {"OK": 58}
            assert not held_calls.done()
            carried = "challenge_event_handler_rows_carried_total"
            # three more retries of the held user's two rows meet the lock, still held
            at_least = await server.metric(carried) + 6
            await wait_for(
                lambda: _metric_at_least(server, carried, at_least), 20, "retries meeting the lock"
            )
            assert not held_calls.done()
        assert codes(await held_calls) == {"OK": 5}
    assert await progress(pg_url, people[1:], "kills") == dict.fromkeys(people[1:], 3)
    assert await progress(pg_url, people, "logins") == {u: 2 if u != held else 6 for u in people}
    assert server.terminate() == 0


async def test_health_not_serving_while_flushes_keep_failing(pg_url, tmp_path, started):
    """The database answers SELECT 1 but every flush fails (table renamed away):
    NOT_SERVING; back to SERVING once writes succeed, and the waiting calls commit."""
    server = started(
        server_env(
            pg_url,
            write_config(tmp_path),
            HEALTH_CHECK_INTERVAL="200ms",
            GRPC_ACK_TIMEOUT="30s",
        )
    )
    await server.wait_health(SERVING)
    engine = make_engine(async_database_url("DATABASE_URL", pg_url))
    people = users(5)
    try:
        async with Bridge(server.target) as bridge:
            async with engine.begin() as conn:
                await conn.execute(text("ALTER TABLE user_goal_progress RENAME TO ugp_renamed"))
            try:
                calls = asyncio.ensure_future(bridge.call_all([login(u) for u in people]))
                await server.wait_ready(NOT_SERVING, deadline=15)
                assert await server.health(LIVENESS) == SERVING  # alive, only not ready
                assert not calls.done()
            finally:
                async with engine.begin() as conn:
                    await conn.execute(text("ALTER TABLE ugp_renamed RENAME TO user_goal_progress"))
            await server.wait_ready(SERVING, deadline=20)
            assert codes(await calls) == {"OK": 5}
    finally:
        await engine.dispose()
    assert await progress(pg_url, people, "logins") == dict.fromkeys(people, 1)
    assert server.terminate() == 0


async def test_sigterm_with_the_database_down_is_bounded(pg_url, tmp_path, started, outage):
    """PostgreSQL stopped with durable calls waiting: SIGTERM ends the process within the
    grace period, the uncommitted calls are answered UNAVAILABLE, and the exit is non-zero."""
    grace = 4.0
    server = started(
        server_env(
            pg_url,
            write_config(tmp_path),
            GRPC_SHUTDOWN_GRACE=f"{grace}s",
            GRPC_ACK_TIMEOUT="60s",
        )
    )
    await server.wait_health(SERVING)
    people = users(40)
    async with Bridge(server.target) as bridge:
        assert codes(await bridge.call_all([login(u) for u in people[:5]])) == {"OK": 5}
        outage.stop("pg")
        calls = asyncio.ensure_future(bridge.call_all([login(u) for u in people], timeout=60))
        in_flight = "challenge_event_handler_grpc_in_flight_requests"
        await wait_for(lambda: _metric_at_least(server, in_flight, 40), 20, "40 calls waiting")
        # bounded by the grace period: well before the calls' own 60 s deadline (a process
        # still running then is killed and `code` is None)
        code = await asyncio.to_thread(server.terminate, grace + 20)
        results = await calls
    assert code not in (0, None), server.log_tail()
    assert codes(results) == {"UNAVAILABLE": 40}, codes(results)
    assert all("retry" in details for _, details in results)
    assert "final flush gave up" in server.log_text()


async def test_sigterm_drains_calls_parked_on_a_held_lock(pg_url, tmp_path, started, row_lock):
    """200 durable calls wait for rows another session holds; SIGTERM arrives; the lock is
    released within the grace period: every call is committed and OK, exit 0."""
    server = started(server_env(pg_url, write_config(tmp_path), GRPC_ACK_TIMEOUT="60s"))
    await server.wait_health(SERVING)
    people = users(20)
    async with Bridge(server.target) as bridge:
        assert codes(await bridge.call_all([login(u) for u in people])) == {"OK": 20}
        async with row_lock(people) as lock:
            assert lock.locked == 40
            messages = [login(u) for u in people for _ in range(10)]
            calls = asyncio.ensure_future(bridge.call_all(messages, concurrency=200, timeout=60))
            in_flight = "challenge_event_handler_grpc_in_flight_requests"
            await wait_for(lambda: _metric_at_least(server, in_flight, 200), 30, "200 parked")
            terminating = asyncio.ensure_future(asyncio.to_thread(server.terminate, 60))

            async def shutting_down() -> bool:
                return "shutting down" in server.log_text()

            await wait_for(shutting_down, 10, "SIGTERM handled while the lock is held")
            assert not calls.done()
        code = await terminating
        results = await calls
    assert code == 0, server.log_tail()
    assert codes(results) == {"OK": 200}
    assert await progress(pg_url, people, "logins") == dict.fromkeys(people, 11)


@pytest.mark.kafka
async def test_kafka_worker_exact_under_a_held_lock_and_kill_9(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path
):
    """Kafka keeps waiting on a held row instead of skipping it, so stored positions never
    cover an uncommitted event: kill -9 while the lock is held, restart, rows exact."""
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=4)
    records, expected = mixed_stream(ns, 6_000, 100)
    config = kafka_config(tmp_path)
    first = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "k1.log").start()
    try:
        await first.wait_ready()
        await produce(kafka_bootstrap, records[:3_000])
        await wait_for(
            lambda: drained(kafka_bootstrap, pg_engine, ns, first.group), 90, "first half"
        )
        async with RowLock(pg_url, ["user:00007"]) as lock:
            assert lock.locked > 0
            await produce(kafka_bootstrap, records[3_000:])

            async def stuck() -> bool:
                return (first.metric("challenge_event_handler_flush_retries_total") or 0) >= 3

            await wait_for(stuck, 30, "flushes meeting the lock")
            assert not await drained(kafka_bootstrap, pg_engine, ns, first.group)
            first.kill()
    finally:
        first.kill()
    second = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "k2.log").start()
    try:
        await wait_for(
            lambda: drained(kafka_bootstrap, pg_engine, ns, second.group), 120, "drained"
        )
        assert await table(pg_engine) == expected.rows()
    finally:
        second.terminate()
