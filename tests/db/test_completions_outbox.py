"""The goal-completed outbox written by the merge (docs/completions.md), on PostgreSQL and
SQLite: one row per (user, goal, period) in the same statement as the progress, only for
rows that really became `completed` in that write, whatever is replayed or redelivered.

The property test (tests/db/test_property.py) holds the outbox equal to the Python
oracle on random sequences; these are the named cases, and the PostgreSQL forms' rows
that are passed by ('r', re-run) or held ('c', carried).
"""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy import text

from app.core.challenges import parse_config
from app.core.progress import fold
from app.pipeline import source_of
from tables.flusher import Flusher
from tables.waiters import Ack
from tables.writer import Writer
from tests.db.test_durability import _wait_for_lock_wait
from tests.helpers.faults import RowLock
from tests.helpers.support import (
    completions,
    config,
    flush,
    goal,
    login,
    put_row,
    rotation,
    row,
    stat,
    ts,
)

WINS = "statistic:match_wins"


def _keys(found) -> list[tuple]:
    return [(r.user_id, r.goal_id, r.completed_at, r.period_start, r.period_end) for r in found]


async def test_a_row_completing_writes_one_completion_with_its_event_time(engine):
    cfg = config(goal("win-10", WINS, target=10), goal("logins-2", "login", target=2))
    first = await flush(engine, cfg, [stat("u1", "match_wins", 4, "2026-11-20 10:00")])
    assert first.completions == 0 and await completions(engine) == []
    result = await flush(
        engine,
        cfg,
        [
            stat("u1", "match_wins", 12, "2026-11-20 10:05"),
            login("u1", "2026-11-20 10:06"),
            login("u1", "2026-11-20 10:07"),  # the second login completes logins-2
        ],
    )
    assert result.completions == 2
    found = await completions(engine)
    assert _keys(found) == [
        ("u1", "logins-2", ts("2026-11-20 10:07"), None, None),
        ("u1", "win-10", ts("2026-11-20 10:05"), None, None),
    ]
    assert [r.challenge_id for r in found] == ["c1", "c1"]
    assert all(r.namespace == "mygame" and r.published_at is None for r in found)
    assert found[0].id < found[1].id  # in key order within one statement


async def test_a_claimed_row_never_writes_one(engine):
    cfg = config(goal("win-10", WINS, target=10))
    await put_row(
        engine,
        "u1",
        "win-10",
        status="claimed",
        progress=3,
        completed_at=ts("2026-11-19 10:00"),
        claimed_at=ts("2026-11-19 11:00"),
    )
    result = await flush(engine, cfg, [stat("u1", "match_wins", 20, "2026-11-20 10:00")])
    assert (result.completions, await completions(engine)) == (0, [])


async def test_an_already_completed_row_never_writes_another(engine):
    cfg = config(goal("win-10", WINS, target=10))
    await flush(engine, cfg, [stat("u1", "match_wins", 10, "2026-11-20 10:00")])
    for value, when in ((3, "2026-11-20 11:00"), (15, "2026-11-21 10:00")):
        result = await flush(engine, cfg, [stat("u1", "match_wins", value, when)])
        assert result.completions == 0
    assert _keys(await completions(engine)) == [
        ("u1", "win-10", ts("2026-11-20 10:00"), None, None)
    ]


async def test_a_completed_row_without_completed_at_is_not_a_new_completion(engine):
    """The upstream hole (completed, completed_at NULL) is filled, but the status was kept."""
    cfg = config(goal("win-10", WINS, target=10))
    await put_row(engine, "u1", "win-10", progress=10, status="completed")
    result = await flush(engine, cfg, [stat("u1", "match_wins", 11, "2026-11-20 10:00")])
    assert (result.completions, await completions(engine)) == (0, [])


async def test_a_daily_goal_completes_once_a_day_claimed_or_not(engine):
    cfg = config(goal("daily-login", "login", type="daily"))
    await flush(engine, cfg, [login("u1", "2026-11-20 08:00")])
    same_day = await flush(engine, cfg, [login("u1", "2026-11-20 23:00")])
    assert same_day.completions == 0
    await put_row(engine, "u1", "daily-login", status="claimed", claimed_at=ts("2026-11-20 09:00"))
    next_day = await flush(engine, cfg, [login("u1", "2026-11-21 00:00:01")])
    assert next_day.completions == 1
    assert _keys(await completions(engine)) == [
        ("u1", "daily-login", ts("2026-11-20 08:00"), ts("2026-11-20"), ts("2026-11-21")),
        ("u1", "daily-login", ts("2026-11-21 00:00:01"), ts("2026-11-21"), ts("2026-11-22")),
    ]


