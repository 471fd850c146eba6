"""Reading and marking the goal-completed outbox (docs/completions.md).

The merge writes `challenge_goal_completions` rows; a sink's pending rows are the ones
not published yet (`published_at IS NULL`, a partial index) that have no delivery row
for that sink. A delivery row is written once the sink accepted the event; the
completion's `published_at` once every configured sink has it. Clearing the marks of an
id range (`republish`) makes the publisher send those events again, with the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.completions import Completion
from tables.schema import challenge_completion_deliveries as deliveries
from tables.schema import challenge_goal_completions as outbox

_COLUMNS = (
    outbox.c.id,
    outbox.c.namespace,
    outbox.c.user_id,
    outbox.c.challenge_id,
    outbox.c.goal_id,
    outbox.c.completed_at,
    outbox.c.period_start,
    outbox.c.period_end,
    outbox.c.created_at,
)


def _completion(row: Any) -> Completion:
    return Completion(*row)


def _undelivered(sink: str) -> Any:
    return ~exists().where(deliveries.c.completion_id == outbox.c.id, deliveries.c.sink == sink)


async def pending(
    conn: AsyncConnection, sink: str, *, after: int = 0, limit: int = 100
) -> list[Completion]:
    """The next unpublished completions `sink` has not accepted, in id order."""
    query = (
        select(*_COLUMNS)
        .where(outbox.c.published_at.is_(None), outbox.c.id > after, _undelivered(sink))
        .order_by(outbox.c.id)
        .limit(limit)
    )
    return [_completion(row) for row in await conn.execute(query)]


async def mark(
    conn: AsyncConnection, sink: str, ids: Sequence[int], sinks: Sequence[str], now: datetime
) -> None:
    """`sink` accepted `ids`; those every one of `sinks` has are published."""
    if not ids:
        return
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    await conn.execute(
        dialect_insert(deliveries)
        .values([{"completion_id": i, "sink": sink, "published_at": now} for i in ids])
        .on_conflict_do_nothing()
    )
    have = (
        select(func.count())
        .where(deliveries.c.completion_id == outbox.c.id, deliveries.c.sink.in_(list(sinks)))
        .scalar_subquery()
    )
    await conn.execute(
        update(outbox)
        .where(outbox.c.id.in_(list(ids)), outbox.c.published_at.is_(None), have == len(sinks))
        .values(published_at=now)
    )


@dataclass(frozen=True)
class Backlog:
    depth: int  # completions not yet published to every sink
    oldest: datetime | None  # created_at of the oldest of them


async def backlog(conn: AsyncConnection) -> Backlog:
    query = select(func.count(), func.min(outbox.c.created_at)).where(
        outbox.c.published_at.is_(None)
    )
    depth, oldest = (await conn.execute(query)).one()
    return Backlog(int(depth), oldest)


async def sink_counts(conn: AsyncConnection, sink: str) -> tuple[int, int]:
    """(pending, delivered) completions of one sink."""
    waiting = select(func.count()).where(outbox.c.published_at.is_(None), _undelivered(sink))
    done = select(func.count()).where(deliveries.c.sink == sink)
    return int((await conn.execute(waiting)).scalar_one()), int(
        (await conn.execute(done)).scalar_one()
    )


async def known_sinks(conn: AsyncConnection) -> list[str]:
    return list((await conn.execute(select(deliveries.c.sink).distinct())).scalars())


async def of_user(conn: AsyncConnection, user_id: str, limit: int = 1000) -> list[Any]:
    """A user's completions with the sinks that have each (newest last)."""
    sinks = (
        select(func.group_concat(deliveries.c.sink))
        if conn.dialect.name == "sqlite"
        else select(func.string_agg(deliveries.c.sink, ","))
    )
    query = (
        select(
            *_COLUMNS,
            outbox.c.published_at,
            sinks.where(deliveries.c.completion_id == outbox.c.id).scalar_subquery().label("sinks"),
        )
        .where(outbox.c.user_id == user_id)
        .order_by(outbox.c.id)
        .limit(limit)
    )
    return list(await conn.execute(query))


async def republish(conn: AsyncConnection, first: int, last: int, sink: str | None) -> int:
    """Clear the delivery marks of ids first..last (of one sink, or all): the publisher
    sends them again, with the same ids. Returns the delivery marks cleared."""
    cleared = delete(deliveries).where(deliveries.c.completion_id.between(first, last))
    if sink is not None:
        cleared = cleared.where(deliveries.c.sink == sink)
    result = await conn.execute(cleared)
    await conn.execute(
        update(outbox).where(outbox.c.id.between(first, last)).values(published_at=None)
    )
    return max(0, result.rowcount or 0)
