"""Engine creation and error classification: the only place that knows driver details."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tables.sqlalchemy_internals import begin_if_not_begun

# SQLSTATE classes that say "the database cannot take any batch now", never "this row is
# bad": connection, insufficient resources, operator intervention (shutdown), system
# errors, and schema/privilege problems (not the data's fault; an operator fixes them).
_OUTAGE_SQLSTATE_PREFIXES = ("08", "53", "57", "58", "42")
# Worth a few retries, then the batch is isolated row by row: serialization failures and
# deadlocks, lock timeouts, statement timeouts (a huge batch may pass when bisected).
_RETRY_SQLSTATE_PREFIXES = ("40", "55P03", "57014")

OUTAGE, RETRY, DATA = "outage", "retry", "data"


def make_engine(
    url: str, *, pool_size: int = 10, planner: Mapping[str, str] | None = None
) -> AsyncEngine:
    """`planner`: PostgreSQL planner settings for this engine's sessions (the outbox
    publisher's, tables/outbox.py)."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_size=1, max_overflow=2)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        # No ping per checkout (one round trip per flush): a dead connection fails the
        # flush as an outage, is invalidated, and the retry takes a fresh one.
        pool_timeout=30,
        connect_args={
            "server_settings": {"timezone": "UTC", "jit": "off", **(planner or {})},
            "timeout": 10,
            "command_timeout": 60,
        },
    )


_NAMED_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def positional(statement: str) -> tuple[str, tuple[str, ...]]:
    """A statement with `:name` parameters -> ($1, $2 ... form, names in order), for the
    driver's own execution (each name keeps one number, however often it appears)."""
    names: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${names.setdefault(match.group(1), len(names) + 1)}"

    return _NAMED_PARAMETER.sub(number, statement), tuple(names)


async def driver_fetch(conn: AsyncConnection, statement: str, args: list[Any]) -> list[Any]:
    """Run `statement` ($n form) on the asyncpg connection under `conn`, inside `conn`'s
    transaction; returns its rows.

    The flush's two hot statements (event ids, merge) go to the driver directly:
    SQLAlchemy's execute path was the largest part of a small flush's CPU in a profile.
    BEGIN, COMMIT, savepoints and the rare statements stay SQLAlchemy's. SQLAlchemy
    begins its transaction lazily on the first statement it runs, so it is begun here
    when not yet (tables/sqlalchemy_internals.py). A lost connection is invalidated
    here, as SQLAlchemy does on its own path, so the retry takes a fresh one from the
    pool.
    """
    raw = await conn.get_raw_connection()
    adapted: Any = raw.dbapi_connection
    try:
        if conn.in_transaction():
            await begin_if_not_begun(adapted)  # SQLAlchemy's own, begun lazily
        driver: Any = raw.driver_connection
        rows: list[Any] = await driver.fetch(statement, *args)
        return rows
    except Exception as exc:
        if classify(exc) == OUTAGE and not conn.invalidated:
            await conn.invalidate()
        raise


def backoff_delay(attempt: int, *, base: float = 0.05, cap: float = 5.0) -> float:
    """Exponential backoff for retry loops that may run for hours (no float overflow)."""
    return min(cap, base * 2.0 ** min(attempt, 30))


def sqlstate(exc: BaseException) -> str:
    """The SQLSTATE an error carries (SQLAlchemy's or the driver's), else \"\"."""
    orig = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), exc):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code:
            return str(code)
    return ""


def classify(exc: BaseException) -> str:
    """OUTAGE (retry until the database is back), RETRY (a few times, then isolate the
    rows) or DATA (the batch holds a row the database refuses: isolate it now)."""
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return OUTAGE
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.PostgresError):  # driver-level
        return _by_sqlstate(str(getattr(exc, "sqlstate", "") or ""), OUTAGE)
    if not isinstance(exc, DBAPIError):
        return DATA
    if exc.connection_invalidated:
        return OUTAGE
    code = sqlstate(exc)
    if code:
        return _by_sqlstate(code, DATA)
    if isinstance(exc, OperationalError | InterfaceError | ProgrammingError):
        return OUTAGE  # the driver's own connection and protocol errors
    return DATA


def _by_sqlstate(code: str, without: str) -> str:
    """The class of a SQLSTATE; `without`: the class of an error that carries none (the
    driver's own connection errors are outages)."""
    if not code:
        return without
    if code.startswith(_RETRY_SQLSTATE_PREFIXES):
        return RETRY
    return OUTAGE if code.startswith(_OUTAGE_SQLSTATE_PREFIXES) else DATA


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same batch later can succeed (outage, deadlock, ...).

    Everything else raised by the database for a batch is treated as caused by the
    data (a poison row) and isolated.
    """
    return classify(exc) != DATA