async def test_a_rotating_goal_completes_once_per_period(engine):
    cfg = config(
        goal("daily-wins-2", WINS, target=2, progressMode="relative"),
        rotation=rotation("daily", reset=True, reselect=True),
    )
    days = [
        # (value, time): 10 sets the baseline 9, 11 completes (2 this period)
        (10, "2026-11-20 10:00"),
        (11, "2026-11-20 11:00"),
        (13, "2026-11-20 12:00"),  # same period, already completed
        (14, "2026-11-21 09:00"),  # next period: restarted, 1 so far
        (15, "2026-11-21 10:00"),  # completes the second period
    ]
    counts = []
    for value, when in days:
        counts.append(
            (await flush(engine, cfg, [stat("u1", "match_wins", value, when, 1)])).completions
        )
    assert counts == [0, 1, 0, 0, 1]
    assert _keys(await completions(engine)) == [
        ("u1", "daily-wins-2", ts("2026-11-20 11:00"), ts("2026-11-20"), ts("2026-11-21")),
        ("u1", "daily-wins-2", ts("2026-11-21 10:00"), ts("2026-11-21"), ts("2026-11-22")),
    ]


async def test_a_rotation_without_reset_keeps_its_completion_and_writes_no_other(engine):
    cfg = config(
        goal("season-5", "statistic:level", target=5, progressMode="relative"),
        rotation=rotation("monthly", reset=False, reselect=False),
    )
    await flush(engine, cfg, [stat("u1", "level", 6, "2026-10-30 10:00", inc=1)])
    await flush(engine, cfg, [stat("u1", "level", 10, "2026-10-31 10:00", inc=4)])
    later = await flush(engine, cfg, [stat("u1", "level", 20, "2026-11-02 10:00", inc=10)])
    assert later.completions == 0
    assert _keys(await completions(engine)) == [
        ("u1", "season-5", ts("2026-10-31 10:00"), ts("2026-10-01"), ts("2026-11-01"))
    ]


async def test_the_same_flush_twice_keeps_one_row_per_user_goal_and_period(engine):
    """A redelivery without its event ids (a replay of the same events): progress is
    already completed, and a row rebuilt from scratch finds the outbox row already there."""
    cfg = parse_config(
        {
            "challenges": [
                {
                    "challengeId": "c1",
                    "goals": [goal("win-10", WINS, target=10), goal("daily", type="daily")],
                },
                {
                    "challengeId": "c2",
                    "goals": [goal("weekly", target=1, progressMode="relative")],
                    "rotation": {
                        "enabled": True,
                        "type": "global",
                        **rotation("weekly", True, False),
                    },
                },
            ]
        }
    )
    events = [stat("u1", "match_wins", 10, "2026-11-20 10:00"), login("u1", "2026-11-20 11:00")]
    first = await flush(engine, cfg, events)
    again = await flush(engine, cfg, events)
    assert (first.completions, again.completions) == (3, 0)
    before = await completions(engine)
    # the progress rows rebuilt from scratch (an operator wiped them, then replayed)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM user_goal_progress"))
    rebuilt = await flush(engine, cfg, events)
    assert (await row(engine, "u1", "win-10")).status == "completed"
    assert rebuilt.completions == 0
    assert [(r.id, *k) for r, k in zip(await completions(engine), _keys(before), strict=True)] == [
        (r.id, *k) for r, k in zip(before, _keys(before), strict=True)
    ]


async def test_required_mode_writes_none_for_a_missing_row(engine):
    cfg = config(goal("win-10", WINS, target=10))
    result = await flush(
        engine,
        cfg,
        [stat("stranger", "match_wins", 40, "2026-11-20 10:00")],
        assignment_mode="required",
    )
    assert (result.missing, result.completions, await completions(engine)) == (1, 0, [])
    await put_row(engine, "known", "win-10")
    result = await flush(
        engine,
        cfg,
        [stat("known", "match_wins", 40, "2026-11-20 10:00")],
        assignment_mode="required",
    )
    assert result.completions == 1


# ------------------------------------------------------------ PostgreSQL forms

RACE = config(goal("logins-4", "login", target=4, type="increment"))


