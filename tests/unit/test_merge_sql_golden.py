"""The generated merge SQL, compared with checked-in golden files.

A change to the statement shows up as a readable diff of tests/unit/golden/*.sql in
review. After an intended change, regenerate them and commit the diff:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest -m unit tests/unit/test_merge_sql_golden.py

The rules themselves are proven elsewhere: tests/db/test_property.py (SQL == the Python
oracle on both databases) and tests/db/test_rules.py.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest

from app.core.challenges import Source, load_config
from app.core.events import INT_MAX, Event, EventType
from app.core.progress import Family, fold
from tables.merge_sql import (
    GOAL_REF,
    ROW_NAMES,
    SOURCE_COLUMNS,
    build_statements,
    postgres_params,
    source_row,
)

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parents[2]
CASES = [(dialect, mode) for dialect in ("postgresql", "sqlite") for mode in ("auto", "required")]


def render(dialect: str, mode: str) -> str:
    statements = build_statements(dialect, mode)
    parts = [
        f"-- {name}\n{sql};\n"
        for name, sql in (
            ("postgres", statements.postgres),
            ("claimed", statements.claimed),
            ("optimistic", statements.optimistic),
            ("completions", statements.completions),
            ("update", statements.update),
            ("insert", statements.insert),
            ("marks", statements.marks),
        )
        if sql is not None
    ]
    return "\n".join(parts)


@pytest.mark.parametrize(("dialect", "mode"), CASES)
def test_generated_sql_matches_golden_file(dialect: str, mode: str) -> None:
    path = GOLDEN / f"merge_{dialect}_{mode}.sql"
    text = render(dialect, mode)
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing {path}: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path.name} differs: review, then UPDATE_GOLDEN=1"


@pytest.mark.parametrize(("dialect", "mode"), CASES)
def test_constants_come_from_core(dialect: str, mode: str) -> None:
    """The family numbers and the int cap in the SQL are the ones app.core defines."""
    text = render(dialect, mode)
    assert f"family = {int(Family.DAILY)}" in text
    assert f"family <> {int(Family.COUNTER_DAILY)}" in text
    assert f"WHEN {int(Family.SET)} THEN value" in text
    assert str(INT_MAX) in text


def test_every_source_column_reaches_the_statement() -> None:
    pg = build_statements("postgresql", "auto").postgres
    sqlite = build_statements("sqlite", "auto").update
    assert pg is not None and sqlite is not None
    for i, column in enumerate(SOURCE_COLUMNS):
        if column.per_goal:  # one element per goal, picked by the row's reference
            assert f"(CAST(:{column.name} AS {column.sqltype}[]))[u.{GOAL_REF}]" in pg
        else:
            assert f"CAST(:{column.name} AS {column.sqltype}[])" in pg
        assert f"json_extract(value, '$[{i}]') AS {column.name}" in sqlite


def test_statement_is_pretty_printed() -> None:
    pg = build_statements("postgresql", "auto").postgres
    assert pg is not None
    longest = max(len(line) for line in pg.splitlines())
    assert pg.count("\n") > 100
    assert longest < 120, longest


def test_the_postgres_parameters_give_back_every_source_row():
    """The flush builds its parameters with fast_row and per-goal arrays; SOURCE_COLUMNS
    stays the definition: each row read back through its goal reference equals the
    column readers. Every goal of both shipped configs, logins and stats, several days."""
    deltas: dict = {}
    for path in (ROOT / "config" / "challenges.json", ROOT / "bench" / "challenges.json"):
        config = load_config(path)
        for n, goal in enumerate(config.goals):
            for day in range(3):
                moment = datetime(2026, 11, 16 + day, 10, n % 60)
                event = Event(
                    f"e{n}-{day}",
                    EventType.LOGIN if goal.source is Source.LOGIN else EventType.STATISTIC,
                    "ns",
                    f"user-{n % 3}",
                    moment,
                    goal.stat_code,
                    5 + day,
                    1,
                )
                fold(deltas, event, (goal,))
    assert len(deltas) > 20
    chunk = list(deltas.values())
    params = postgres_params(chunk)
    assert set(params) == {*ROW_NAMES, *(column.name for column in SOURCE_COLUMNS)}
    assert all(len(params[name]) == len(chunk) for name in ROW_NAMES)
    goals = {(id(d.goal), d.namespace) for d in chunk}
    assert len(params["goal_id"]) == len(goals) < len(chunk)
    single_steps = 0
    for i, delta in enumerate(chunk):
        ref = params[GOAL_REF][i] - 1  # 1-based, as SQL arrays are
        back = [
            params[column.name][ref] if column.per_goal else params[column.name][i]
            for column in SOURCE_COLUMNS
        ]
        assert back == source_row(delta)
        single_steps += params["steps"][i] is None
    assert 0 < single_steps < len(chunk)  # one step at the first event's time: no JSON
    assert postgres_params([]) == {name: [] for name in params}
