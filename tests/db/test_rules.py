"""contract §4 (progress rules) and §5.2 (write guards), on PostgreSQL and SQLite.

Every test runs twice through the `engine` fixture: once per database.
"""

from __future__ import annotations

from sqlalchemy import text

from app.core.progress import fold
from app.pipeline import source_of
from tables.merge_sql import build_statements, postgres_params
from tests.helpers.support import (
    comparable,
    config,
    flush,
    flush_each,
    goal,
    login,
    put_row,
    rotation,
    row,
    rows,
    stat,
    ts,
)

WINS = "statistic:match_wins"


# ----------------------------------------------------------------- absolute


async def test_absolute_stat_takes_the_latest_value_not_the_sum(engine):
    cfg = config(goal("win-10", WINS, target=10))
    await flush(engine, cfg, [stat("u1", "match_wins", 3, "2026-11-20 10:00")])
    await flush(engine, cfg, [stat("u1", "match_wins", 7, "2026-11-20 10:01")])
    r = await row(engine, "u1", "win-10")
    assert (r.progress, r.status, r.completed_at) == (7, "in_progress", None)
    await flush(engine, cfg, [stat("u1", "match_wins", 10, "2026-11-20 10:02")])
    r = await row(engine, "u1", "win-10")
    assert (r.progress, r.status, r.completed_at) == (10, "completed", ts("2026-11-20 10:02"))


async def test_absolute_values_in_one_flush_keep_the_latest_by_event_time(engine):
    cfg = config(goal("win-10", WINS, target=10))
    await flush(
        engine,
        cfg,
        [
            stat("u1", "match_wins", 3, "2026-11-20 10:00"),
            stat("u1", "match_wins", 8, "2026-11-20 10:05"),
            stat("u1", "match_wins", 5, "2026-11-20 10:01"),  # late arrival, older
        ],
    )
    assert (await row(engine, "u1", "win-10")).progress == 8


async def test_negative_value_is_ignored(engine):
    cfg = config(goal("win-10", WINS, target=10))
    await flush(engine, cfg, [stat("u1", "match_wins", 4, "2026-11-20 10:00")])
    result = await flush(engine, cfg, [stat("u1", "match_wins", -3, "2026-11-20 10:01")])
    assert result.rows == 0
    assert (await row(engine, "u1", "win-10")).progress == 4
    await flush(engine, cfg, [stat("u2", "match_wins", -1, "2026-11-20 10:01")])
    assert await row(engine, "u2", "win-10") is None


async def test_completed_is_sticky_and_keeps_its_first_completed_at(engine):
    cfg = config(goal("win-10", WINS, target=10))
    await flush(engine, cfg, [stat("u1", "match_wins", 12, "2026-11-20 10:00")])
    await flush(engine, cfg, [stat("u1", "match_wins", 5, "2026-11-20 11:00")])
    await flush(engine, cfg, [stat("u1", "match_wins", 15, "2026-11-20 12:00")])
    r = await row(engine, "u1", "win-10")
    assert (r.progress, r.status, r.completed_at) == (15, "completed", ts("2026-11-20 10:00"))


async def test_value_reaching_the_target_then_dropping_in_one_flush_completes(engine):
    cfg = config(goal("win-10", WINS, target=10))
    await flush(
        engine,
        cfg,
        [
            stat("u1", "match_wins", 11, "2026-11-20 10:00"),
            stat("u1", "match_wins", 2, "2026-11-20 10:05"),
        ],
    )
    r = await row(engine, "u1", "win-10")
    assert (r.progress, r.status, r.completed_at) == (2, "completed", ts("2026-11-20 10:00"))


async def test_login_on_absolute_goal_counts_and_completes_at_the_crossing_event(engine):
    cfg = config(goal("logins-3", "login", target=3))
    await flush(engine, cfg, [login("u1", "2026-11-20 08:00")])
    await flush(
        engine,
        cfg,
        [login("u1", f"2026-11-20 0{h}:00") for h in (9,)]
        + [login("u1", "2026-11-20 10:00"), login("u1", "2026-11-20 11:00")],
    )
    r = await row(engine, "u1", "logins-3")
    assert (r.progress, r.status, r.completed_at) == (4, "completed", ts("2026-11-20 10:00"))


