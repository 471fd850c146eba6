"""Rows that expire, deleted beside the flushes (never between them: deleting a minute
of expired rows can take longer than a flush, and every durable caller would wait)."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.clock import now_utc
from tables.event_ids import prune
from tables.schema import challenge_erasures

log = logging.getLogger(__name__)


async def purge_tombstones(engine: AsyncEngine, retention: float) -> int:
    """Forget erasure tombstones older than ERASURE_RETENTION (longer than any topic
    keeps the events they guard against; AGS user ids are not reused)."""
    cutoff = now_utc() - timedelta(seconds=retention)
    async with engine.begin() as conn:
        result = await conn.execute(
            delete(challenge_erasures).where(challenge_erasures.c.erased_at < cutoff)
        )
    return max(0, result.rowcount or 0)


async def prune_event_ids(engine: AsyncEngine) -> int:
    """Forget event ids older than the dedup window (their own transaction)."""
    async with engine.begin() as conn:
        return await prune(conn)


async def tidy(engine: AsyncEngine, *, event_ids: bool, erasure_retention: float | None) -> None:
    """One round of housekeeping; best effort (logged, never raised)."""
    try:
        if event_ids:
            removed = await prune_event_ids(engine)
            log.debug("expired event ids pruned", extra={"rows": removed})
        if erasure_retention is not None:
            purged = await purge_tombstones(engine, erasure_retention)
            if purged:
                log.info("expired erasure tombstones purged", extra={"rows": purged})
    except Exception as exc:
        log.warning("housekeeping failed", extra={"error": str(exc)[:300]})
