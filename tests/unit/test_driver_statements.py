"""The flush's statements in the driver's form, and driver errors classed like
SQLAlchemy's (an outage is retried, a deadlock retried then isolated, bad data isolated)."""

from __future__ import annotations

import asyncpg
import pytest

from tables.db import DATA, OUTAGE, RETRY, classify, positional
from tables.merge_sql import GOAL_COLUMNS, ROW_NAMES, build_statements


def test_named_parameters_become_numbered_once_each():
    sql, names = positional("SELECT :a, :b, CAST(:a AS int), 'x::text', now()::date, :c_1")
    assert sql == "SELECT $1, $2, CAST($1 AS int), 'x::text', now()::date, $3"
    assert names == ("a", "b", "c_1")


@pytest.mark.parametrize("mode", ["auto", "required"])
def test_the_merge_takes_every_source_column_once(mode):
    for statement in ("postgres", "optimistic"):
        sql, names = positional(getattr(build_statements("postgresql", mode), statement) or "")
        assert sorted(names) == sorted([*ROW_NAMES, *(column.name for column in GOAL_COLUMNS)])
        assert not any(f":{name}" in sql for name in names)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (asyncpg.exceptions.ConnectionDoesNotExistError("gone"), OUTAGE),
        (asyncpg.exceptions.InterfaceError("connection is closed"), OUTAGE),
        (asyncpg.exceptions.CannotConnectNowError("starting up"), OUTAGE),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock"), RETRY),
        (asyncpg.exceptions.QueryCanceledError("statement timeout"), RETRY),
        (asyncpg.exceptions.LockNotAvailableError("lock timeout"), RETRY),
        (asyncpg.exceptions.CheckViolationError("check_progress_non_negative"), DATA),
        (asyncpg.exceptions.StringDataRightTruncationError("too long"), DATA),
        (asyncpg.exceptions.UndefinedTableError("no table"), OUTAGE),
    ],
)
def test_driver_errors_are_classed_by_their_sqlstate(error, kind):
    assert classify(error) == kind
