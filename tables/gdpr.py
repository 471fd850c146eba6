"""GDPR account deletion (docs/contract.md §1.1, §1.2): erase what we hold about one
user, and keep the user erased.

In one transaction, before the caller acknowledges (gRPC answers OK, Kafka acks the
record so its offset can be committed):
- `user_goal_progress`: the user's rows in the deployment's namespace;
- `challenge_daily_marks`: the user's increment+daily marks;
- `challenge_dead_letters`: the user's dead-lettered rows (they hold the buffered update);
- `challenge_goal_completions` and `challenge_completion_deliveries`: the user's
  goal-completed events, published or not (an unpublished one is not sent, but for a
  batch a publisher was already sending);
- a tombstone in `challenge_erasures`: every merge statement leaves the user's deltas
  out from its commit on (tables/merge_sql.py), on every replica and worker, whatever
  the source — live, redelivered, late or replayed. Kept ERASURE_RETENTION, then purged.
Not touched: `challenge_processed_events` (opaque event ids with an expiry, no user id;
gone within DEDUP_WINDOW) and `challenge_consumer_offsets` (no user data).

Flushes that began before the tombstone: the deletion locks `challenge_erasures`
exclusively, which waits for every flush transaction that read it (all of them do), then
deletes again what those committed meanwhile. In this process, besides: the user is
marked erased (events skipped on arrival), its buffered updates are dropped
(`Flusher.drop_user`) and a barrier waits for the flushes already taken.
A redelivered deletion deletes nothing more and is answered the same way.

Every deletion is logged once at info with `audit: gdpr_deletion` and the row counts
(never the message) and counted in `challenge_event_handler_gdpr_deletions_total`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from prometheus_client import Counter
from sqlalchemy import Delete, Insert, delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.clock import now_utc
from app.observability.metrics import PREFIX
from tables.flusher import Flusher
from tables.schema import (
    challenge_completion_deliveries,
    challenge_daily_marks,
    challenge_dead_letters,
    challenge_erasures,
    challenge_goal_completions,
    user_goal_progress,
)

log = logging.getLogger(__name__)

DELETIONS = Counter(
    f"{PREFIX}_gdpr_deletions_total",
    "GDPR account deletions: deleted, skipped (other namespace), invalid, failed (retried)",
    ["source", "outcome"],
)
ROWS_DELETED = Counter(
    f"{PREFIX}_gdpr_rows_deleted_total",
    "Rows erased by GDPR account deletions, per table (`buffer`: buffered updates dropped)",
    ["table"],
)


class BarrierTimeout(Exception):
    """Earlier flushes did not commit in time (database down): nothing was deleted yet."""


@dataclass(frozen=True)
class Erasure:
    user_id: str
    namespace: str
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows deleted
    buffered: int = 0

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def _statements(user_id: str, namespace: str) -> list[tuple[str, Delete]]:
    return [
        (
            "user_goal_progress",
            delete(user_goal_progress).where(
                user_goal_progress.c.user_id == user_id,
                user_goal_progress.c.namespace == namespace,
            ),
        ),
        (
            "challenge_daily_marks",
            delete(challenge_daily_marks).where(challenge_daily_marks.c.user_id == user_id),
        ),
        (
            "challenge_dead_letters",
            delete(challenge_dead_letters).where(challenge_dead_letters.c.user_id == user_id),
        ),
        # goal-completed events, published or not, and their delivery marks
        (
            "challenge_completion_deliveries",
            delete(challenge_completion_deliveries).where(
                challenge_completion_deliveries.c.completion_id.in_(
                    select(challenge_goal_completions.c.id).where(
                        challenge_goal_completions.c.user_id == user_id
                    )
                )
            ),
        ),
        (
            "challenge_goal_completions",
            delete(challenge_goal_completions).where(
                challenge_goal_completions.c.user_id == user_id
            ),
        ),
    ]


# Every flush statement reads challenge_erasures (tables/merge_sql.py), which holds a
# share lock on it until its transaction ends. Locking the table exclusively therefore
# waits until every flush that could still write with a snapshot from before the
# tombstone has ended, and makes the flushes that start meanwhile wait for the commit:
# they see the tombstone. Taken after a first delete, so that waiting for a row the
# backend holds (a claim, up to ~10 s) never happens while every flush waits on us; only
# the backend's table is deleted from before it: our own tables' rows (a daily mark, an
# outbox row) are what a flush that read the tombstones may still upsert, and deleting
# them first would make it wait for us while we wait for it. The wait for the lock is
# bounded: a long flush (a replay's) must not hold every new flush up behind us — the
# deletion fails as a retry-class error instead and is redelivered.
_LOCK_ERASURES = "LOCK TABLE challenge_erasures IN ACCESS EXCLUSIVE MODE"
_LOCK_WAIT = "SET LOCAL lock_timeout = '2s'"


async def _delete(
    conn: AsyncConnection, statements: list[tuple[str, Delete]], deleted: dict[str, int]
) -> None:
    for table, statement in statements:
        result = await conn.execute(statement)
        deleted[table] = deleted.get(table, 0) + max(0, result.rowcount or 0)


async def delete_rows(engine: AsyncEngine, user_id: str, namespace: str) -> dict[str, int]:
    """One transaction: every row of ours about the user, and the tombstone that keeps
    the user's later events out on every replica; returns rows per table."""
    statements = _statements(user_id, namespace)
    deleted: dict[str, int] = {}
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await _delete(conn, statements[:1], deleted)  # user_goal_progress
            await conn.execute(text(_LOCK_WAIT))
            await conn.execute(text(_LOCK_ERASURES))
        # everything (again, for what flushes committed while we waited for the lock)
        await _delete(conn, statements, deleted)
        await conn.execute(_tombstone(conn.dialect.name, user_id, namespace))
    return deleted


