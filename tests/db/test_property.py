"""Property: buffering + one flush == one flush per event == the Python rules (oracle).

Random event sequences (time-ordered, spanning days and weeks, every goal family) are
written three ways; the resulting rows must be identical (database-clock columns aside),
and so must the goal-completed outbox: the completions the statements reported, and the
outbox rows (user, goal, completed_at, period), equal what the oracle says completed.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app.core.challenges import parse_config
from app.core.events import Event, EventType
from app.core.progress import Delta, Family, Row, applies, apply_write, completion_period, period_of
from app.core.settings import async_database_url
from app.pipeline import source_of
from tables.db import make_engine
from tests.helpers.support import (
    comparable,
    completion_keys,
    completions,
    flush,
    flush_each,
    rows,
    ts,
)


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


def oracle(events: list[Event]) -> tuple[dict, list[tuple]]:
    """The rules applied in Python, one event at a time: the rows, and the outbox (one
    completion per (user, goal, period), as its unique index keeps it)."""
    table: dict[tuple[str, str], Row] = {}
    marks: dict[tuple[str, str], object] = {}
    outbox: dict[tuple[str, str, object], tuple] = {}
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
            write = apply_write(current, delta, event.event_time, counted_day=marks.get(key))
            updated = write.row
            if delta.family is Family.COUNTER_DAILY:
                previous = marks.get(key)
                if previous is None or previous < delta.period_start:
                    marks[key] = delta.period_start
            if updated is not None:
                table[key] = updated
            if write.completes:
                assert updated is not None and updated.completed_at is not None
                period = completion_period(delta) or (None, None)
                outbox.setdefault(
                    (*key, period[0]),
                    (*key, goal.challenge_id, event.namespace, updated.completed_at, *period),
                )
    drop = {"updated_at"}
    found = {
        key: {k: getattr(r, k) for k in r.__dataclass_fields__ if k not in drop}
        for key, r in table.items()
    }
    return found, sorted(outbox.values())


def _project(found: dict) -> dict:
    keep = set(Row.__dataclass_fields__) - {"updated_at"}
    return {key: {k: v for k, v in r.items() if k in keep} for key, r in comparable(found).items()}


CLEAR = (
    "DELETE FROM user_goal_progress",
    "DELETE FROM challenge_daily_marks",
    "DELETE FROM challenge_goal_completions",
)


async def _three_ways(url: str, events: list[Event], optimistic: bool) -> list[tuple]:
    """(rows, completions reported, outbox rows) of one flush, then of one per event."""
    engine = make_engine(async_database_url("DATABASE_URL", url))
    try:
        results = []
        for runner in (flush, flush_each):
            async with engine.begin() as conn:
                for statement in CLEAR:
                    await conn.execute(text(statement))
            written = await runner(engine, CONFIG, events, optimistic=optimistic)
            outbox = completion_keys(await completions(engine))
            results.append((_project(await rows(engine)), written.completions, outbox))
        return results
    finally:
        await engine.dispose()


def _check(url: str, raw, optimistic: bool = True) -> None:
    events = _events(raw)
    buffered, sequential = asyncio.run(_three_ways(url, events, optimistic))
    expected_rows, expected_outbox = oracle(events)
    assert sequential[0] == expected_rows
    assert buffered[0] == sequential[0]
    assert sequential[2] == buffered[2] == expected_outbox
    # every completion the statements reported is an outbox row, and nothing else is
    assert sequential[1] == buffered[1] == len(expected_outbox)


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
