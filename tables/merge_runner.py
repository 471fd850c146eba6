"""Runs the merge statements of tables/merge_sql.py on one connection: which form a
chunk is written in, and what its report says.

PostgreSQL runs one statement per chunk, in one of three forms: `LOCKING` (rows locked
with SKIP LOCKED), `OPTIMISTIC` (rows read unlocked, each updated by its version) and,
for a whole small gRPC flush, `SINGLE` (rows, daily marks and event ids in one statement
outside a transaction). SQLite runs the three statements of its form in order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from enum import Enum

import orjson
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.progress import Delta
from tables.db import OUTAGE, RETRY, classify, driver_fetch, positional
from tables.event_ids import EventClaim
from tables.merge_sql import MergeStatements, build_statements, postgres_params, sqlite_params
from tables.write_result import RETRY_AFTER_RACES, TransientWriteError, WriteResult


class MergeForm(Enum):
    LOCKING = "locking"
    OPTIMISTIC = "optimistic"
    SINGLE = "single"


@functools.cache
def _clause(statement: str) -> TextClause:
    """Parsed once: `text()` scans the statement for bind parameters on every call."""
    return text(statement)


def rounds_of(deltas: Sequence[Delta]) -> list[list[Delta]]:
    """Split so each round holds one delta per (user, goal), in period order."""
    ordered = sorted(
        deltas, key=lambda d: (d.user_id, d.goal.goal_id, d.period_start or datetime.min)
    )
    rounds: list[list[Delta]] = []
    previous: tuple[str, str] | None = None
    depth = 0
    for delta in ordered:
        key = (delta.user_id, delta.goal.goal_id)
        depth = depth + 1 if key == previous else 0
        previous = key
        if depth == len(rounds):
            rounds.append([])
        rounds[depth].append(delta)
    return rounds


_SQLITE_COUNT_EXISTING = (
    "SELECT count(*) FROM user_goal_progress x JOIN json_each(:keys) k "
    "ON x.user_id = json_extract(k.value, '$[0]') "
    "AND x.goal_id = json_extract(k.value, '$[1]')"
)


class MergeRunner:
    """The merge statements of one dialect and assignment mode, ready to run."""

    def __init__(self, dialect: str, assignment_mode: str, batch_size: int):
        self.dialect = dialect
        self.batch_size = batch_size
        self.statements: MergeStatements = build_statements(dialect, assignment_mode)
        # PostgreSQL: each form in the driver's $n form, run on the driver directly
        self.forms = {
            MergeForm.LOCKING: positional(self.statements.postgres or ""),
            MergeForm.OPTIMISTIC: positional(self.statements.optimistic or ""),
            MergeForm.SINGLE: positional(self.statements.claimed or ""),
        }

    @property
    def has_optimistic(self) -> bool:
        return self.statements.optimistic is not None

    @property
    def has_single(self) -> bool:
        return self.statements.claimed is not None

    def may_take_single(self, deltas: Sequence[Delta]) -> bool:
        """A flush small enough for the one-statement form (`single` checks the rest)."""
        return self.has_single and len(deltas) <= self.batch_size

    async def chunk(
        self, conn: AsyncConnection, chunk: list[Delta], result: WriteResult, form: MergeForm
    ) -> None:
        """Merge one chunk (one delta per key) inside `conn`'s transaction."""
        if self.statements.postgres is not None:
            await self._postgres(conn, chunk, result, form)
        else:
            await self._sqlite(conn, chunk, result)

    async def single(
        self, engine: AsyncEngine, deltas: Sequence[Delta], claim: EventClaim
    ) -> WriteResult | None:
        """A small flush (one chunk, one delta per key) in one statement outside a
        transaction: rows, daily marks and event ids together, held users carried whole.

        None when it does not apply or did not settle it (a duplicate id, a concurrent
        insert, a row the database refuses): the caller then writes the flush the long
        way, which handles each of those. A lost database is raised as for any write.
        """
        if len(deltas) > self.batch_size or not self.has_single:
            return None
        rounds = rounds_of(deltas)
        owned = claim.owned_ids()
        if len(rounds) != 1 or owned is None:
            return None
        chunk = rounds[0]
        ids, users, (now, expires) = owned
        params: dict[str, object] = {
            **postgres_params(chunk),
            "event_ids": ids,
            "event_users": users,
            "now": now,
            "expires": expires,
        }
        statement, names = self.forms[MergeForm.SINGLE]
        try:
            async with engine.connect() as conn:
                report = await driver_fetch(conn, statement, [params[name] for name in names])
        except Exception as exc:
            kind = classify(exc)
            if kind == OUTAGE:
                raise TransientWriteError(str(exc), kind=kind) from exc
            return None
        result = WriteResult(rows=len(chunk), statements=1, round_trips=1)
        result.tally(report, {d.key: d for d in chunk})  # no 'r': the verdict undoes it
        return result

    async def _postgres(
        self, conn: AsyncConnection, chunk: list[Delta], result: WriteResult, form: MergeForm
    ) -> None:
        by_key = {d.key: d for d in chunk}
        pending = chunk
        statement, names = self.forms[form]
        for _attempt in range(RETRY_AFTER_RACES):
            params = postgres_params(pending)
            report = await driver_fetch(conn, statement, [params[name] for name in names])
            result.statements += 1
            again = result.tally(report, by_key)  # raced: re-run with a fresh snapshot
            if not again:
                return
            pending = again
        raise TransientWriteError(
            f"{len(pending)} rows kept racing with concurrent writers (inserted or changed)",
            kind=RETRY,
        )

    async def _sqlite(self, conn: AsyncConnection, chunk: list[Delta], result: WriteResult) -> None:
        params = sqlite_params(chunk)
        statements = self.statements
        assert statements.update is not None and statements.marks is not None
        if statements.erased is not None:
            erased = (await conn.execute(_clause(statements.erased), params)).all()
            result.tally(erased, {d.key: d for d in chunk})
            result.statements += 1
        if statements.completions is not None:  # the outbox first: from the rows as they were
            result.completions += len(
                (await conn.execute(_clause(statements.completions), params)).all()
            )
            result.statements += 1
        result.updated += len((await conn.execute(_clause(statements.update), params)).all())
        result.statements += 1
        if statements.insert is not None:
            result.inserted += len((await conn.execute(_clause(statements.insert), params)).all())
            result.statements += 1
        else:  # required mode: count the keys that have no row
            keys = [d.key for d in chunk]
            existing = await conn.execute(
                _clause(_SQLITE_COUNT_EXISTING), {"keys": orjson.dumps(keys).decode()}
            )
            result.missing += len(keys) - int(existing.scalar_one())
        await conn.execute(_clause(statements.marks), params)
        result.statements += 1
