"""Property: buffering + one flush == one flush per event == the Python rules (oracle).

Random event sequences (time-ordered, spanning days and weeks, every goal family) are
written three ways; the resulting rows must be identical (database-clock columns aside).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app.core.challenges import parse_config
from app.core.events import Event, EventType
from app.core.progress import Delta, Family, Row, applies, apply_delta, period_of
from app.core.settings import async_database_url
from app.pipeline import source_of
from tables.db import make_engine
from tests.helpers.support import comparable, flush, flush_each, rows, ts


def _goal(goal_id, source, target=1, kind=None, mode=None, rotation=None, daily=False):
    requirement = {"targetValue": target}
    if ":" in source:
        source, requirement["statCode"] = source.split(":")
    if mode:
        requirement["progressMode"] = mode
    g = {"goalId": goal_id, "eventSource": source, "requirement": requirement}
    if kind:
        g["type"] = kind
    if daily:
        g["daily"] = True
    if rotation:
        schedule, reset, reselect = rotation
        g["rotation"] = {
            "enabled": True,
            "type": "global",
            "schedule": schedule,
            "onExpiry": {"resetProgress": reset, "allowReselection": reselect},
        }
    return g


CONFIG = parse_config(
    {
        "challenges": [
            {
                "challengeId": "prop",
                "goals": [
                    _goal("login-abs", "login", 3),
                    _goal("login-inc", "login", 4, kind="increment"),
                    _goal("login-daily", "login", kind="daily"),
                    _goal("login-streak", "login", 2, kind="increment", daily=True),
                    _goal(
                        "login-rel-weekly",
                        "login",
                        2,
                        mode="relative",
                        rotation=("weekly", True, True),
                    ),
                    _goal("wins-abs", "statistic:wins", 10),
                    _goal("wins-inc", "statistic:wins", 15, kind="increment"),
                    _goal("wins-streak", "statistic:wins", 6, kind="increment", daily=True),
                    _goal(
                        "wins-rel-daily",
                        "statistic:wins",
                        5,
                        mode="relative",
                        rotation=("daily", True, False),
                    ),
                    _goal("level-rel", "statistic:level", 4, mode="relative"),
                    _goal(
                        "level-rel-monthly",
                        "statistic:level",
                        4,
                        mode="relative",
                        rotation=("monthly", False, False),
                    ),
                    _goal("level-daily", "statistic:level", kind="daily"),
                ],
            }
        ]
    }
)

# A Friday evening: days, a week and a month end nearby; 14 events at most 4000 minutes
# apart stay in the past (later than receipt + EVENT_TIME_MAX_SKEW is not a real time).
START = ts("2026-10-23 20:00")

event_strategy = st.tuples(
    st.sampled_from(["u1", "u2"]),
    st.sampled_from(["login", "wins", "level"]),
    st.integers(min_value=-3, max_value=25),
    st.integers(min_value=0, max_value=6),
    st.sampled_from([0, 1, 30, 240, 1440, 4000]),  # minutes since the previous event
)


def _events(raw) -> list[Event]:
    events, moment = [], START
    for i, (user, kind, value, inc, gap) in enumerate(raw):
        moment += timedelta(minutes=gap)
        if kind == "login":
            events.append(Event(f"p{i}", EventType.LOGIN, "mygame", user, moment))
        else:
            events.append(
                Event(f"p{i}", EventType.STATISTIC, "mygame", user, moment, kind, value, inc)
            )
    return events


def oracle(events: list[Event]) -> dict:
    """The rules applied in Python, one event at a time."""
    table: dict[tuple[str, str], Row] = {}
    marks: dict[tuple[str, str], object] = {}
    for event in events:
        for goal in CONFIG.goals_for(source_of(event), event.stat_code):
            if not applies(goal, event):
                continue
            delta = Delta(
                goal,
                event.user_id,
                event.namespace,
                period_of(goal, event.event_time),
                event.event_time,
            )
            delta.add(event)
            key = (event.user_id, goal.goal_id)
            current = table.get(key)
            updated = apply_delta(current, delta, event.event_time, counted_day=marks.get(key))
            if delta.family is Family.COUNTER_DAILY:
                previous = marks.get(key)
                if previous is None or previous < delta.period_start:
                    marks[key] = delta.period_start
            if updated is not None:
                table[key] = updated
    drop = {"updated_at"}
    return {
        key: {k: getattr(r, k) for k in r.__dataclass_fields__ if k not in drop}
        for key, r in table.items()
    }


def _project(found: dict) -> dict:
    keep = set(Row.__dataclass_fields__) - {"updated_at"}
    return {key: {k: v for k, v in r.items() if k in keep} for key, r in comparable(found).items()}


async def _three_ways(url: str, events: list[Event], optimistic: bool) -> tuple[dict, dict]:
    engine = make_engine(async_database_url("DATABASE_URL", url))
    try:
        results = []
        for runner in (flush, flush_each):
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM user_goal_progress"))
                await conn.execute(text("DELETE FROM challenge_daily_marks"))
            await runner(engine, CONFIG, events, optimistic=optimistic)
            results.append(_project(await rows(engine)))
        return results[0], results[1]
    finally:
        await engine.dispose()


def _check(url: str, raw, optimistic: bool = True) -> None:
    events = _events(raw)
    buffered, sequential = asyncio.run(_three_ways(url, events, optimistic))
    assert buffered == sequential
    expected = oracle(events)
    assert sequential == expected


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.lists(event_strategy, min_size=1, max_size=14))
def test_buffered_equals_sequential_equals_oracle_sqlite(sqlite_url, raw):
    _check(sqlite_url, raw)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.lists(event_strategy, min_size=1, max_size=14))
def test_buffered_equals_sequential_equals_oracle_postgres(pg_url, raw):
    """The optimistic form (rows read unlocked, updated by ctid): large flushes."""
    _check(pg_url, raw)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.lists(event_strategy, min_size=1, max_size=14))
def test_buffered_equals_sequential_equals_oracle_postgres_locking(pg_url, raw):
    """The locking form (FOR UPDATE SKIP LOCKED): after a lock wait, and isolation."""
    _check(pg_url, raw, optimistic=False)
