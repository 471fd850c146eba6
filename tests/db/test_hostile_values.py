"""Hostile values (contract §2): increments and baselines at the INT edges are written, never
dead-lettered (an acknowledged event must not be lost to an int32 overflow), on
PostgreSQL and SQLite, and the row is what the rules (app.core.progress) say."""

from __future__ import annotations

from datetime import datetime

import pytest

from app.core.events import INT_MAX, INT_MIN, EventType, build_event
from app.core.progress import Delta, Row, apply_delta, fold
from app.pipeline import source_of
from tests.helpers.support import config, flush, goal, row

RELATIVE = goal("rel", "statistic:score", target=10, progressMode="relative")
ABSOLUTE = goal("abs", "statistic:score", target=10)
INCREMENT = goal("inc", "statistic:score", target=10, type="increment")


def event(value: float, inc: float, when: str):
    return build_event(
        event_type=EventType.STATISTIC,
        event_id="",
        namespace="mygame",
        user_id="u1",
        timestamp=when,
        received=None,
        stat_code="score",
        value=value,
        inc=inc,
    )


def oracle(cfg, events, before: dict[str, Row | None]) -> dict[str, Row | None]:
    """Rows after one flush of `events`, by the pure rules."""
    deltas: dict = {}
    for e in events:
        fold(deltas, e, cfg.goals_for(source_of(e), e.stat_code))
    out = dict(before)
    for delta in deltas.values():
        assert isinstance(delta, Delta)
        out[delta.goal.goal_id] = apply_delta(before.get(delta.goal.goal_id), delta, datetime.now())
    return out


@pytest.mark.parametrize(
    ("value", "inc"),
    [
        (5, -2_147_483_649),  # value - inc = 2^31 + 4: above INT
        (3e9, -1),  # value clamps to INT_MAX, minus -1
        (0, 2_147_483_648),  # value - inc below INT_MIN
        (float("inf"), float("-inf")),
        (-0.0, -0.0),
        (1e308, 1e308),
    ],
)
async def test_value_minus_inc_never_overflows_the_baseline(engine, value, inc):
    cfg = config(RELATIVE, ABSOLUTE, INCREMENT)
    events = [event(value, inc, "2026-11-20T10:00:00Z")]
    result = await flush(engine, cfg, events)
    assert result.poisoned == []
    expected = oracle(cfg, events, {})
    for goal_id in ("rel", "abs", "inc"):
        want, got = expected.get(goal_id), await row(engine, "u1", goal_id)
        if want is None:
            assert got is None, goal_id
            continue
        assert (got.progress, got.status, got.baseline_value) == (
            want.progress,
            want.status,
            want.baseline_value,
        ), goal_id
        assert INT_MIN <= got.progress <= INT_MAX


async def test_target_plus_a_baseline_near_int_max_does_not_overflow(engine):
    """A relative goal whose baseline is INT_MAX: target + baseline is formed in SQL."""
    cfg = config(RELATIVE)
    first = [event(INT_MAX, 0, "2026-11-20T10:00:00Z")]
    assert (await flush(engine, cfg, first)).poisoned == []
    assert (await row(engine, "u1", "rel")).baseline_value == INT_MAX
    second = [event(INT_MAX, 0, "2026-11-20T10:01:00Z")]
    assert (await flush(engine, cfg, second)).poisoned == []
    got = await row(engine, "u1", "rel")
    assert (got.progress, got.status, got.baseline_value) == (INT_MAX, "in_progress", INT_MAX)
