"""The writer's last line of defence (contract §1.3): a delta holding a time out of bounds
(built past the decoders, as a bug or a future caller could) is dead-lettered as poison
with why, never written; every other row of the flush is. On both databases, in the
plain flush and in the one-statement form of gRPC flushes (event ids recorded)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.clock import now_utc
from app.core.events import Event, EventType
from app.core.time_bounds import CONTRACT_MIN, CONTRACT_SKEW
from app.pipeline import source_of
from tables.flusher import Flusher
from tables.schema import challenge_dead_letters, user_goal_progress
from tables.write_result import WriteResult
from tables.writer import Writer
from tests.helpers.hostile import ALL_KINDS
from tests.helpers.support import flush

GOOD = datetime(2026, 11, 20, 10, 0)
BAD = {
    "at-min": datetime.min,
    "year-1": datetime(1, 1, 1, 12),
    "just-before": CONTRACT_MIN - timedelta(microseconds=1),
    "year-9999": datetime(9999, 11, 30),
}
TIME_COLUMNS = ("completed_at", "claimed_at", "updated_at", "expires_at", "created_at")


def _events(user: str, moment: datetime, n: int = 0) -> list[Event]:
    return [
        Event(f"{user}-l{n}", EventType.LOGIN, "mygame", user, moment),
        Event(f"{user}-s{n}", EventType.STATISTIC, "mygame", user, moment, "s", 12, 3),
    ]


def _stream() -> list[Event]:
    events = _events("good", GOOD)
    for user, moment in BAD.items():
        events += _events(user, moment)
    # one user with a good day and a bad time: its plain goals hold both (refused whole),
    # its period goals of the good day are written
    events += _events("mixed", GOOD) + _events("mixed", datetime.min, 1)
    return events


async def _check(engine: AsyncEngine, result: WriteResult) -> None:
    async with engine.connect() as conn:
        found = (await conn.execute(select(user_goal_progress))).all()
        letters = (await conn.execute(select(challenge_dead_letters))).all()
    users = {r.user_id for r in found}
    assert users == {"good", "mixed"}
    assert len([r for r in found if r.user_id == "good"]) == 11  # every goal of ALL_KINDS
    assert {r.goal_id for r in found if r.user_id == "mixed"} == {
        "l-daily",
        "s-inc-daily",
        *(f"rel-{s}" for s in ("daily", "weekly", "monthly")),
        *(f"rel-login-{s}" for s in ("daily", "weekly", "monthly")),
    }
    latest = now_utc() + CONTRACT_SKEW
    for r in found:
        for column in TIME_COLUMNS:
            moment = getattr(r, column)
            if moment is None:
                continue
            if isinstance(moment, str):  # SQLite
                moment = datetime.fromisoformat(moment)
            # expires_at: the next period start, within a month of the bounds
            ceiling = latest + timedelta(days=31) if column == "expires_at" else latest
            assert CONTRACT_MIN <= moment <= ceiling, (r.user_id, r.goal_id, column, moment)
    assert {letter.user_id for letter in letters} == {*BAD, "mixed"}
    assert all("out of bounds" in letter.reason for letter in letters)
    assert len(result.poisoned) == len(letters)


async def test_a_delta_out_of_bounds_is_dead_lettered_and_the_rest_written(engine):
    result = await flush(engine, ALL_KINDS, _stream())
    await _check(engine, result)


async def test_the_one_statement_flush_refuses_them_too(pg_engine):
    """gRPC flushes record event ids and, when small, run as one statement: a delta out of
    bounds sends the flush the long way, where it is dead-lettered."""
    results: list[WriteResult] = []
    flusher = Flusher(
        Writer(pg_engine),
        on_flush=lambda _g, result, _t: results.append(result),
        event_id_window=600,
    )
    for event in _stream():
        goals = ALL_KINDS.goals_for(source_of(event), event.stat_code)
        assert flusher.try_add(event, goals) is not None
    await flusher.flush_now()
    (result,) = results
    await _check(pg_engine, result)
