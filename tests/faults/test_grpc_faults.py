"""Delivery guarantees of the gRPC bridge under faults, with real processes and PostgreSQL:
kill -9 after durable acks, the buffered-mode loss bound, a database outage under load,
and SIGTERM with hundreds of calls in flight."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest

from tests.helpers.grpc import (
    LIVENESS,
    NOT_SERVING,
    OK,
    SERVING,
    UNAVAILABLE,
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
from tests.helpers.wait import wait_until_async

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

KILL_INC = 3


def mixed_events(people: list[str], per_user: int) -> tuple[list, list[tuple[str, str]]]:
    """Alternating logins and kill increments; returns messages and (user, kind) per message."""
    messages, kinds = [], []
    for i in range(per_user):
        for user in people:
            if i % 2 == 0:
                messages.append(login(user))
                kinds.append((user, "login"))
            else:
                messages.append(stat(user, "enemy_kills", 0, KILL_INC))
                kinds.append((user, "kill"))
    return messages, kinds


@pytest.fixture
def started(tmp_path: Path):
    """Start servers; whatever is still running at the end is killed."""
    servers: list[Server] = []

    def start(env: dict[str, str], name: str = "server") -> Server:
        server = Server(env, tmp_path / f"{name}-{len(servers)}.log").start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop_quietly()


async def test_durable_acks_survive_kill_9(pg_url: str, tmp_path: Path, started):
    env = server_env(pg_url, write_config(tmp_path))
    server = started(env)
    await server.wait_health(SERVING)
    people = users(200)
    messages, kinds = mixed_events(people, 10)  # 2,000 events
    async with Bridge(server.target) as bridge:
        results = await bridge.call_all(messages, concurrency=200)
    server.kill()  # as soon as every call returned
    ok = [kind for kind, (code, _) in zip(kinds, results, strict=True) if code is OK]
    assert codes(results) == {"OK": 2000}, codes(results)

    restarted = started(env)  # the service comes back on the same database
    await restarted.wait_health(SERVING)
    logins = await progress(pg_url, people, "logins")
    kills = await progress(pg_url, people, "kills")
    for user in people:
        assert logins.get(user) == ok.count((user, "login")), user
        assert kills.get(user) == KILL_INC * ok.count((user, "kill")), user
    assert restarted.terminate() == 0


async def test_buffered_acks_loss_bound(pg_url: str, tmp_path: Path, started):
    """ACK_MODE=buffered answers before the commit: kill -9 loses what was buffered
    (at most one flush interval of events); SIGTERM flushes it all."""
    env = server_env(
        pg_url, write_config(tmp_path), ACK_MODE="buffered", BUFFER_FLUSH_INTERVAL="60s"
    )
    for ending in ("kill", "sigterm"):
        server = started(env, ending)
        await server.wait_health(SERVING)
        people = users(50)
        async with Bridge(server.target) as bridge:
            results = await bridge.call_all([login(u) for u in people])
        assert codes(results) == {"OK": 50}
        if ending == "kill":
            server.kill()
            # nothing was flushed yet: every acknowledged event of the interval is lost
            assert await progress(pg_url, people, "logins") == {}
        else:
            assert server.terminate() == 0
            assert await progress(pg_url, people, "logins") == dict.fromkeys(people, 1)


async def _until(condition, deadline: float, what: str) -> None:
    """Poll `condition` (plain or async) until true, failing after `deadline` seconds."""
    await wait_until_async(condition, timeout=deadline, message=what, every=0.1)


async def test_database_outage_under_load(pg_url: str, tmp_path: Path, started, outage):
    """PostgreSQL stopped for ~8 s under load: health flips to NOT_SERVING, calls wait or
    get UNAVAILABLE (commit timed out, or buffer full: memory stays bounded); the bridge
    redelivers (same event id) and after the restart every event is counted exactly once."""
    env = server_env(
        pg_url,
        write_config(tmp_path),
        GRPC_ACK_TIMEOUT="2s",
        GRPC_BUFFER_WAIT="1s",
        HEALTH_CHECK_INTERVAL="250ms",
        BUFFER_MAX_SIZE="100",  # 150 players x 2 login goals overflow it during the outage
    )
    server = started(env)
    await server.wait_health(SERVING)
    people = users(150)
    sent = {u: 0 for u in people}
    seen: dict[str, int] = {}
    refusals: set[str] = set()
    stop_sending = asyncio.Event()

    async def player(bridge: Bridge, user: str) -> None:
        """Keeps sending logins; redelivers each until OK, like the Extend bridge."""
        while not stop_sending.is_set():
            message = login(user)
            while True:
                code, details = await bridge.call(message, timeout=20)
                seen[code.name] = seen.get(code.name, 0) + 1
                if code is OK:
                    break
                refusals.add(details.split(":")[0])
                assert code in (UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), code
                await asyncio.sleep(0.2)  # the scenario: the bridge's pause before redelivery
            sent[user] += 1

    async with Bridge(server.target) as bridge:
        load = asyncio.gather(*(player(bridge, u) for u in people))
        try:
            await _until(lambda: sum(sent.values()) >= 200, 20, "traffic")
            try:
                outage.stop("pg")
                await server.wait_ready(NOT_SERVING, deadline=10)
                assert await server.health(LIVENESS) == SERVING  # no restart for an outage
                ok_before = sum(sent.values())
                await asyncio.sleep(8)  # the scenario: an 8 s outage under load, not a wait
                # acks stop while the database is down (at most the flush in flight lands)
                assert sum(sent.values()) - ok_before <= len(people)
                assert await server.metric("challenge_event_handler_buffer_size") <= 100
            finally:
                outage.start("pg")
            await server.wait_ready(SERVING, deadline=30)
            ok_after_restart = sum(sent.values())
            await _until(lambda: sum(sent.values()) > ok_after_restart + 100, 30, "acks")
        finally:
            stop_sending.set()
            await asyncio.wait_for(load, 60)
    assert seen.get("UNAVAILABLE", 0) > 0, seen
    assert {"buffer full", "not committed in time (database slow), retry"} <= refusals
    assert await progress(pg_url, people, "logins") == sent
    assert server.terminate() == 0


async def test_sigterm_with_calls_in_flight_loses_nothing(
    pg_url: str, tmp_path: Path, started, row_lock
):
    """500 durable calls parked on rows another session holds (group commit would
    otherwise answer them at once); SIGTERM, then the lock goes: each call is committed
    and answered OK, and the process exits 0."""
    env = server_env(pg_url, write_config(tmp_path), GRPC_ACK_TIMEOUT="120s")
    server = started(env)
    await server.wait_health(SERVING)
    people = users(100)
    messages, kinds = mixed_events(people, 5)  # 500 events
    async with Bridge(server.target) as bridge:
        seeded = await bridge.call_all(
            [m for u in people for m in (login(u), stat(u, "enemy_kills", 0, KILL_INC))]
        )
        assert codes(seeded) == {"OK": 200}
        async with row_lock(people):
            calls = asyncio.ensure_future(bridge.call_all(messages, concurrency=500, timeout=60))
            in_flight = "challenge_event_handler_grpc_in_flight_requests"
            try:
                await _until(lambda: _metric_at_least(server, in_flight, 500), 30, "500 in flight")
            except BaseException:
                calls.cancel()
                with contextlib.suppress(BaseException):
                    await calls
                raise
            terminating = asyncio.ensure_future(asyncio.to_thread(server.terminate))
            await _until(lambda: "shutting down" in server.log_text(), 10, "SIGTERM handled")
        code = await terminating
        results = await calls
    assert code == 0, server.log_tail()
    assert codes(results) == {"OK": 500}
    ok = [kind for kind, (c, _) in zip(kinds, results, strict=True) if c is OK]
    logins = await progress(pg_url, people, "logins")
    kills = await progress(pg_url, people, "kills")
    for user in people:
        assert logins.get(user, 0) == 1 + ok.count((user, "login"))
        assert kills.get(user, 0) == KILL_INC * (1 + ok.count((user, "kill")))


async def _metric_at_least(server: Server, name: str, value: float) -> bool:
    return await server.metric(name) >= value
