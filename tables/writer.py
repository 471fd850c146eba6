"""Writes one flush of buffered deltas (SPEC §5.2): one transaction, or a few committed
apart when the flush is large (parts of disjoint users, each with its share of `extra`).

- Deltas for the same (user, goal) but different periods (a replay spanning days) go
  in successive rounds, oldest period first; each round is written in key order, one
  statement per `DB_BATCH_SIZE` rows.
- Extra work (Kafka offsets) joins the same transaction through `extra`.
- A statement that fails because of the data (a poison row) makes the writer roll back
  and redo the flush with each chunk in a savepoint, bisecting failing chunks down to
  the single rows to dead-letter; everything else still commits.
- A row another transaction holds locked (the backend's claim) is skipped, not waited
  for (PostgreSQL `SKIP LOCKED`): every delta of that user is left out of the commit and
  returned in `WriteResult.carried`, so the user's events stay whole and in order and
  their ids are not recorded as applied. With `extra` (Kafka positions, which must only
  cover what is committed) a held row raises `RowsLocked` instead: the caller waits.
- Flushes written the long way on PostgreSQL (not the one-statement form) read their
  rows without locking them and update each by its ctid and xmin (tables/merge_sql.py,
  the optimistic form): a row changed meanwhile is re-run, and a row another transaction
  holds ends the wait at `LOCK_TIMEOUT`; the flush is then redone in the locking form
  (SKIP LOCKED), which stays in use for `CONTENDED_FOR`.
- A transient failure (database down, deadlock) is raised as `TransientWriteError`; the
  caller keeps the batch and retries it. A dead letter the database cannot store as-is
  (NUL, invalid UTF-8) is stored escaped, so an isolating write always terminates.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

import orjson
from sqlalchemy import TextClause, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.clock import now_utc
from app.core.progress import Delta
from app.core.time_bounds import TimeBounds, refused_deltas
from tables.db import OUTAGE, RETRY, classify, driver_fetch, positional, sqlstate
from tables.event_ids import EventClaim, storable
from tables.merge_sql import build_statements, postgres_params, sqlite_params
from tables.schema import challenge_dead_letters

log = logging.getLogger(__name__)

Extra = Callable[[AsyncConnection], Awaitable[None]]


@runtime_checkable
class PartedExtra(Protocol):
    """Extra work that splits with the rows of a large flush: each part's rows and its
    share of the work commit together, apart from the other parts (Kafka positions, per
    group of partitions and the users whose events came from them)."""

    def __call__(self, conn: AsyncConnection) -> Awaitable[None]: ...

    def split(self, deltas: Sequence[Delta], ways: int) -> list[tuple[list[Delta], Extra]]:
        """At most `ways` parts; every delta in one of them, all of the work too."""
        ...


# Optimistic flushes: the longest wait for a row another transaction holds (the backend's
# claim holds one for up to ~10 s) before the flush is redone in the locking form, and
# how long the locking form is used after that.
LOCK_TIMEOUT = "50ms"
CONTENDED_FOR = 10.0
_LOCK_NOT_AVAILABLE = "55P03"


class TransientWriteError(Exception):
    """The batch could not be written now; nothing of `remaining` was committed.

    `remaining` is None when nothing at all was committed (retry the whole batch); after
    a write in parts it holds the deltas of the parts that failed, `remaining_extra`
    their share of the extra (only that is retried: the committed parts' Kafka positions
    must not be stored again, another worker may own those partitions by then), and
    `committed` the result of the parts that did commit.
    """

    def __init__(
        self,
        message: str,
        remaining: list[Delta] | None = None,
        committed: WriteResult | None = None,
        *,
        kind: str = OUTAGE,
        remaining_extra: Extra | None = None,
    ):
        super().__init__(message)
        self.remaining = remaining
        self.remaining_extra = remaining_extra
        self.committed = committed
        # OUTAGE: retry until the database is back; RETRY: a few times, then isolate.
        self.kind = kind


class RowsLocked(TransientWriteError):
    """A write with `extra` met rows held by another transaction. Nothing of its rows
    was committed (after a write in parts: nothing of `remaining`)."""


@dataclass
class WriteResult:
    rows: int = 0  # deltas offered
    updated: int = 0
    inserted: int = 0
    missing: int = 0  # ASSIGNMENT_MODE=required: no row to update
    duplicates: int = 0  # events already applied by an earlier flush (event-id claim)
    statements: int = 0  # merge statements
    round_trips: int = 0  # every statement sent, BEGIN and COMMIT included
    poisoned: list[tuple[Delta, str]] = field(default_factory=list)
    # Deltas of users with a row held by another transaction: not written, for the next flush.
    carried: list[Delta] = field(default_factory=list)
    dead_letters_escaped: int = 0
    dead_letters_lost: int = 0  # could not be stored even escaped (logged in full)
    abandoned: int = 0  # rows of a flush given up on (callers told to retry)

    def merge(self, other: WriteResult) -> None:
        self.rows += other.rows
        self.updated += other.updated
        self.inserted += other.inserted
        self.missing += other.missing
        self.duplicates += other.duplicates
        self.statements += other.statements
        self.round_trips += other.round_trips
        self.poisoned.extend(other.poisoned)
        self.carried.extend(other.carried)
        self.dead_letters_escaped += other.dead_letters_escaped
        self.dead_letters_lost += other.dead_letters_lost
        self.abandoned += other.abandoned

    @property
    def skipped(self) -> int:
        """Guarded out: inactive, claimed, stale period, already counted today."""
        return (
            self.rows
            - self.updated
            - self.inserted
            - self.missing
            - len(self.poisoned)
            - len(self.carried)
        )


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


def _together(extras: list[Extra]) -> Extra | None:
    """The failed parts' extras, run one after the other in the retry's transaction."""
    if len(extras) < 2:
        return extras[0] if extras else None

    async def run(conn: AsyncConnection) -> None:
        for extra in extras:
            await extra(conn)

    return run


def _tally(
    reported: Sequence[Sequence[str]], by_key: dict[tuple[str, str], Delta], result: WriteResult
) -> list[Delta]:
    """Count a merge statement's report into `result`; returns the deltas reported 'r'
    (inserted, or in the optimistic form changed, meanwhile by another writer)."""
    raced: list[Delta] = []
    for tag, user_id, goal_id in reported:
        if tag == "U":
            result.updated += int(user_id)
        elif tag == "I":
            result.inserted += int(user_id)
        elif tag == "m":
            result.missing += 1
        elif tag == "c":
            result.carried.append(by_key[(user_id, goal_id)])
        elif tag == "r":
            raced.append(by_key[(user_id, goal_id)])
    return raced


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


@functools.cache
def _clause(statement: str) -> TextClause:
    """Parsed once: `text()` scans the statement for bind parameters on every call."""
    return text(statement)


def _letter(source: str, delta: Delta, reason: str) -> dict[str, object]:
    return {
        "source": source,
        "user_id": delta.user_id,
        "goal_id": delta.goal.goal_id,
        "reason": reason[:2000],
        "payload": repr(delta),
    }


class Writer:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch_size: int = 1000,
        assignment_mode: str = "auto",
        parallelism: int = 1,
        optimistic: bool = True,
        lock_timeout: str = LOCK_TIMEOUT,
        time_bounds: TimeBounds | None = None,
    ):
        self.engine = engine
        # last line of defence: a delta holding a time out of bounds is never sent
        self.time_bounds = time_bounds or TimeBounds()
        self.batch_size = batch_size
        self.dialect = engine.dialect.name
        self.statements = build_statements(self.dialect, assignment_mode)
        # PostgreSQL: the merge in the driver's $n form, run on the driver directly
        self.merge, self.merge_names = positional(self.statements.postgres or "")
        # ... and a whole small gRPC flush (event ids included) as one statement
        self.single, self.single_names = positional(self.statements.claimed or "")
        # ... and the unlocked form for the flushes written the long way
        self.fast, self.fast_names = positional(self.statements.optimistic or "")
        self.optimistic = optimistic and self.statements.optimistic is not None
        self._set_lock_timeout = f"SET LOCAL lock_timeout = '{lock_timeout}'"
        self._contended_until = 0.0
        self.lock_fallbacks = 0  # optimistic flushes redone with row locks
        # SQLite has one writer; PostgreSQL can merge disjoint users on several connections.
        self.parallelism = parallelism if self.dialect == "postgresql" else 1

    async def write(
        self,
        deltas: Sequence[Delta],
        extra: Extra | None = None,
        *,
        source: str = "flush",
        claim: EventClaim | None = None,
        isolate: bool = False,
    ) -> WriteResult:
        """Commit every delta (or dead-letter the poison ones) plus `extra`.

        A large flush on PostgreSQL is written as up to `parallelism` parts at once, each
        its own transaction on its own connection: split by user without `extra`, and
        by the extra's own split when it has one (`PartedExtra`: Kafka positions, each
        part with the positions of the partitions its users came from); any other
        `extra` keeps the flush one transaction. A part that fails is reported in
        TransientWriteError.remaining (and its extra in remaining_extra) so only it is
        retried (the others are committed and must not be applied twice).
        With `claim`, the flush's event ids are recorded in the same transaction and
        events already applied (by another replica, or before a restart) are left out.
        `isolate`: go straight to row-by-row isolation (a batch that keeps failing).
        """
        ways = min(self.parallelism, len(deltas) // self.batch_size)
        parts: list[tuple[list[Delta], Extra | None]] = []
        if ways >= 2 and extra is None:
            buckets: list[list[Delta]] = [[] for _ in range(ways)]
            for delta in deltas:
                buckets[hash(delta.user_id) % ways].append(delta)
            parts = [(bucket, None) for bucket in buckets]
        elif ways >= 2 and isinstance(extra, PartedExtra):
            parts = list(extra.split(deltas, ways))
        if len(parts) < 2:
            return await self._write_one(deltas, extra, source, claim, isolate)
        return await self._write_parts(parts, source, claim, isolate)

    async def _write_parts(
        self,
        parts: list[tuple[list[Delta], Extra | None]],
        source: str,
        claim: EventClaim | None,
        isolate: bool,
    ) -> WriteResult:
        outcomes = await asyncio.gather(
            *(
                self._write_one(
                    part,
                    part_extra,
                    source,
                    None if claim is None else claim.only_users({d.user_id for d in part}),
                    isolate,
                )
                for part, part_extra in parts
            ),
            return_exceptions=True,
        )
        total, remaining, failures = WriteResult(), [], []
        extras: list[Extra] = []
        for (part, part_extra), outcome in zip(parts, outcomes, strict=True):
            if isinstance(outcome, Exception):
                remaining.extend(part)
                failures.append(outcome)
                if part_extra is not None:
                    extras.append(part_extra)
            elif isinstance(outcome, BaseException):
                raise outcome  # cancelled (shutdown gave up)
            else:
                total.merge(outcome)
        if not failures:
            return total
        bug = next((f for f in failures if not isinstance(f, TransientWriteError)), None)
        if bug is not None and len(failures) == len(parts):
            raise bug  # nothing committed: the caller isolates the whole flush
        # Retry only the failed parts, with only their extra. All of them held by another
        # transaction: RowsLocked (waited for like an outage). Otherwise the kind comes
        # from the other failures (a bug among them counts as a data error: a few
        # retries, then isolation), not from a held part's.
        others = [f for f in failures if not isinstance(f, RowsLocked)]
        error = TransientWriteError if others else RowsLocked
        outage = not others or any(getattr(f, "kind", RETRY) == OUTAGE for f in others)
        kind = OUTAGE if outage else RETRY
        message = str((others or failures)[0])
        if len(failures) == len(parts):  # nothing committed: retried whole, split again
            raise error(message, kind=kind)
        raise error(message, remaining, total, kind=kind, remaining_extra=_together(extras))

    async def _write_one(
        self,
        deltas: Sequence[Delta],
        extra: Extra | None,
        source: str,
        claim: EventClaim | None = None,
        isolate: bool = False,
    ) -> WriteResult:
        """One transaction; redone without the users whose rows turned out to be held."""
        if claim is not None and extra is None and not isolate and self.statements.claimed:
            single = await self._single(deltas, claim)
            if single is not None:
                return single
        held: set[str] = set()
        carried: list[Delta] = []
        while True:
            try:
                result = await self._attempt(deltas, extra, source, claim, isolate)
            except _Held as exc:
                # Leave those users out entirely (their events whole, their order kept).
                held |= exc.users
                carried.extend(d for d in deltas if d.user_id in exc.users)
                deltas = [d for d in deltas if d.user_id not in exc.users]
                if claim is not None:
                    claim = claim.without_users(exc.users)
                continue
            result.carried[:0] = carried
            result.rows += len(carried)
            return result

    async def _single(self, deltas: Sequence[Delta], claim: EventClaim) -> WriteResult | None:
        """A small flush (one chunk, one delta per key) in one statement outside a
        transaction: rows, daily marks and event ids together, held users carried whole.

        None when it does not apply or did not settle it (a duplicate id, a concurrent
        insert, a row the database refuses): the caller then writes the flush the long
        way, which handles each of those. A lost database is raised as for any write.
        """
        if len(deltas) > self.batch_size or refused_deltas(self.time_bounds, deltas, now_utc()):
            return None  # (a time out of bounds: dead-lettered the long way)
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
        try:
            async with self.engine.connect() as conn:
                reported = await driver_fetch(
                    conn, self.single, [params[name] for name in self.single_names]
                )
        except Exception as exc:
            kind = classify(exc)
            if kind == OUTAGE:
                raise TransientWriteError(str(exc), kind=kind) from exc
            return None
        result = WriteResult(rows=len(chunk), statements=1, round_trips=1)
        _tally(reported, {d.key: d for d in chunk}, result)  # no 'r': the verdict undoes it
        return result

    async def _attempt(
        self,
        deltas: Sequence[Delta],
        extra: Extra | None,
        source: str,
        claim: EventClaim | None,
        isolate: bool,
    ) -> WriteResult:
        if not isolate:
            try:
                if self.optimistic and time.monotonic() >= self._contended_until:
                    try:
                        return await self._transaction(
                            deltas, extra, claim, source=source, optimistic=True
                        )
                    except _LockWait:
                        log.info("rows held by another transaction: flushing with row locks")
                        self.lock_fallbacks += 1
                        self._contended_until = time.monotonic() + CONTENDED_FOR
                return await self._transaction(deltas, extra, claim, source=source)
            except _Poison as poison:
                log.warning(
                    "batch refused by the database, isolating bad rows",
                    extra={"error": str(poison.cause)[:500], "rows": len(deltas)},
                )
            return await self._transaction(deltas, extra, claim, isolate=True, source=source)
        # The batch kept failing (deadlocks, timeouts, a bug): every row that still fails
        # alone is dead-lettered, whatever the error, so the flush finishes.
        return await self._transaction(
            deltas, extra, claim, isolate=True, forced=True, source=source
        )

    async def _transaction(
        self,
        deltas: Sequence[Delta],
        extra: Extra | None,
        claim: EventClaim | None,
        *,
        source: str,
        isolate: bool = False,
        forced: bool = False,
        optimistic: bool = False,
    ) -> WriteResult:
        result = WriteResult()
        try:
            async with self.engine.begin() as conn:
                if optimistic:
                    await driver_fetch(conn, self._set_lock_timeout, [])
                if claim is not None:
                    duplicates = await claim.record(conn)
                    if duplicates:
                        result.duplicates = len(duplicates)
                        deltas = claim.refold(duplicates)
                result.rows = len(deltas)
                deltas = self._in_bounds(deltas, result)
                for round_deltas in rounds_of(deltas):
                    for start in range(0, len(round_deltas), self.batch_size):
                        chunk = round_deltas[start : start + self.batch_size]
                        if isolate:
                            await self._isolating(conn, chunk, result, forced)
                        else:
                            await self._chunk(conn, chunk, result, optimistic)
                if result.carried:
                    await self._hold(conn, deltas, claim, extra, result)
                if result.poisoned:
                    await self._dead_letters(conn, source, result)
                if extra is not None:
                    await extra(conn)
                result.round_trips += (
                    2 + optimistic + result.statements + (claim is not None) + bool(result.poisoned)
                )
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

    async def _isolating(
        self, conn: AsyncConnection, chunk: list[Delta], result: WriteResult, forced: bool
    ) -> None:
        try:
            async with conn.begin_nested():
                await self._chunk(conn, chunk, result)
        except Exception as exc:
            kind = exc.kind if isinstance(exc, TransientWriteError) else classify(exc)
            if kind == OUTAGE or (kind == RETRY and not forced):
                raise
            if len(chunk) == 1:
                result.poisoned.append((chunk[0], str(getattr(exc, "orig", exc))))
                return
            middle = len(chunk) // 2
            await self._isolating(conn, chunk[:middle], result, forced)
            await self._isolating(conn, chunk[middle:], result, forced)

    async def _dead_letters(self, conn: AsyncConnection, source: str, result: WriteResult) -> None:
        """Store the poison rows; one the database refuses as-is is stored escaped, and
        one that cannot be stored even then is logged in full, so the flush finishes."""
        rows = [_letter(source, d, reason) for d, reason in result.poisoned]
        try:
            async with conn.begin_nested():
                await conn.execute(insert(challenge_dead_letters), rows)
            return
        except Exception as exc:
            if classify(exc) == OUTAGE:
                raise
        for row in rows:
            escaped = {k: storable(str(v)) for k, v in row.items()}
            escaped["user_id"] = escaped["user_id"][:200]
            escaped["goal_id"] = escaped["goal_id"][:200]
            escaped["source"] = escaped["source"][:50]
            try:
                async with conn.begin_nested():
                    await conn.execute(insert(challenge_dead_letters), [escaped])
                result.dead_letters_escaped += 1
            except Exception as exc:
                if classify(exc) == OUTAGE:
                    raise
                result.dead_letters_lost += 1
                log.error(
                    "dead letter could not be stored",
                    extra={"letter": ascii(row)[:2000], "error": str(exc)[:300]},
                )

    async def _chunk(
        self,
        conn: AsyncConnection,
        chunk: list[Delta],
        result: WriteResult,
        optimistic: bool = False,
    ) -> None:
        if self.statements.postgres is not None:
            await self._postgres(conn, chunk, result, optimistic)
        else:
            await self._sqlite(conn, chunk, result)

    async def _postgres(
        self, conn: AsyncConnection, chunk: list[Delta], result: WriteResult, optimistic: bool
    ) -> None:
        by_key = {d.key: d for d in chunk}
        pending = chunk
        statement, names = (
            (self.fast, self.fast_names) if optimistic else (self.merge, self.merge_names)
        )
        for _attempt in range(5):
            params = postgres_params(pending)
            reported = await driver_fetch(conn, statement, [params[name] for name in names])
            result.statements += 1
            again = _tally(reported, by_key, result)  # 'r': re-run with a fresh snapshot
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
        result.updated += len((await conn.execute(_clause(statements.update), params)).all())
        result.statements += 1
        if statements.insert is not None:
            result.inserted += len((await conn.execute(_clause(statements.insert), params)).all())
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
        await conn.execute(_clause(statements.marks), params)
        result.statements += 1
