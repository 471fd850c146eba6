"""Goal-completed events through a real `python -m app serve` with
COMPLETION_SINKS=async-messaging, killed with SIGKILL at the two points that matter, and
a sidecar that is down for a while. The sidecar is the gRPC stand-in implementing its
real proto (tests/helpers/sidecar.py); every wait is a bounded poll.

(a) killed after the commit, before any publish: the outbox holds the completions, so
    the restarted process delivers every one of them.
(b) killed after a publish, before its mark (the stand-in kills the process when the
    message arrives): the restarted process sends that event again, with the same id.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text

from app.core.settings import async_database_url
from tables.db import make_engine
from tests.helpers.grpc import OK, Bridge, Server, codes, login, server_env, stat, users
from tests.helpers.grpc import write_config as write_grpc_config
from tests.helpers.kafka import wait_for
from tests.helpers.process import alive, children_of
from tests.helpers.sidecar import SidecarStandIn

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


async def outbox_of(pg_url: str, people: list[str]) -> list[tuple[int, str, str, object]]:
    """(id, user, goal, published_at) of these users' completions, in id order."""
    engine = make_engine(async_database_url("DATABASE_URL", pg_url), pool_size=1)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(
                text(
                    "SELECT id, user_id, goal_id, published_at FROM challenge_goal_completions "
                    "WHERE user_id = ANY(:users) ORDER BY id"
                ),
                {"users": people},
            )
            return [tuple(r) for r in found]
    finally:
        await engine.dispose()


@pytest.fixture
def servers(tmp_path: Path):
    started: list[Server] = []

    def start(env: dict[str, str]) -> Server:
        server = Server(env, tmp_path / f"serve-{len(started)}.log").start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop_quietly()


def _env(
    pg_url: str, tmp_path: Path, sidecar: SidecarStandIn, sender: str = "inline"
) -> dict[str, str]:
    host, port = sidecar.target
    return server_env(
        pg_url,
        write_grpc_config(tmp_path),
        COMPLETION_SINKS="async-messaging",
        ASYNC_MESSAGING_PUBLISHER_GRPC_HOST=host,
        ASYNC_MESSAGING_PUBLISHER_GRPC_PORT=str(port),
        COMPLETION_POLL_INTERVAL="100ms",
        COMPLETION_SENDER=sender,
    )


def _completing(people: list[str]) -> list:
    """Two completions per user: the daily login and 'wins' (target 10)."""
    return [m for user in people for m in (login(user), stat(user, "match_wins", 12.0))]


async def test_killed_after_commit_before_publish_every_completion_is_delivered(
    pg_url: str, tmp_path: Path, servers
):
    """The sidecar is down while durable calls complete goals: the acks answer OK all
    along (the publisher never sits on the ack path), the process is killed with the
    completions committed and unpublished, and after a restart with the sidecar back
    every one of them arrives."""
    sidecar = SidecarStandIn()  # down
    env = _env(pg_url, tmp_path, sidecar)
    server = servers(env)
    await server.wait_health()
    people = users(30)
    async with Bridge(server.target) as bridge:
        results = await bridge.call_all(_completing(people), concurrency=20)
    assert codes(results) == {OK.name: 60}
    rows = await outbox_of(pg_url, people)
    assert len(rows) == 60 and all(published is None for *_, published in rows)
    server.kill()
    await sidecar.start()
    try:
        restarted = servers(env)
        await restarted.wait_health()

        async def delivered() -> bool:
            return all(p is not None for *_, p in await outbox_of(pg_url, people))

        await wait_for(delivered, 60, "every completion published after the restart")
    finally:
        await sidecar.stop()
    ids = [str(i) for i, *_ in await outbox_of(pg_url, people)]
    assert sorted(set(sidecar.ids(people)), key=int) == ids


async def test_killed_after_publish_before_mark_the_event_is_sent_again_with_its_id(
    pg_url: str, tmp_path: Path, servers
):
    sidecar = await SidecarStandIn().start()
    env = _env(pg_url, tmp_path, sidecar, sender="process")  # the calls in a child process
    server = servers(env)
    await server.wait_health()
    killed: list[str] = []
    relays: list[int] = []
    people = users(5)

    def kill_on_first(request) -> None:
        if not killed and server.proc is not None and sidecar.of(people):
            killed.append(request.body)
            relays.extend(children_of(server.proc.pid))  # the sink's calls (COMPLETION_SENDER)
            os.kill(server.proc.pid, signal.SIGKILL)  # published, not yet marked

    sidecar.on_receive = kill_on_first
    try:
        async with Bridge(server.target) as bridge:
            results = await bridge.call_all(_completing(people), concurrency=10)
        # calls answered before the kill are OK; the rest may fail with the process gone
        assert codes(results)[OK.name] >= 1

        async def died() -> bool:
            return not server.running()

        await wait_for(died, 30, "the stand-in's kill")
        assert killed
        assert relays  # the calls ran in a process of their own, and it died with serve

        async def relays_gone() -> bool:
            return not any(alive(pid) for pid in relays)

        await wait_for(relays_gone, 10, "the relay process dying with serve")
        first = sidecar.of(people)[0]
        # sent before the kill: published (calls overlap: maybe several), none marked
        sent_before_kill = set(sidecar.ids(people))
        sidecar.on_receive = None
        restarted = servers(env)
        await restarted.wait_health()
        async with Bridge(restarted.target) as bridge:  # what the kill refused, redelivered
            again = await bridge.call_all(_completing(people), concurrency=10)
        assert codes(again) == {OK.name: 10}

        async def delivered() -> bool:
            rows = await outbox_of(pg_url, people)
            return len(rows) == 10 and all(p is not None for *_, p in rows)

        await wait_for(delivered, 60, "every completion published after the restart")
    finally:
        await sidecar.stop()
    counts = Counter(sidecar.ids(people))
    assert counts[first.id] == 2  # sent again after the kill, with the same id
    assert max(counts.values()) == 2
    twice = {i for i, n in counts.items() if n > 1}
    assert first.id in twice and twice <= sent_before_kill
    repeat = [r for r in sidecar.of(people) if r.id == first.id][1]
    assert {**repeat.body, "timestamp": None} == {**first.body, "timestamp": None}
    assert sorted(counts, key=int) == [str(i) for i, *_ in await outbox_of(pg_url, people)]
