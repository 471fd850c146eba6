"""One flush (or one part of it) in one transaction, and what happens when it fails.

- Rows another transaction holds (the backend's claim) are skipped: every delta of
  those users is left out of the commit and returned in `WriteResult.carried`, so their
  events stay whole and in order and their ids are not recorded as applied. With
  `extra` (Kafka positions, which must only cover what is committed) a held row raises
  `RowsLocked` instead: the caller waits.
- On PostgreSQL a flush is first tried in the optimistic form (rows read unlocked,
  updated by version); a row another transaction holds ends the wait at `LOCK_TIMEOUT`,
  and the flush is redone in the locking form, which stays in use for `CONTENDED_FOR`.
- A statement that fails because of the data (a poison row) makes the writer roll back
  and redo the transaction with each chunk in a savepoint (tables/isolation.py).
- A transient failure (database down, deadlock) is raised as `TransientWriteError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.clock import now_utc
from app.core.progress import Delta
from app.core.time_bounds import TimeBounds, refused_deltas
from tables.db import OUTAGE, RETRY, classify, driver_fetch, sqlstate
from tables.event_ids import EventClaim
from tables.isolation import isolate_chunk, store_dead_letters
from tables.merge_runner import MergeForm, MergeRunner, rounds_of
from tables.write_result import Extra, RowsLocked, TransientWriteError, WriteResult

log = logging.getLogger(__name__)

# Optimistic flushes: the longest wait for a row another transaction holds (the backend's
# claim holds one for up to ~10 s) before the flush is redone in the locking form, and
# how long the locking form is used after that.
LOCK_TIMEOUT = "50ms"
CONTENDED_FOR = 10.0
_LOCK_NOT_AVAILABLE = "55P03"


class _Poison(Exception):
    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class _LockWait(Exception):
    """An optimistic flush waited too long for a row another transaction holds."""


class _Held(Exception):
    """Rolls back a transaction that wrote part of a held user's deltas."""

    def __init__(self, users: set[str]):
        super().__init__(f"{len(users)} users hold locked rows")
        self.users = users


@dataclass(frozen=True, slots=True)
class Batch:
    """What one transaction writes: the deltas, the work joining them, the event ids."""

    deltas: Sequence[Delta]
    extra: Extra | None
    claim: EventClaim | None
    source: str


class TransactionWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        runner: MergeRunner,
        time_bounds: TimeBounds,
        *,
        optimistic: bool = True,
        lock_timeout: str = LOCK_TIMEOUT,
    ):
        self.engine = engine
        self.runner = runner
        self.time_bounds = time_bounds
        self.optimistic = optimistic and runner.has_optimistic
        self._set_lock_timeout = f"SET LOCAL lock_timeout = '{lock_timeout}'"
        self._contended_until = 0.0
        self.lock_fallbacks = 0  # optimistic flushes redone with row locks

    async def write(self, batch: Batch, isolate: bool = False) -> WriteResult:
        """One transaction; redone without the users whose rows turned out to be held."""
        held_deltas: list[Delta] = []
        while True:
            try:
                result = await self._attempt(batch, isolate)
            except _Held as exc:
                # Leave those users out entirely (their events whole, their order kept).
                held_deltas.extend(d for d in batch.deltas if d.user_id in exc.users)
                claim = batch.claim
                batch = Batch(
                    [d for d in batch.deltas if d.user_id not in exc.users],
                    batch.extra,
                    None if claim is None else claim.without_users(exc.users),
                    batch.source,
                )
                continue
            result.carried[:0] = held_deltas
            result.rows += len(held_deltas)
            return result

    async def _attempt(self, batch: Batch, isolate: bool) -> WriteResult:
        if isolate:
            # The batch kept failing (deadlocks, timeouts, a bug): every row that still
            # fails alone is dead-lettered, whatever the error, so the flush finishes.
            return await self._transaction(batch, isolate=True, forced=True)
        try:
            if self.optimistic and time.monotonic() >= self._contended_until:
                try:
                    return await self._transaction(batch, form=MergeForm.OPTIMISTIC)
                except _LockWait:
                    log.info("rows held by another transaction: flushing with row locks")
                    self.lock_fallbacks += 1
                    self._contended_until = time.monotonic() + CONTENDED_FOR
            return await self._transaction(batch)
        except _Poison as poison:
            log.warning(
                "batch refused by the database, isolating bad rows",
                extra={"error": str(poison.cause)[:500], "rows": len(batch.deltas)},
            )
        return await self._transaction(batch, isolate=True)

    async def _transaction(
        self,
        batch: Batch,
        *,
        form: MergeForm = MergeForm.LOCKING,
        isolate: bool = False,
        forced: bool = False,
    ) -> WriteResult:
        optimistic = form is MergeForm.OPTIMISTIC
        try:
            async with self.engine.begin() as conn:
                if optimistic:
                    await driver_fetch(conn, self._set_lock_timeout, [])
                return await self._body(conn, batch, form, isolate, forced)
        except (_Poison, _Held, TransientWriteError):
            raise
        except Exception as exc:
            if optimistic and sqlstate(exc) == _LOCK_NOT_AVAILABLE:
                raise _LockWait() from exc
            kind = classify(exc)
            if kind in (OUTAGE, RETRY):
                raise TransientWriteError(str(exc), kind=kind) from exc
            if isolate:
                raise  # not a row's fault and not transient: a bug; surface it
            raise _Poison(exc) from exc

    async def _body(
        self, conn: AsyncConnection, batch: Batch, form: MergeForm, isolate: bool, forced: bool
    ) -> WriteResult:
        """Event ids, the rounds of chunks, held rows, dead letters, then the extra."""
        result = WriteResult()
        deltas, claim = batch.deltas, batch.claim
        if claim is not None:
            duplicates = await claim.record(conn)
            if duplicates or claim.repeats:
                result.duplicates = len(duplicates)
                deltas = claim.refold(duplicates)
        result.rows = len(deltas)
        deltas = self._in_bounds(deltas, result)
        size = self.runner.batch_size
        for round_deltas in rounds_of(deltas):
            for start in range(0, len(round_deltas), size):
                chunk = round_deltas[start : start + size]
                if isolate:
                    await isolate_chunk(self.runner, conn, chunk, result, forced)
                else:
                    await self.runner.chunk(conn, chunk, result, form)
        if result.carried:
            await self._hold(conn, deltas, claim, batch.extra, result)
        if result.poisoned:
            await store_dead_letters(conn, batch.source, result)
        if batch.extra is not None:
            await batch.extra(conn)
        optimistic = form is MergeForm.OPTIMISTIC
        result.round_trips += (
            2 + optimistic + result.statements + (claim is not None) + bool(result.poisoned)
        )
        return result

    def _in_bounds(self, deltas: Sequence[Delta], result: WriteResult) -> Sequence[Delta]:
        """The deltas whose every time is within the bounds (contract §1.3); any other is
        poison: dead-lettered with why, never written (no -infinity, no year 9999)."""
        refused = refused_deltas(self.time_bounds, deltas, now_utc())
        if not refused:
            return deltas
        result.poisoned.extend(refused)
        out = {id(delta) for delta, _ in refused}
        return [delta for delta in deltas if id(delta) not in out]

    async def _hold(
        self,
        conn: AsyncConnection,
        deltas: Sequence[Delta],
        claim: EventClaim | None,
        extra: Extra | None,
        result: WriteResult,
    ) -> None:
        """Some rows are held by another transaction. When nothing else of those users
        was written, commit the rest as is (their event ids un-recorded); otherwise roll
        back and redo without them. With `extra` (Kafka) wait instead."""
        users = {d.user_id for d in result.carried}
        if extra is not None:
            raise RowsLocked(f"{len(result.carried)} rows held by another transaction")
        theirs = sum(1 for d in deltas if d.user_id in users)
        if theirs != len(result.carried):
            raise _Held(users)
        if claim is not None:
            await claim.forget(conn, users)
