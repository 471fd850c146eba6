"""Every use of a private part of SQLAlchemy (its asyncpg adapter), in one place.

- `AsyncAdapt_asyncpg_connection._transaction` / `_start_transaction()`: the flush's two
  hot statements (event ids, merge) run on the asyncpg connection directly
  (tables/db.py `driver_fetch`), because SQLAlchemy's execute path was the largest part
  of a small flush's CPU in a profile. SQLAlchemy begins its asyncpg transaction lazily,
  on the first statement it runs itself; a statement sent to the driver before that
  would run outside the transaction SQLAlchemy later commits. The adapter has no public
  way to begin it, so it is begun here the way SQLAlchemy's own cursor does (when
  `_transaction` is None), keeping SQLAlchemy's bookkeeping of COMMIT and ROLLBACK true.

Written against `PINNED`, checked by tests/unit/test_library_internals.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    AsyncAdapt_asyncpg_cursor,
)

from app.core.pins import pin_mismatch

PINNED = {"SQLAlchemy": "2.1.9"}

# (class, method, its parameter names, code of it this module depends on)
METHODS: tuple[tuple[type, str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        AsyncAdapt_asyncpg_connection,
        "_start_transaction",
        ("self",),
        ("assert self._transaction is None", "self._transaction = transaction"),
    ),
    # SQLAlchemy's own statements begin the transaction the same way
    (
        AsyncAdapt_asyncpg_cursor,
        "_prepare_and_execute",
        ("self", "operation", "parameters"),
        ("if adapt_connection._transaction is None:", "adapt_connection._start_transaction()"),
    ),
)
# (class, slot its instances carry): the adapter has no instance without a database
SLOTS: tuple[tuple[type, str], ...] = ((AsyncAdapt_asyncpg_connection, "_transaction"),)


def check_versions() -> str | None:
    """None when the installed SQLAlchemy is the pinned one, else what differs."""
    return pin_mismatch(__name__, PINNED)


async def begin_if_not_begun(adapted: Any) -> None:
    """Begin SQLAlchemy's transaction on its asyncpg adapter `adapted` when SQLAlchemy
    has not begun it yet (other adapters have no such state: nothing to do). Raises the
    driver's own error, as the driver's statements do."""
    if getattr(adapted, "_transaction", True) is not None:
        return
    try:
        await adapted._start_transaction()
    except Exception as exc:  # SQLAlchemy's adapter re-raises the driver's error
        cause = exc.__cause__
        raise (cause if isinstance(cause, Exception) else exc) from None
