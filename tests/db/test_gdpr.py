"""tables/gdpr.py against real PostgreSQL and SQLite: one transaction erases the user,
buffered and in-flight updates never resurrect a row, and the tombstone keeps every
later flush — on any replica — from writing the user again."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from app.pipeline import source_of
from tables.flusher import Flusher
from tables.gdpr import erase_user
from tables.housekeeping import purge_tombstones
from tables.writer import Writer
from tests.helpers.faults import RowLock
from tests.helpers.support import config, execute, goal, login, put_row, rows
from tests.helpers.wait import wait_until_async

CFG = config(
    goal("logins", "login", target=100, type="increment"),
    goal("daily", "login", target=30, type="increment", daily=True),
)


def flusher_for(engine) -> Flusher:
    return Flusher(Writer(engine), interval=0.05, event_id_window=600.0)


def add(flusher: Flusher, event) -> None:
    assert flusher.try_add(event, CFG.goals_for(source_of(event), event.stat_code)) is not None


async def test_buffered_updates_are_dropped_and_rows_deleted(engine):
    flusher = flusher_for(engine)
    add(flusher, login("gone", "2026-11-20 10:00"))
    add(flusher, login("kept", "2026-11-20 10:00"))
    await flusher.flush_now()
    add(flusher, login("gone", "2026-11-20 11:00"))  # buffered, not yet written
    add(flusher, login("kept", "2026-11-20 11:00"))
    erasure = await erase_user(flusher, "gone", "mygame", source="test")
    assert erasure.rows == {
        "user_goal_progress": 2,
        "challenge_daily_marks": 1,
        "challenge_dead_letters": 0,
        "challenge_completion_deliveries": 0,
        "challenge_goal_completions": 0,
    }
    assert erasure.buffered == 2
    await flusher.flush_now()
    found = await rows(engine)
    assert sorted(found) == [("kept", "daily"), ("kept", "logins")]
    assert found[("kept", "logins")].progress == 2
    again = await erase_user(flusher, "gone", "mygame", source="test")  # redelivered
    assert again.total == 0


async def test_a_flush_in_flight_never_resurrects_the_user(engine):
    """The flusher runs on its own task; deletions land while flushes are being written."""
    flusher = flusher_for(engine)
    flusher.start()
    try:
        for round_ in range(20):
            user = f"race-{round_}"
            for minute in range(10):
                add(flusher, login(user, f"2026-11-20 10:{minute:02d}"))
            flusher.request_flush()
            # the scenario, not a wait: land before, during or after the flush
            await asyncio.sleep(0.001 * (round_ % 5))
            await erase_user(flusher, user, "mygame", source="test")
        # the flusher's own interval flushes take what is left, then a final one
        await wait_until_async(
            lambda: flusher.pending == 0 and flusher.carried == 0,
            message="the interval flushes to take the buffer",
        )
        await flusher.flush_now()
        assert not [key for key in await rows(engine) if key[0].startswith("race-")]
    finally:
        await flusher.close()


async def test_deletion_does_not_wait_for_another_users_held_rows(pg_engine, pg_url):
    """The barrier waits only for flushes taken before the deletion, not for another
    user's rows carried while the backend's claim holds them; those are written after the
    release."""
    flusher = flusher_for(pg_engine)
    flusher.start()
    try:
        add(flusher, login("held", "2026-11-20 10:00"))
        add(flusher, login("leaving", "2026-11-20 10:00"))
        await flusher.flush_now()
        async with RowLock(pg_url, ["held"]) as lock:
            assert lock.locked == 2
            add(flusher, login("held", "2026-11-20 11:00"))
            flusher.request_flush()
            await wait_until_async(lambda: flusher.carried, message="the held row carried")
            erasure = await erase_user(
                flusher, "leaving", "mygame", source="test", barrier_timeout=3
            )
            assert erasure.rows["user_goal_progress"] == 2
    finally:
        await flusher.close()
    found = await rows(pg_engine)
    assert not [key for key in found if key[0] == "leaving"]
    assert found[("held", "logins")].progress == 2  # carried, written after the release


async def test_other_namespace_rows_of_the_user_are_left(engine):
    await put_row(engine, "multi", "logins", progress=3)
    await execute(
        engine,
        "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace) "
        "VALUES ('multi', 'other-goal', 'c1', 'othergame')",
    )
    erasure = await erase_user(flusher_for(engine), "multi", "mygame", source="test")
    assert erasure.rows["user_goal_progress"] == 1
    assert list(await rows(engine)) == [("multi", "other-goal")]


async def test_another_replica_never_writes_an_erased_user(engine):
    """Replica A erases the user; replica B (its own flusher, which never heard of the
    deletion) then flushes events of that user, live or replayed: the merge statement
    reads the tombstone and leaves them out, and reports them erased."""
    a, b = flusher_for(engine), flusher_for(engine)
    add(a, login("gone", "2026-11-20 10:00"))
    await a.flush_now()
    await erase_user(a, "gone", "mygame", source="test")
    results = []
    b.sender.on_flush = lambda _g, result, _t: results.append(result)
    add(b, login("gone", "2026-11-19 10:00"))  # replayed from before the deletion
    add(b, login("gone", "2026-11-21 10:00"))
    add(b, login("other", "2026-11-21 10:00"))
    await b.flush_now()
    assert sorted(await rows(engine)) == [("other", "daily"), ("other", "logins")]
    erased = [d for result in results for d in result.erased]
    assert {(d.user_id, d.goal.goal_id) for d in erased} == {("gone", "logins"), ("gone", "daily")}
    assert not [d for d in erased if d.user_id != "gone"]


async def test_a_flush_begun_before_the_deletion_is_waited_for_and_swept(pg_engine):
    """A flush transaction in flight on another replica (it has read the tombstones and
    written the user's row, not yet committed) when the deletion runs: the deletion's
    lock waits for it to end, then deletes what it wrote; nothing of the user is left."""
    hold, reached = asyncio.Event(), asyncio.Event()

    async def slow_commit(_conn) -> None:  # runs inside the flush's transaction
        reached.set()
        await hold.wait()

    other = Flusher(Writer(pg_engine), interval=0.05, extra_for=lambda _g: slow_commit)
    add(other, login("racing", "2026-11-20 10:00"))
    flushing = asyncio.create_task(other.flush_now())
    await asyncio.wait_for(reached.wait(), 30)
    deleting = asyncio.create_task(
        erase_user(flusher_for(pg_engine), "racing", "mygame", source="t")
    )

    async def deletion_waits_on_the_lock() -> bool:
        async with pg_engine.connect() as conn:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname = 'challenge_erasures' AND NOT l.granted"
                )
            )
        return bool(waiting)

    await wait_until_async(deletion_waits_on_the_lock, message="the deletion waiting for the lock")
    assert not deleting.done()
    hold.set()
    await flushing
    erasure = await deleting
    assert erasure.rows["user_goal_progress"] == 2  # what the flush committed meanwhile
    assert not await rows(pg_engine)
    add(other, login("racing", "2026-11-20 11:00"))  # and from now on nothing
    await other.flush_now()
    assert not await rows(pg_engine)


async def test_old_tombstones_are_purged(engine):
    flusher = flusher_for(engine)
    await erase_user(flusher, "long-gone", "mygame", source="test")
    await erase_user(flusher, "recent", "mygame", source="test")
    await execute(
        engine,
        "UPDATE challenge_erasures SET erased_at = '2024-01-01 00:00:00' WHERE user_id = 'long-gone'",
    )
    assert await purge_tombstones(engine, retention=400 * 86400) == 1
    later = flusher_for(engine)
    add(later, login("long-gone", "2026-11-21 10:00"))  # a new player with a reused id
    add(later, login("recent", "2026-11-21 10:00"))
    await later.flush_now()
    assert {user for user, _goal in await rows(engine)} == {"long-gone"}
