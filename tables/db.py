"""Engine creation and error classification: the only place that knows driver details."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# SQLSTATE classes worth retrying: connection, transaction rollback (serialization,
# deadlock), schema/SQL problems (not the data's fault), insufficient resources,
# operator intervention (shutdown), lock timeouts.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "40", "42", "53", "57", "55P03", "58")


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
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
        pool_pre_ping=True,
        pool_timeout=30,
        connect_args={
            "server_settings": {"timezone": "UTC", "jit": "off"},
            "timeout": 10,
            "command_timeout": 60,
        },
    )


def backoff_delay(attempt: int, *, base: float = 0.05, cap: float = 5.0) -> float:
    """Exponential backoff for retry loops that may run for hours (no float overflow)."""
    return min(cap, base * 2.0 ** min(attempt, 30))


def _sqlstate(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), exc):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if code:
            return str(code)
    return ""


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same batch later can succeed (outage, deadlock, ...).

    Everything else raised by the database for a batch is treated as caused by the
    data (a poison row) and isolated.
    """
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    code = _sqlstate(exc)
    if code:
        return code.startswith(_TRANSIENT_SQLSTATE_PREFIXES)
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    # A missing table or bad SQL is not the data's fault; keep the batch and retry.
    return isinstance(exc, ProgrammingError)