async def test_completed_row_without_completed_at_gets_one(engine):
    """A completed row never has a NULL completed_at (upstream hole)."""
    cfg = config(goal("win-10", WINS, target=10))
    await put_row(engine, "u1", "win-10", progress=10, status="completed")
    await flush(engine, cfg, [stat("u1", "match_wins", 11, "2026-11-20 10:00")])
    r = await row(engine, "u1", "win-10")
    assert (r.status, r.completed_at) == ("completed", ts("2026-11-20 10:00"))


async def test_huge_values_are_clamped_to_int(engine):
    cfg = config(
        goal("big", "statistic:score", target=5),
        goal("inc", "statistic:score", target=5, type="increment"),
    )
    await put_row(engine, "u1", "inc", progress=2_147_483_000)
    await flush(
        engine, cfg, [stat("u1", "score", 2_147_483_647, "2026-11-20 10:00", inc=2_147_483_647)]
    )
    assert (await row(engine, "u1", "big")).progress == 2_147_483_647
    assert (await row(engine, "u1", "inc")).progress == 2_147_483_647


# ----------------------------------------------------------------- increment


async def test_increment_adds_inc_or_one(engine):
    cfg = config(goal("kills", "statistic:kills", target=100, type="increment"))
    await flush(
        engine,
        cfg,
        [
            stat("u1", "kills", 40, "2026-11-20 10:00", inc=40),
            stat("u1", "kills", 40, "2026-11-20 10:01", inc=0),  # no inc: +1
        ],
    )
    await flush(engine, cfg, [stat("u1", "kills", 100, "2026-11-20 10:02", inc=60)])
    r = await row(engine, "u1", "kills")
    assert (r.progress, r.status, r.completed_at) == (101, "completed", ts("2026-11-20 10:02"))


# ----------------------------------------------------------------- guards


async def test_claimed_row_is_never_written(engine):
    cfg = config(
        goal("win-10", WINS, target=10), goal("logins", "login", target=5, type="increment")
    )
    claimed = dict(
        status="claimed",
        progress=10,
        completed_at=ts("2026-11-19 10:00"),
        claimed_at=ts("2026-11-19 11:00"),
    )
    await put_row(engine, "u1", "win-10", **claimed)
    await put_row(engine, "u1", "logins", **{**claimed, "progress": 5})
    before = comparable(await rows(engine))
    result = await flush(
        engine,
        cfg,
        [stat("u1", "match_wins", 3, "2026-11-20 10:00"), login("u1", "2026-11-20 10:00")],
    )
    assert result.skipped == 2
    assert comparable(await rows(engine)) == before


async def test_inactive_row_is_never_written(engine):
    cfg = config(goal("win-10", WINS, target=10))
    await put_row(engine, "u1", "win-10", progress=1, status="in_progress", is_active=False)
    await flush(engine, cfg, [stat("u1", "match_wins", 9, "2026-11-20 10:00")])
    r = await row(engine, "u1", "win-10")
    assert (r.progress, r.is_active) == (1, False)


async def test_required_assignment_mode_only_updates_existing_rows(engine):
    cfg = config(goal("win-10", WINS, target=10))
    await put_row(engine, "assigned", "win-10")
    result = await flush(
        engine,
        cfg,
        [
            stat("assigned", "match_wins", 4, "2026-11-20 10:00"),
            stat("stranger", "match_wins", 4, "2026-11-20 10:00"),
        ],
        assignment_mode="required",
    )
    assert (result.updated, result.inserted, result.missing) == (1, 0, 1)
    assert set(await rows(engine)) == {("assigned", "win-10")}
    assert (await row(engine, "assigned", "win-10")).status == "in_progress"


# ----------------------------------------------------------------- daily


async def test_daily_completes_once_per_utc_day_and_again_the_next_day(engine):
    cfg = config(goal("daily-login", "login", type="daily"))
    await flush(engine, cfg, [login("u1", "2026-11-20 08:00")])
    await flush(engine, cfg, [login("u1", "2026-11-20 23:59")])
    r = await row(engine, "u1", "daily-login")
    assert (r.progress, r.status, r.completed_at) == (1, "completed", ts("2026-11-20 08:00"))
    # the backend grants the reward
    await put_row(engine, "u1", "daily-login", status="claimed", claimed_at=ts("2026-11-20 09:00"))
    await flush(engine, cfg, [login("u1", "2026-11-21 00:00:01")])
    r = await row(engine, "u1", "daily-login")
    assert (r.progress, r.status, r.claimed_at) == (1, "completed", None)
    assert r.completed_at == ts("2026-11-21 00:00:01")


