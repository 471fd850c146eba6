"""Redelivered event ids are applied once across replicas and restarts (recorded with the
rows in the flush transaction), and again once the window has passed."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from app.core.clock import now_utc
from tables.flusher import Flusher
from tables.schema import challenge_processed_events
from tables.writer import Writer
from tests.helpers.grpc import (
    Bridge,
    Server,
    fetch_rows,
    login,
    new_id,
    server_env,
    users,
    write_config,
)
from tests.helpers.support import config, goal, row, stat
from tests.helpers.wait import wait_until_async

COUNTERS = config(
    goal("logins", "login", target=100, type="increment"),
    goal("kills", "statistic:kills", target=1000, type="increment"),
)


def replica(engine, window: float = 600.0) -> Flusher:
    """One process's buffer: its own in-memory state, the shared database."""
    return Flusher(Writer(engine), event_id_window=window)


async def _deliver(flusher: Flusher, events) -> None:
    for event in events:
        flusher.try_add(event, COUNTERS.goals_for(*_key(event)))
    await flusher.flush_now()


def _key(event):
    from app.pipeline import source_of

    return source_of(event), event.stat_code


async def test_a_redelivery_to_another_replica_or_after_a_restart_counts_once(engine):
    first = stat("u1", "kills", 10, "2026-11-20 10:00", inc=10, event_id="k1")
    await _deliver(replica(engine), [first])
    # the bridge never got the ack: it redelivers k1 elsewhere, together with a new event
    again = [first, stat("u1", "kills", 15, "2026-11-20 10:05", inc=5, event_id="k2")]
    await _deliver(replica(engine), again)
    assert (await row(engine, "u1", "kills")).progress == 15


async def test_events_without_an_id_are_kept_when_a_flush_refolds(engine):
    await _deliver(
        replica(engine), [stat("u3", "kills", 1, "2026-11-20 10:00", inc=1, event_id="d1")]
    )
    # no id: never deduplicated, and never dropped when its flush is re-folded
    anonymous = stat("u3", "kills", 2, "2026-11-20 10:01", inc=2)._replace(event_id="")
    await _deliver(
        replica(engine),
        [stat("u3", "kills", 1, "2026-11-20 10:00", inc=1, event_id="d1"), anonymous],
    )
    assert (await row(engine, "u3", "kills")).progress == 3


async def test_two_replicas_racing_on_one_id_apply_it_once(engine):
    events = [
        stat(f"r{i}", "kills", 3, "2026-11-20 10:00", inc=3, event_id=f"race-{i}")
        for i in range(200)
    ]
    await asyncio.gather(_deliver(replica(engine), events), _deliver(replica(engine), events))
    assert (await row(engine, "r7", "kills")).progress == 3
    assert (await row(engine, "r199", "kills")).progress == 3


async def test_after_the_window_the_same_id_counts_again(engine):
    event = stat("u2", "kills", 4, "2026-11-20 10:00", inc=4, event_id="old")
    await _deliver(replica(engine, window=0.05), [event])

    async def expired() -> bool:  # on the clock the flush compares expiry with
        async with engine.connect() as conn:
            expires = await conn.scalar(
                select(challenge_processed_events.c.expires_at).where(
                    challenge_processed_events.c.event_id == "old"
                )
            )
        return expires is not None and expires < now_utc()

    await wait_until_async(expired, message="the recorded id to expire")
    await _deliver(replica(engine, window=0.05), [event])
    assert (await row(engine, "u2", "kills")).progress == 8


async def test_grpc_redelivery_after_a_restart_counts_once(pg_url, tmp_path):
    cfg = write_config(tmp_path)
    env = server_env(pg_url, cfg)
    (user,) = users(1)
    event_id = new_id()
    for attempt in range(2):  # the second server is a restarted process: empty memory
        server = Server(env=env, log_path=tmp_path / f"serve-{attempt}.log").start()
        try:
            await server.wait_health()
            async with Bridge(server.target) as bridge:
                assert (await bridge.call(login(user, event_id=event_id)))[0].name == "OK"
        finally:
            server.kill()
    rows = await fetch_rows(pg_url, [user])
    assert rows[(user, "logins")]["progress"] == 1
