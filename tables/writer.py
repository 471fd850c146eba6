"""Writes one flush of buffered deltas in one transaction (SPEC §5.2).

- Deltas for the same (user, goal) but different periods (a replay spanning days) go
  in successive rounds, oldest period first; each round is written in key order, one
  statement per `DB_BATCH_SIZE` rows.
- Extra work (Kafka offsets) joins the same transaction through `extra`.
- A statement that fails because of the data (a poison row) makes the writer roll back
  and redo the flush with each chunk in a savepoint, bisecting failing chunks down to
  the single rows to dead-letter; everything else still commits.
- A transient failure (database down, deadlock) is raised as `TransientWriteError`; the
  caller keeps the batch and retries it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.progress import Delta
from tables.db import is_transient
from tables.event_ids import EventClaim
from tables.merge_sql import build_statements, postgres_params, sqlite_params
from tables.schema import challenge_dead_letters

log = logging.getLogger(__name__)

Extra = Callable[[AsyncConnection], Awaitable[None]]


class TransientWriteError(Exception):
    """The batch could not be written now; nothing of `remaining` was committed.

    `remaining` is None when nothing at all was committed (retry the whole batch); after
    a parallel write it holds the deltas of the shards that failed, and `committed` the
    result of those that did.
    """

    def __init__(
        self,
        message: str,
        remaining: list[Delta] | None = None,
        committed: WriteResult | None = None,
    ):
        super().__init__(message)
        self.remaining = remaining
        self.committed = committed


@dataclass
class WriteResult:
    rows: int = 0  # deltas offered
    updated: int = 0
    inserted: int = 0
    missing: int = 0  # ASSIGNMENT_MODE=required: no row to update
    duplicates: int = 0  # events already applied by an earlier flush (event-id claim)
    statements: int = 0
    poisoned: list[tuple[Delta, str]] = field(default_factory=list)

    def merge(self, other: WriteResult) -> None:
        self.rows += other.rows
        self.updated += other.updated
        self.inserted += other.inserted
        self.missing += other.missing
        self.duplicates += other.duplicates
        self.statements += other.statements
        self.poisoned.extend(other.poisoned)

    @property
    def skipped(self) -> int:
        """Guarded out: inactive, claimed, stale period, already counted today."""
        return self.rows - self.updated - self.inserted - self.missing - len(self.poisoned)


class _Poison(Exception):
    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


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


class Writer:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch_size: int = 1000,
        assignment_mode: str = "auto",
        parallelism: int = 1,
    ):
        self.engine = engine
        self.batch_size = batch_size
        self.dialect = engine.dialect.name
        self.statements = build_statements(self.dialect, assignment_mode)
        # SQLite has one writer; PostgreSQL can merge disjoint users on several connections.
        self.parallelism = parallelism if self.dialect == "postgresql" else 1

    async def write(
        self,
        deltas: Sequence[Delta],
        extra: Extra | None = None,
        *,
        source: str = "flush",
        claim: EventClaim | None = None,
    ) -> WriteResult:
        """Commit every delta (or dead-letter the poison ones) plus `extra`.

        With `extra` (Kafka positions) everything is one transaction. Without, a large
        flush is split by user into `parallelism` shards written concurrently, each its
        own transaction; a shard that fails is reported in TransientWriteError.remaining
        so only it is retried (the others are committed and must not be applied twice).
        With `claim`, the flush's event ids are recorded in the same transaction and
        events already applied (by another replica, or before a restart) are left out.
        """
        shards = min(self.parallelism, len(deltas) // self.batch_size)
        if extra is not None or shards < 2:
            return await self._write_one(deltas, extra, source, claim)
        parts: list[list[Delta]] = [[] for _ in range(shards)]
        for delta in deltas:
            parts[hash(delta.user_id) % shards].append(delta)
        outcomes = await asyncio.gather(
            *(
                self._write_one(
                    part,
                    None,
                    source,
                    None if claim is None else claim.only_users({d.user_id for d in part}),
                )
                for part in parts
            ),
            return_exceptions=True,
        )
        total, remaining, failure = WriteResult(), [], None
        for part, outcome in zip(parts, outcomes, strict=True):
            if isinstance(outcome, TransientWriteError):
                remaining.extend(part)
                failure = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                total.merge(outcome)
        if failure is not None:
            raise TransientWriteError(str(failure), remaining, total)
        return total

    async def _write_one(
        self,
        deltas: Sequence[Delta],
        extra: Extra | None,
        source: str,
        claim: EventClaim | None = None,
    ) -> WriteResult:
        try:
            return await self._transaction(deltas, extra, claim, isolate=False, source=source)
        except _Poison as poison:
            log.warning(
                "batch refused by the database, isolating bad rows",
                extra={"error": str(poison.cause)[:500], "rows": len(deltas)},
            )
        return await self._transaction(deltas, extra, claim, isolate=True, source=source)

    async def _transaction(
        self,
        deltas: Sequence[Delta],
        extra: Extra | None,
        claim: EventClaim | None,
        *,
        isolate: bool,
        source: str,
    ) -> WriteResult:
        result = WriteResult()
        try:
            async with self.engine.begin() as conn:
                if claim is not None:
                    duplicates = await claim.record(conn)
                    if duplicates:
                        result.duplicates = len(duplicates)
                        deltas = claim.refold(duplicates)
                result.rows = len(deltas)
                for round_deltas in rounds_of(deltas):
                    for start in range(0, len(round_deltas), self.batch_size):
                        chunk = round_deltas[start : start + self.batch_size]
                        if isolate:
                            await self._isolating(conn, chunk, result)
                        else:
                            await self._chunk(conn, chunk, result)
                if result.poisoned:
                    await conn.execute(
                        insert(challenge_dead_letters),
                        [
                            {
                                "source": source,
                                "user_id": d.user_id,
                                "goal_id": d.goal.goal_id,
                                "reason": reason[:2000],
                                "payload": repr(d),
                            }
                            for d, reason in result.poisoned
                        ],
                    )
                if extra is not None:
                    await extra(conn)
        except _Poison:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise TransientWriteError(str(exc)) from exc
            if isolate:
                raise  # not a row's fault and not transient: a bug; surface it
            raise _Poison(exc) from exc
        return result

    async def _isolating(
        self, conn: AsyncConnection, chunk: list[Delta], result: WriteResult
    ) -> None:
        try:
            async with conn.begin_nested():
                await self._chunk(conn, chunk, result)
        except Exception as exc:
            if is_transient(exc):
                raise
            if len(chunk) == 1:
                result.poisoned.append((chunk[0], str(getattr(exc, "orig", exc))))
                return
            middle = len(chunk) // 2
            await self._isolating(conn, chunk[:middle], result)
            await self._isolating(conn, chunk[middle:], result)

    async def _chunk(self, conn: AsyncConnection, chunk: list[Delta], result: WriteResult) -> None:
        if self.statements.postgres is not None:
            await self._postgres(conn, self.statements.postgres, chunk, result)
        else:
            await self._sqlite(conn, chunk, result)

    async def _postgres(
        self,
        conn: AsyncConnection,
        statement: str,
        chunk: list[Delta],
        result: WriteResult,
    ) -> None:
        by_key = {d.key: d for d in chunk}
        pending = chunk
        for _attempt in range(5):
            reported = (await conn.execute(text(statement), postgres_params(pending))).all()
            result.statements += 1
            again: list[Delta] = []
            for tag, user_id, goal_id in reported:
                if tag == "u":
                    result.updated += 1
                elif tag == "i":
                    result.inserted += 1
                elif tag == "m":
                    result.missing += 1
                else:
                    # 'r' raced insert: re-run with a fresh snapshot. 'c' held by another
                    # transaction: re-run too until issue 8's carry-over maps it to
                    # WriteResult.carried (after 5 tries the flush is retried with backoff).
                    again.append(by_key[(user_id, goal_id)])
            if not again:
                return
            pending = again
        raise TransientWriteError(f"{len(pending)} rows kept racing or stayed locked")

    async def _sqlite(self, conn: AsyncConnection, chunk: list[Delta], result: WriteResult) -> None:
        params = sqlite_params(chunk)
        statements = self.statements
        assert statements.update is not None and statements.marks is not None
        result.updated += len((await conn.execute(text(statements.update), params)).all())
        result.statements += 1
        if statements.insert is not None:
            result.inserted += len((await conn.execute(text(statements.insert), params)).all())
            result.statements += 1
        else:  # required mode: count the keys that have no row
            keys = [d.key for d in chunk]
            existing = await conn.execute(
                text(
                    "SELECT count(*) FROM user_goal_progress x JOIN json_each(:keys) k "
                    "ON x.user_id = json_extract(k.value, '$[0]') "
                    "AND x.goal_id = json_extract(k.value, '$[1]')"
                ),
                {"keys": orjson.dumps(keys).decode()},
            )
            result.missing += len(keys) - int(existing.scalar_one())
        await conn.execute(text(statements.marks), params)
        result.statements += 1