async def test_daily_stat_goal_completes_whatever_the_value(engine):
    cfg = config(goal("played-today", "statistic:matches", type="daily", target=1))
    await flush(engine, cfg, [stat("u1", "matches", -5, "2026-11-20 10:00")])
    r = await row(engine, "u1", "played-today")
    assert (r.progress, r.status) == (1, "completed")


async def test_increment_daily_counts_once_per_day_including_the_assignment_day(engine):
    cfg = config(goal("streak", "login", target=3, type="increment", daily=True))
    # The backend assigned the goal today: the row's updated_at is today.
    await put_row(
        engine,
        "u1",
        "streak",
        updated_at=ts("2026-11-20 07:00"),
        assigned_at=ts("2026-11-20 07:00"),
    )
    await flush(engine, cfg, [login("u1", "2026-11-20 08:00"), login("u1", "2026-11-20 09:00")])
    await flush(engine, cfg, [login("u1", "2026-11-20 20:00")])
    assert (await row(engine, "u1", "streak")).progress == 1
    await flush(engine, cfg, [login("u1", "2026-11-21 08:00")])
    await flush(engine, cfg, [login("u1", "2026-11-22 08:00"), login("u1", "2026-11-22 09:00")])
    r = await row(engine, "u1", "streak")
    assert (r.progress, r.status, r.completed_at) == (3, "completed", ts("2026-11-22 08:00"))


async def test_increment_daily_late_event_from_an_earlier_day_is_not_counted(engine):
    cfg = config(goal("streak", "login", target=5, type="increment", daily=True))
    await flush(engine, cfg, [login("u1", "2026-11-21 08:00")])
    await flush(engine, cfg, [login("u1", "2026-11-20 08:00")])
    assert (await row(engine, "u1", "streak")).progress == 1


# ----------------------------------------------------------------- relative


async def test_relative_baseline_is_value_minus_inc(engine):
    cfg = config(goal("wins-3", WINS, target=3, progressMode="relative"))
    await flush(engine, cfg, [stat("u1", "match_wins", 41, "2026-11-20 10:00", inc=1)])
    r = await row(engine, "u1", "wins-3")
    assert (r.progress, r.baseline_value, r.status) == (41, 40, "in_progress")
    await flush(engine, cfg, [stat("u1", "match_wins", 43, "2026-11-20 11:00", inc=2)])
    r = await row(engine, "u1", "wins-3")
    assert (r.progress, r.baseline_value, r.status) == (43, 40, "completed")
    assert r.completed_at == ts("2026-11-20 11:00")


async def test_relative_login_counts_every_event_of_one_flush(engine):
    cfg = config(goal("logins-5", "login", target=5, progressMode="relative"))
    await put_row(engine, "u1", "logins-5", progress=7)
    await flush(engine, cfg, [login("u1", f"2026-11-20 1{i}:00") for i in range(4)])
    r = await row(engine, "u1", "logins-5")
    assert (r.progress, r.baseline_value, r.status) == (11, 7, "in_progress")
    await flush(engine, cfg, [login("u1", "2026-11-20 15:00")])
    r = await row(engine, "u1", "logins-5")
    assert (r.progress - r.baseline_value, r.status) == (5, "completed")


# ----------------------------------------------------------------- rotation


async def test_rotation_with_reset_restarts_the_baseline_each_period(engine):
    cfg = config(
        goal("daily-wins-2", WINS, target=2, progressMode="relative"),
        rotation=rotation("daily", reset=True, reselect=True),
    )
    await flush(engine, cfg, [stat("u1", "match_wins", 10, "2026-11-20 10:00", inc=1)])
    await flush(engine, cfg, [stat("u1", "match_wins", 11, "2026-11-20 11:00", inc=1)])
    r = await row(engine, "u1", "daily-wins-2")
    assert (r.progress - r.baseline_value, r.status, r.expires_at) == (
        2,
        "completed",
        ts("2026-11-21 00:00"),
    )
    await flush(engine, cfg, [stat("u1", "match_wins", 12, "2026-11-21 09:00", inc=1)])
    r = await row(engine, "u1", "daily-wins-2")
    assert (r.progress, r.baseline_value, r.status, r.completed_at) == (12, 11, "in_progress", None)
    assert r.expires_at == ts("2026-11-22 00:00")