async def test_a_held_row_writes_none_until_it_is_written(pg_engine, pg_url):
    """Locking form: a row another transaction holds is carried ('c'), not completed."""
    await put_row(pg_engine, "held", "logins-4", progress=3, status="in_progress")
    writer = Writer(pg_engine, optimistic=False)
    deltas: dict = {}
    fold(
        deltas,
        login("held", "2026-11-20 10:00"),
        RACE.goals_for(source_of(login("x", "2026-11-20 10:00")), ""),
    )
    async with RowLock(pg_url, ["held"]):
        result = await writer.write(list(deltas.values()))
        assert [d.user_id for d in result.carried] == ["held"]
        assert (result.completions, await completions(pg_engine)) == (0, [])
    result = await writer.write(result.carried)
    assert result.completions == 1
    assert _keys(await completions(pg_engine)) == [
        ("held", "logins-4", ts("2026-11-20 10:00"), None, None)
    ]


async def test_an_optimistic_row_passed_by_writes_none_and_its_rerun_writes_one(pg_engine, pg_url):
    """The optimistic update passes by a row another session changed meanwhile ('r'):
    that pass writes no completion; the re-run on the new version completes it once."""
    await put_row(pg_engine, "racer", "logins-4", progress=1, status="in_progress")
    writer = Writer(pg_engine, lock_timeout="10s")
    event = login("racer", "2026-11-20 10:00")
    deltas: dict = {}
    fold(deltas, event, RACE.goals_for(source_of(event), ""))
    other = await asyncpg.connect(pg_url)
    try:
        tx = other.transaction()
        await tx.start()
        # our +1 on the old version (1 -> 2) would not complete; on the new one (3 -> 4) it does
        await other.execute("UPDATE user_goal_progress SET progress = 3 WHERE user_id = 'racer'")
        write = asyncio.create_task(writer.write(list(deltas.values())))
        await _wait_for_lock_wait(other)
        await tx.commit()
        result = await asyncio.wait_for(write, 10)
    finally:
        await other.close()
    assert result.statements == 2  # the pass-by, then the re-run
    assert result.completions == 1
    assert (await row(pg_engine, "racer", "logins-4")).status == "completed"
    assert len(await completions(pg_engine)) == 1


async def test_an_optimistic_row_claimed_meanwhile_writes_none(pg_engine, pg_url):
    await put_row(pg_engine, "racer", "logins-4", progress=3, status="in_progress")
    writer = Writer(pg_engine, lock_timeout="10s")
    event = login("racer", "2026-11-20 10:00")
    deltas: dict = {}
    fold(deltas, event, RACE.goals_for(source_of(event), ""))
    other = await asyncpg.connect(pg_url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(
            "UPDATE user_goal_progress SET progress = 4, status = 'claimed', "
            "completed_at = now(), claimed_at = now() WHERE user_id = 'racer'"
        )
        write = asyncio.create_task(writer.write(list(deltas.values())))
        await _wait_for_lock_wait(other)
        await tx.commit()
        result = await asyncio.wait_for(write, 10)
    finally:
        await other.close()
    assert (result.completions, await completions(pg_engine)) == (0, [])


async def test_the_one_statement_flush_writes_the_completion_of_its_rows_only(pg_engine, pg_url):
    """The whole-flush statement (event ids recorded with the rows): a completing row
    gets its outbox row in that one round trip; a held user's completion waits with it."""
    for user in ("one", "held"):
        await put_row(pg_engine, user, "logins-4", progress=3, status="in_progress")
    results = []
    flusher = Flusher(
        Writer(pg_engine, batch_size=100),
        event_id_window=600,
        interval=3600,
        carry_retry=0.02,
        on_flush=lambda _g, r, _t: results.append(r),
    )
    flusher.start()
    try:
        async with RowLock(pg_url, ["held"]) as lock:
            waits = []
            for user in ("one", "held"):
                event = login(user, "2026-11-20 10:00", event_id=f"once-{user}")
                generation, _ = await flusher.add(
                    event, RACE.goals_for(source_of(event), ""), urgent=True
                )
                waits.append((user, generation))
            assert await flusher.committed(waits[0][1], "one", 10) == Ack.COMMITTED
            assert [(r.round_trips, r.completions) for r in results] == [(1, 1)]
            assert [r.user_id for r in await completions(pg_engine)] == ["one"]
            await lock.release()
            assert await flusher.committed(waits[1][1], "held", 10) == Ack.COMMITTED
    finally:
        await flusher.close()
    assert sorted(r.user_id for r in await completions(pg_engine)) == ["held", "one"]
    assert sum(r.completions for r in results) == 2
