"""Property: the arrival order of events within one flush does not change the rows.

The random sequences of tests/db/test_property.py (every goal family, days, weeks and a
month end), shuffled, written as ONE flush on SQLite and PostgreSQL, give the rows of
the same events in event-time order — equal times keeping their arrival order — which
the Python rules (the oracle) give applied one event at a time.
"""

from __future__ import annotations

import asyncio
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from app.core.events import Event
from app.core.settings import async_database_url
from tables.db import make_engine
from tests.db.test_property import CONFIG, _events, _project, event_strategy, oracle
from tests.helpers.support import flush, rows


async def _one_flush(url: str, runs: list[list[Event]], optimistic: bool) -> list[dict]:
    engine = make_engine(async_database_url("DATABASE_URL", url))
    try:
        found = []
        for events in runs:
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM user_goal_progress"))
                await conn.execute(text("DELETE FROM challenge_daily_marks"))
            await flush(engine, CONFIG, events, optimistic=optimistic)
            found.append(_project(await rows(engine)))
        return found
    finally:
        await engine.dispose()


def _check(url: str, raw, rng: random.Random, optimistic: bool = True) -> None:
    shuffled = _events(raw)
    rng.shuffle(shuffled)
    in_order = sorted(shuffled, key=lambda e: e.event_time)  # stable: ties keep arrival
    arrived, ordered = asyncio.run(_one_flush(url, [shuffled, in_order], optimistic))
    assert arrived == ordered
    assert arrived == oracle(in_order)[0]  # (rows, outbox)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.lists(event_strategy, min_size=2, max_size=14), rng=st.randoms(use_true_random=False))
def test_any_arrival_order_in_one_flush_gives_the_same_rows_sqlite(sqlite_url, raw, rng):
    _check(sqlite_url, raw, rng)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.lists(event_strategy, min_size=2, max_size=14), rng=st.randoms(use_true_random=False))
def test_any_arrival_order_in_one_flush_gives_the_same_rows_postgres(pg_url, raw, rng):
    _check(pg_url, raw, rng)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.lists(event_strategy, min_size=2, max_size=14), rng=st.randoms(use_true_random=False))
def test_any_arrival_order_in_one_flush_gives_the_same_rows_postgres_locking(pg_url, raw, rng):
    _check(pg_url, raw, rng, optimistic=False)