async def test_rotation_without_reset_keeps_baseline_and_completion(engine):
    cfg = config(
        goal("season-5", "statistic:level", target=5, progressMode="relative"),
        rotation=rotation("monthly", reset=False, reselect=False),
    )
    await flush(engine, cfg, [stat("u1", "level", 6, "2026-10-30 10:00", inc=1)])
    await flush(engine, cfg, [stat("u1", "level", 10, "2026-10-31 10:00", inc=4)])
    r = await row(engine, "u1", "season-5")
    assert (r.baseline_value, r.status, r.expires_at) == (5, "completed", ts("2026-11-01 00:00"))
    await flush(engine, cfg, [stat("u1", "level", 11, "2026-11-02 10:00", inc=1)])
    r = await row(engine, "u1", "season-5")
    assert (r.progress, r.baseline_value, r.status) == (11, 5, "completed")
    assert (r.completed_at, r.expires_at) == (ts("2026-10-31 10:00"), ts("2026-12-01 00:00"))


async def test_rotation_claimed_row_restarts_only_with_reselection(engine):
    weekly = goal("weekly", "login", target=1, progressMode="relative")
    frozen_cfg = config(weekly, rotation=rotation("weekly", reset=True, reselect=False))
    reselect_cfg = config(
        {**weekly, "goalId": "weekly-again"}, rotation=rotation("weekly", reset=True, reselect=True)
    )
    for cfg, goal_id in ((frozen_cfg, "weekly"), (reselect_cfg, "weekly-again")):
        await flush(engine, cfg, [login("u1", "2026-11-18 10:00")])  # a Wednesday
        await put_row(engine, "u1", goal_id, status="claimed", claimed_at=ts("2026-11-18 12:00"))
        await flush(engine, cfg, [login("u1", "2026-11-24 10:00")])  # next week
    frozen = await row(engine, "u1", "weekly")
    assert (frozen.status, frozen.progress, frozen.expires_at) == (
        "claimed",
        1,
        ts("2026-11-23 00:00"),
    )
    again = await row(engine, "u1", "weekly-again")
    assert (again.status, again.claimed_at, again.progress, again.baseline_value) == (
        "completed",
        None,
        2,
        1,
    )
    assert (again.completed_at, again.expires_at) == (
        ts("2026-11-24 10:00"),
        ts("2026-11-30 00:00"),
    )


async def test_rotation_late_event_from_an_older_period_does_not_move_the_row(engine):
    cfg = config(
        goal("daily-wins-2", WINS, target=2, progressMode="relative"),
        rotation=rotation("daily", reset=True, reselect=True),
    )
    await flush(engine, cfg, [stat("u1", "match_wins", 20, "2026-11-21 10:00", inc=1)])
    before = comparable(await rows(engine))
    await flush(engine, cfg, [stat("u1", "match_wins", 5, "2026-11-20 10:00", inc=1)])
    assert comparable(await rows(engine)) == before


async def test_backend_row_without_expires_at_is_in_the_period_of_its_updated_at(engine):
    cfg = config(
        goal("daily-wins-2", WINS, target=2, progressMode="relative"),
        rotation=rotation("daily", reset=True, reselect=True),
    )
    await put_row(
        engine,
        "u1",
        "daily-wins-2",
        progress=5,
        baseline_value=3,
        status="completed",
        completed_at=ts("2026-11-20 09:00"),
        updated_at=ts("2026-11-20 09:00"),
    )
    await flush(engine, cfg, [stat("u1", "match_wins", 6, "2026-11-20 22:00", inc=1)])
    r = await row(engine, "u1", "daily-wins-2")
    assert (r.baseline_value, r.status) == (3, "completed")  # same period: kept
    await put_row(engine, "u1", "daily-wins-2", expires_at=None, updated_at=ts("2026-11-20 22:00"))
    await flush(engine, cfg, [stat("u1", "match_wins", 7, "2026-11-21 01:00", inc=1)])
    r = await row(engine, "u1", "daily-wins-2")
    assert (r.baseline_value, r.status, r.completed_at) == (6, "in_progress", None)


