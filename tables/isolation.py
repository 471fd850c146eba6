"""Poison isolation: a chunk the database refuses is bisected, each half in a savepoint,
down to the single rows to dead-letter; everything else still commits. A dead letter the
database cannot store as-is (NUL, invalid UTF-8) is stored escaped, so an isolating write
always terminates."""

from __future__ import annotations

import logging

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.progress import Delta
from tables.db import OUTAGE, RETRY, classify
from tables.event_ids import storable
from tables.merge_runner import MergeForm, MergeRunner
from tables.schema import challenge_dead_letters
from tables.write_result import TransientWriteError, WriteResult

log = logging.getLogger(__name__)


def _letter(source: str, delta: Delta, reason: str) -> dict[str, object]:
    return {
        "source": source,
        "user_id": delta.user_id,
        "goal_id": delta.goal.goal_id,
        "reason": reason[:2000],
        "payload": repr(delta),
    }


async def isolate_chunk(
    runner: MergeRunner,
    conn: AsyncConnection,
    chunk: list[Delta],
    result: WriteResult,
    forced: bool,
) -> None:
    """Merge `chunk` in a savepoint; on failure bisect it, and a single failing row is
    noted as poisoned. `forced`: a retry-class error (deadlock, timeout) counts as the
    row's fault too (the batch kept failing); an outage never does."""
    try:
        async with conn.begin_nested():
            await runner.chunk(conn, chunk, result, MergeForm.LOCKING)
    except Exception as exc:
        kind = exc.kind if isinstance(exc, TransientWriteError) else classify(exc)
        if kind == OUTAGE or (kind == RETRY and not forced):
            raise
        if len(chunk) == 1:
            result.poisoned.append((chunk[0], str(getattr(exc, "orig", exc))))
            return
        middle = len(chunk) // 2
        await isolate_chunk(runner, conn, chunk[:middle], result, forced)
        await isolate_chunk(runner, conn, chunk[middle:], result, forced)


async def store_dead_letters(conn: AsyncConnection, source: str, result: WriteResult) -> None:
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
