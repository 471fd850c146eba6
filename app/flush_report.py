"""What one flush did, in the metrics and the one info line per flush."""

from __future__ import annotations

import logging

from app.observability import metrics
from tables.generation import Generation
from tables.write_result import WriteResult

log = logging.getLogger("app.pipeline")


def erased_events(result: WriteResult) -> int:
    """Events of erased users the flush left out: per user, the most events any one of
    its rows held (an event moves several goals; the exact count is not kept)."""
    most: dict[str, int] = {}
    for delta in result.erased:
        most[delta.user_id] = max(most.get(delta.user_id, 0), delta.events)
    return sum(most.values())


def report_flush(generation: Generation, result: WriteResult, elapsed: float, pending: int) -> None:
    metrics.FLUSH_DURATION.observe(elapsed)
    metrics.DB_BATCH_SIZE.observe(result.rows)
    metrics.DB_ROUND_TRIPS.inc(result.round_trips)
    metrics.BUFFER_SIZE.set(pending)
    if result.duplicates:
        metrics.DUPLICATES.inc(result.duplicates)
    if result.missing:
        metrics.DROPPED_ROWS.labels("no_row").inc(result.missing)
    if result.skipped:
        metrics.DROPPED_ROWS.labels("guarded").inc(result.skipped)
    if result.carried:
        metrics.ROWS_CARRIED.inc(len(result.carried))
    if result.erased:
        metrics.DROPPED_ROWS.labels("erased").inc(len(result.erased))
        metrics.SKIPPED.labels("erased").inc(erased_events(result))
    for _delta, reason in result.poisoned:
        metrics.FAILED.labels("poison_row").inc()
        metrics.DEAD_LETTERED.labels("database", "poison_row").inc()
        log.error("row dead-lettered", extra={"reason": reason[:300]})
    if result.dead_letters_lost:
        metrics.FAILED.labels("dead_letter_failed").inc(result.dead_letters_lost)
    if result.abandoned:
        metrics.FAILED.labels("flush_abandoned").inc(result.abandoned)
    log.log(
        logging.ERROR if result.abandoned else logging.INFO,
        "flush given up" if result.abandoned else "flush committed",
        extra={
            "rows": result.rows,
            "events": generation.events,
            "inserted": result.inserted,
            "updated": result.updated,
            "skipped": result.skipped,
            "missing": result.missing,
            "duplicates": result.duplicates,
            "poisoned": len(result.poisoned),
            "carried": len(result.carried),
            "erased": len(result.erased),
            "statements": result.statements,
            "duration_ms": round(elapsed * 1000, 2),
        },
    )