# ----------------------------------------------------------------- replay


def _three_days() -> list:
    events = []
    for day in ("2026-11-18", "2026-11-19", "2026-11-20"):
        events += [
            login("u1", f"{day} 08:00"),
            stat(
                "u1",
                "match_wins",
                {"2026-11-18": 1, "2026-11-19": 3, "2026-11-20": 4}[day],
                f"{day} 09:00",
                inc=1,
            ),
            login("u1", f"{day} 20:00"),
            stat(
                "u1",
                "match_wins",
                {"2026-11-18": 2, "2026-11-19": 5, "2026-11-20": 6}[day],
                f"{day} 21:00",
                inc=1,
            ),
        ]
    return events


REPLAY_CONFIG = config(
    goal("daily-login", "login", type="daily"),
    goal("streak", "login", target=3, type="increment", daily=True),
    goal("logins", "login", target=5, type="increment"),
    goal("win-5", WINS, target=5),
    goal(
        "daily-wins",
        WINS,
        target=2,
        progressMode="relative",
        rotation={
            "enabled": True,
            "type": "global",
            "schedule": "daily",
            "onExpiry": {"resetProgress": True, "allowReselection": True},
        },
    ),
)


async def test_replay_of_three_past_days_in_one_flush_equals_live_processing(engine):
    events = _three_days()
    await flush_each(engine, REPLAY_CONFIG, events)
    live = comparable(await rows(engine))
    async with engine.begin() as conn:
        from sqlalchemy import text

        await conn.execute(text("DELETE FROM user_goal_progress"))
        await conn.execute(text("DELETE FROM challenge_daily_marks"))
    await flush(engine, REPLAY_CONFIG, events)
    assert comparable(await rows(engine)) == live
    assert live[("u1", "streak")]["progress"] == 3
    assert live[("u1", "daily-login")]["completed_at"] == ts("2026-11-20 08:00")
    assert live[("u1", "win-5")]["completed_at"] == ts("2026-11-19 21:00")


# ----------------------------------------------------------------- lock-skip contract


async def test_row_held_by_another_transaction_is_reported_and_left_alone(pg_engine):
    """`FOR UPDATE SKIP LOCKED`: a held row is tagged 'c', neither updated nor inserted,
    its daily mark not advanced; every other key of the chunk is written (counted 'U'
    updated and 'I' inserted)."""
    cfg = config(
        goal("streak", "login", target=5, type="increment", daily=True),
        goal("logins", "login", target=5),
    )
    await flush(
        pg_engine, cfg, [login("held", "2026-11-20 10:00"), login("free", "2026-11-20 10:00")]
    )
    deltas: dict = {}
    for user in ("held", "free", "new"):
        event = login(user, "2026-11-21 10:00")
        fold(deltas, event, cfg.goals_for(source_of(event), ""))
    chunk = sorted(deltas.values(), key=lambda d: d.key)
    statement = build_statements("postgresql", "auto").postgres
    assert statement is not None
    async with pg_engine.connect() as holder:
        await holder.execute(
            text("SELECT 1 FROM user_goal_progress WHERE user_id = 'held' FOR UPDATE")
        )
        async with pg_engine.begin() as conn:
            reported = (await conn.execute(text(statement), postgres_params(chunk))).all()
        await holder.rollback()
    assert sorted(tuple(r) for r in reported) == [
        ("C", 0, None, None),  # nothing completes: no goal-completed outbox row
        ("I", 2, None, None),
        ("U", 2, None, None),
        ("c", 1, "held", "logins"),
        ("c", 1, "held", "streak"),
    ]
    assert (await row(pg_engine, "free", "logins")).progress == 2
    assert (await row(pg_engine, "new", "logins")).progress == 1
    assert (await row(pg_engine, "held", "logins")).progress == 1
    assert (await row(pg_engine, "held", "streak")).progress == 1
    assert (await row(pg_engine, "free", "streak")).progress == 2
    async with pg_engine.connect() as conn:
        marks = dict(
            (await conn.execute(text("SELECT user_id, day FROM challenge_daily_marks"))).all()
        )
    assert marks["held"] == ts("2026-11-20 00:00")  # not advanced while held
    assert marks["free"] == marks["new"] == ts("2026-11-21 00:00")