def _tombstone(dialect: str, user_id: str, namespace: str) -> Insert:
    """The tombstone; a repeated deletion moves its time (the retention restarts)."""
    values = {"user_id": user_id, "namespace": namespace, "erased_at": now_utc()}
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(challenge_erasures).values(**values)
    return statement.on_conflict_do_update(
        index_elements=["user_id", "namespace"], set_={"erased_at": values["erased_at"]}
    )


async def _barrier(flusher: Flusher, timeout: float | None) -> None:
    """Return once every flush taken before this call has committed."""
    waiter = asyncio.ensure_future(flusher.barrier())
    finished, _ = await asyncio.wait((waiter,), timeout=timeout)
    if not finished:
        waiter.cancel()  # cancels our wait only; the flush itself goes on
        raise BarrierTimeout("earlier flushes not committed in time")
    waiter.result()


async def erase_user(
    flusher: Flusher,
    user_id: str,
    namespace: str,
    *,
    source: str,
    barrier_timeout: float | None = None,
) -> Erasure:
    """Drop the user's buffered updates, wait out flushes in flight, delete their rows.

    Raises BarrierTimeout or a database error when the deletion did not happen (the
    caller answers UNAVAILABLE / retries); a retry is always safe.
    """
    started = time.perf_counter()
    flusher.erased.add(user_id)  # from now on its events are skipped when they arrive
    buffered = flusher.drop_user(user_id)
    try:
        await _barrier(flusher, barrier_timeout)
        buffered += flusher.drop_user(user_id)
        rows = await delete_rows(flusher.writer.engine, user_id, namespace)
        # a flush that met the rows our DELETE held carried them: drop them again
        buffered += flusher.drop_user(user_id)
    except BaseException:
        flusher.erased.discard(user_id)  # not erased after all: its events count again
        DELETIONS.labels(source, "failed").inc()
        raise
    erasure = Erasure(user_id, namespace, rows, buffered)
    DELETIONS.labels(source, "deleted").inc()
    for table, count in rows.items():
        if count:
            ROWS_DELETED.labels(table).inc(count)
    if buffered:
        ROWS_DELETED.labels("buffer").inc(buffered)
    log.info(
        "gdpr deletion",
        extra={
            "audit": "gdpr_deletion",
            "source": source,
            "user_id": user_id,
            "namespace": namespace,
            "rows_deleted": erasure.total,
            "rows": rows,
            "buffered_dropped": buffered,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        },
    )
    return erasure


def count_skipped(source: str) -> None:
    """A deletion for another namespace: acknowledged, nothing done."""
    DELETIONS.labels(source, "skipped_namespace").inc()


def count_invalid(source: str) -> None:
    DELETIONS.labels(source, "invalid").inc()
