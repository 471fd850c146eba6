"""tables/gdpr.py against real PostgreSQL and SQLite: one transaction erases the user,
buffered and in-flight updates never resurrect a row, the re-sweep catches a row another
replica wrote after the deletion."""

from __future__ import annotations

import asyncio
import logging

from app.pipeline import source_of
from tables.flusher import Flusher
from tables.gdpr import erase_user
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


async def test_resweep_deletes_a_row_written_after_the_deletion(engine, caplog):
    flusher = flusher_for(engine)
    await erase_user(flusher, "late", "mygame", source="test", resweep_after=0.3)
    await put_row(engine, "late", "logins", progress=1)  # another replica's late flush
    with caplog.at_level(logging.WARNING, logger="tables.gdpr"):

        async def swept() -> bool:
            return not await rows(engine)

        await wait_until_async(swept, message="the re-sweep to delete the late row")
        # the log line follows the commit
        await wait_until_async(
            lambda: "gdpr re-sweep deleted rows" in caplog.text, message="the re-sweep's log"
        )
