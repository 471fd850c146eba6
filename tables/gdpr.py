"""GDPR account deletion (SPEC §1.1, §1.2): erase what we hold about one user.

Deleted in one transaction, before the caller acknowledges (gRPC answers OK, Kafka acks
the record so its offset can be committed):
- `user_goal_progress`: the user's rows in the deployment's namespace;
- `challenge_daily_marks`: the user's increment+daily marks;
- `challenge_dead_letters`: the user's dead-lettered rows (they hold the buffered update);
- `challenge_goal_completions` and `challenge_completion_deliveries`: the user's
  goal-completed events, published or not (an unpublished one is never sent).
Not touched: `challenge_processed_events` (opaque event ids with an expiry, no user id;
gone within DEDUP_WINDOW) and `challenge_consumer_offsets` (no user data).

So that nothing still buffered re-creates a row afterwards:
1. the user's buffered updates are dropped (`Flusher.drop_user`);
2. a barrier waits until every flush taken before now has committed (flushes run one at
   a time, so the commit of a fresh generation means the earlier ones are in);
3. updates that arrived meanwhile are dropped again, then the rows are deleted.
A redelivered deletion deletes nothing more and is answered the same way.

Other replicas (or other Kafka workers) may still hold an update for the user that was
in flight when the deletion arrived; with `resweep_after` the deletion runs once more
after that long (longer than any update can stay unwritten), and logs a warning if it
found something. Best effort: a process stopped before it runs does not run it.

Every deletion is logged once at info with `audit: gdpr_deletion` and the row counts
(never the message) and counted in `challenge_event_handler_gdpr_deletions_total`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from prometheus_client import Counter
from sqlalchemy import Delete, delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.observability.metrics import PREFIX
from tables.flusher import Flusher
from tables.schema import (
    challenge_completion_deliveries,
    challenge_daily_marks,
    challenge_dead_letters,
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


async def delete_rows(engine: AsyncEngine, user_id: str, namespace: str) -> dict[str, int]:
    """One transaction: every row of ours about the user; returns rows per table."""
    deleted: dict[str, int] = {}
    async with engine.begin() as conn:
        for table, statement in _statements(user_id, namespace):
            result = await conn.execute(statement)
            deleted[table] = max(0, result.rowcount or 0)
    return deleted


async def _barrier(flusher: Flusher, timeout: float | None) -> None:
    """Return once every flush taken before this call has committed."""
    waiter = asyncio.ensure_future(flusher.barrier())
    finished, _ = await asyncio.wait((waiter,), timeout=timeout)
    if not finished:
        waiter.cancel()  # cancels our wait only; the flush itself goes on
        raise BarrierTimeout("earlier flushes not committed in time")
    waiter.result()


_sweeps: set[asyncio.Task[None]] = set()


async def _resweep(engine: AsyncEngine, user_id: str, namespace: str, delay: float) -> None:
    await asyncio.sleep(delay)
    try:
        rows = await delete_rows(engine, user_id, namespace)
    except Exception as exc:
        log.warning("gdpr re-sweep failed", extra={"error": str(exc)[:300]})
        return
    if any(rows.values()):
        for table, count in rows.items():
            if count:
                ROWS_DELETED.labels(table).inc(count)
        log.warning(
            "gdpr re-sweep deleted rows written after the deletion",
            extra={"audit": "gdpr_resweep", "user_id": user_id, "rows": rows},
        )


def schedule_resweep(engine: AsyncEngine, user_id: str, namespace: str, delay: float) -> None:
    task = asyncio.get_running_loop().create_task(_resweep(engine, user_id, namespace, delay))
    _sweeps.add(task)
    task.add_done_callback(_sweeps.discard)


async def erase_user(
    flusher: Flusher,
    user_id: str,
    namespace: str,
    *,
    source: str,
    barrier_timeout: float | None = None,
    resweep_after: float | None = None,
) -> Erasure:
    """Drop the user's buffered updates, wait out flushes in flight, delete their rows.

    Raises BarrierTimeout or a database error when the deletion did not happen (the
    caller answers UNAVAILABLE / retries); a retry is always safe.
    """
    started = time.perf_counter()
    buffered = flusher.drop_user(user_id)
    try:
        await _barrier(flusher, barrier_timeout)
        buffered += flusher.drop_user(user_id)
        rows = await delete_rows(flusher.writer.engine, user_id, namespace)
        # a flush that met the rows our DELETE held carried them: drop them again
        buffered += flusher.drop_user(user_id)
    except BaseException:
        DELETIONS.labels(source, "failed").inc()
        raise
    erasure = Erasure(user_id, namespace, rows, buffered)
    if resweep_after is not None:
        schedule_resweep(flusher.writer.engine, user_id, namespace, resweep_after)
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
