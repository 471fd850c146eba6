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

import orjson
from sqlalchemy import delete, exists, func, select, text, update
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


def _undelivered(sink: str) -> Any:
    return ~exists().where(deliveries.c.completion_id == outbox.c.id, deliveries.c.sink == sink)


# The publisher's statements per batch are constant texts: parsed once, no query built
# per batch (a multi-row insert built with `.values([...])` is compiled anew each time).


def _pending(probe_end: str) -> Any:
    return text(
        f"SELECT {', '.join(column.name for column in _COLUMNS)}"
        " FROM challenge_goal_completions AS c"
        " WHERE c.published_at IS NULL AND c.id > :after"
        " AND NOT EXISTS (SELECT 1 FROM challenge_completion_deliveries AS d"
        f" WHERE d.completion_id = c.id AND d.sink = :sink {probe_end})"
        " ORDER BY c.id LIMIT :limit"
    ).columns(*_COLUMNS)  # typed: SQLite's times come back as datetimes


# A read walks the unpublished ids in order from `after`, probes the delivery key of
# each, and stops at the limit, whatever the table statistics say. Planned from
# statistics taken while the tables were small (a fresh install; a backlog grown during
# a sink outage before autovacuum analyzed it), PostgreSQL would read and sort every
# unpublished row (a bitmap scan) and run the NOT EXISTS as a nested loop over every
# delivery row, so each read would cost more with every row delivered. `OFFSET 0` keeps
# the NOT EXISTS a probe per row; PLANNER, the settings of the publisher's sessions,
# keeps the ordered index walk.
PENDING = {"postgresql": _pending("OFFSET 0"), "sqlite": _pending("")}
PLANNER = {"enable_bitmapscan": "off", "plan_cache_mode": "force_custom_plan"}

# Marks are serialized across sinks and replicas by one transaction lock: two sinks
# marking the same ids at once would each count only its own uncommitted delivery row
# (READ COMMITTED), and neither would set `published_at`. Taken before the insert, the
# second mark's statements see the first's committed row. A mark is two short
# statements per batch, so the wait is brief.
MARK_LOCK_CLASS = 0x636D726B  # "cmrk"
_MARK_LOCK = text("SELECT pg_advisory_xact_lock(:lock_class, 0)")
_MARK = {
    "postgresql": (
        text(
            "INSERT INTO challenge_completion_deliveries (completion_id, sink, published_at)"
            " SELECT i, :sink, :now FROM unnest(CAST(:ids AS BIGINT[])) AS i"
            " ON CONFLICT DO NOTHING"
        ),
        text(
            "UPDATE challenge_goal_completions AS c SET published_at = :now"
            " WHERE c.id = ANY(CAST(:ids AS BIGINT[])) AND c.published_at IS NULL"
            " AND (SELECT count(*) FROM challenge_completion_deliveries AS d"
            " WHERE d.completion_id = c.id AND d.sink = ANY(CAST(:sinks AS TEXT[]))) = :wanted"
        ),
    ),
    "sqlite": (
        text(
            "INSERT INTO challenge_completion_deliveries (completion_id, sink, published_at)"
            " SELECT value, :sink, :now FROM json_each(:ids) WHERE true"
            " ON CONFLICT DO NOTHING"
        ),
        text(
            "UPDATE challenge_goal_completions SET published_at = :now"
            " WHERE id IN (SELECT value FROM json_each(:ids)) AND published_at IS NULL"
            " AND (SELECT count(*) FROM challenge_completion_deliveries AS d"
            " WHERE d.completion_id = challenge_goal_completions.id"
            " AND d.sink IN (SELECT value FROM json_each(:sinks))) = :wanted"
        ),
    ),
}


async def pending(
    conn: AsyncConnection, sink: str, *, after: int = 0, limit: int = 100
) -> list[Completion]:
    """The next unpublished completions `sink` has not accepted, in id order."""
    rows = await conn.execute(
        PENDING[conn.dialect.name], {"sink": sink, "after": after, "limit": limit}
    )
    return [Completion._make(row) for row in rows]


async def mark(
    conn: AsyncConnection, sink: str, ids: Sequence[int], sinks: Sequence[str], now: datetime
) -> None:
    """`sink` accepted `ids`; those every one of `sinks` has are published. Call in a
    transaction of its own: on PostgreSQL it holds the mark lock until it commits."""
    if not ids:
        return
    dialect = conn.dialect.name
    insert, publish = _MARK[dialect]
    if dialect == "postgresql":
        id_list, sink_list = list(ids), list(sinks)
        params: dict[str, Any] = {"ids": id_list, "sinks": sink_list}
    else:
        params = {
            "ids": orjson.dumps(list(ids)).decode(),
            "sinks": orjson.dumps(list(sinks)).decode(),
        }
    params.update(sink=sink, now=now, wanted=len(sinks))
    if dialect == "postgresql" and len(sinks) > 1:
        await conn.execute(_MARK_LOCK, {"lock_class": MARK_LOCK_CLASS})
    await conn.execute(insert, params)
    await conn.execute(publish, params)


async def settle(conn: AsyncConnection, sinks: Sequence[str], now: datetime) -> int:
    """Publish the completions every one of `sinks` already has: after a sink was taken
    out of COMPLETION_SINKS, the completions the others had delivered while it was
    behind are pending for none of them, and nothing else would mark them. Scans the
    unpublished rows once; the publisher calls it when it starts. Returns how many."""
    if not sinks:
        return 0
    delivered = (
        select(func.count())
        .where(deliveries.c.completion_id == outbox.c.id, deliveries.c.sink.in_(list(sinks)))
        .scalar_subquery()
    )
    if conn.dialect.name == "postgresql" and len(sinks) > 1:
        await conn.execute(_MARK_LOCK, {"lock_class": MARK_LOCK_CLASS})
    result = await conn.execute(
        update(outbox)
        .where(outbox.c.published_at.is_(None), delivered == len(sinks))
        .values(published_at=now)
    )
    return max(0, result.rowcount or 0)


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
