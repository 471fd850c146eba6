"""Small builders shared by the tests: configs, events, running flushes, reading rows."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.challenges import ChallengeConfig, parse_config
from app.core.events import Event, EventType
from app.pipeline import source_of
from tables.flusher import Flusher
from tables.schema import challenge_goal_completions, user_goal_progress
from tables.write_result import WriteResult
from tables.writer import Writer

_ids = itertools.count(1)


def ts(text_: str) -> datetime:
    """'2026-11-20 10:00' -> naive UTC datetime."""
    return datetime.fromisoformat(text_)


def goal(goal_id: str, source: str = "login", target: int = 1, **extra: Any) -> dict:
    requirement: dict[str, Any] = {"targetValue": target, "operator": ">="}
    if source.startswith("statistic:"):
        requirement["statCode"] = source.split(":", 1)[1]
        source = "statistic"
    if "progressMode" in extra:
        requirement["progressMode"] = extra.pop("progressMode")
    return {
        "goalId": goal_id,
        "name": goal_id,
        "eventSource": source,
        "requirement": requirement,
        **extra,
    }


def config(*goals: dict, rotation: dict | None = None, challenge_id: str = "c1") -> ChallengeConfig:
    challenge: dict[str, Any] = {
        "challengeId": challenge_id,
        "name": challenge_id,
        "goals": list(goals),
    }
    if rotation is not None:
        challenge["rotation"] = {"enabled": True, "type": "global", **rotation}
    return parse_config({"challenges": [challenge]})


def rotation(schedule: str, reset: bool, reselect: bool) -> dict:
    return {
        "schedule": schedule,
        "onExpiry": {"resetProgress": reset, "allowReselection": reselect},
    }


def login(user: str, when: str, event_id: str | None = None, namespace: str = "mygame") -> Event:
    return Event(
        event_id=event_id or f"e{next(_ids)}",
        type=EventType.LOGIN,
        namespace=namespace,
        user_id=user,
        event_time=ts(when),
    )


def stat(
    user: str, code: str, value: int, when: str, inc: int = 0, event_id: str | None = None
) -> Event:
    return Event(
        event_id=event_id or f"e{next(_ids)}",
        type=EventType.STATISTIC,
        namespace="mygame",
        user_id=user,
        event_time=ts(when),
        stat_code=code,
        value=value,
        inc=inc,
    )


async def flush(
    engine: AsyncEngine,
    cfg: ChallengeConfig,
    events: Iterable[Event],
    *,
    assignment_mode: str = "auto",
    batch_size: int = 1000,
    optimistic: bool = True,
) -> WriteResult:
    """Buffer `events` and write them as ONE flush (`optimistic`: the PostgreSQL form
    that reads rows unlocked; False: the locking form)."""
    writer = Writer(
        engine, batch_size=batch_size, assignment_mode=assignment_mode, optimistic=optimistic
    )
    results: list[WriteResult] = []
    flusher = Flusher(writer, on_flush=lambda _g, result, _t: results.append(result))
    for event in events:
        goals = cfg.goals_for(source_of(event), event.stat_code)
        assert flusher.try_add(event, goals) is not None
    await flusher.flush_now()
    return results[0] if results else WriteResult()


async def flush_each(
    engine: AsyncEngine, cfg: ChallengeConfig, events: Sequence[Event], **kw
) -> WriteResult:
    """Live-like processing: one flush per event (their results summed)."""
    total = WriteResult()
    for event in events:
        total.merge(await flush(engine, cfg, [event], **kw))
    return total


async def completions(engine: AsyncEngine) -> list[Any]:
    """The goal-completed outbox, in id order."""
    async with engine.connect() as conn:
        found = await conn.execute(
            select(challenge_goal_completions).order_by(challenge_goal_completions.c.id)
        )
        return list(found)


def completion_keys(found: Sequence[Any]) -> list[tuple[Any, ...]]:
    """What a completion says, without its id and clock columns, sorted."""
    return sorted(
        (
            r.user_id,
            r.goal_id,
            r.challenge_id,
            r.namespace,
            r.completed_at,
            r.period_start,
            r.period_end,
        )
        for r in found
    )


async def rows(engine: AsyncEngine) -> dict[tuple[str, str], Any]:
    async with engine.connect() as conn:
        found = await conn.execute(select(user_goal_progress).order_by("user_id", "goal_id"))
        return {(r.user_id, r.goal_id): r for r in found}


async def row(engine: AsyncEngine, user: str, goal_id: str) -> Any:
    return (await rows(engine)).get((user, goal_id))


def comparable(found: dict) -> dict:
    """Rows without the database-clock columns, for comparing two runs."""
    drop = {"updated_at", "created_at", "assigned_at"}
    return {key: {k: v for k, v in r._mapping.items() if k not in drop} for key, r in found.items()}


async def put_row(engine: AsyncEngine, user: str, goal_id: str, **values: Any) -> None:
    """Create or change a row the way the backend would (assignment, claim, deactivate)."""
    base = {
        "user_id": user,
        "goal_id": goal_id,
        "challenge_id": values.pop("challenge_id", "c1"),
        "namespace": "mygame",
    }
    async with engine.begin() as conn:
        existing = await conn.execute(
            select(user_goal_progress.c.user_id).where(
                user_goal_progress.c.user_id == user, user_goal_progress.c.goal_id == goal_id
            )
        )
        if existing.first() is None:
            await conn.execute(user_goal_progress.insert().values(**base, **values))
        elif values:
            await conn.execute(
                user_goal_progress.update()
                .where(
                    user_goal_progress.c.user_id == user, user_goal_progress.c.goal_id == goal_id
                )
                .values(**values)
            )


async def count_statements(engine: AsyncEngine):
    """A list that collects every SQL statement the engine's connections send to the
    server (BEGIN/COMMIT and savepoints left out): on PostgreSQL from the driver's query
    log (the flush runs its hot statements on the driver directly), on SQLite from
    SQLAlchemy's cursor events."""
    from sqlalchemy import event

    seen: list[str] = []

    if engine.dialect.name != "postgresql":

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def _record(conn, cursor, statement, parameters, context, executemany):
            seen.append(statement)

        return seen

    def _log(record) -> None:
        query = record.query.strip()
        if not query.upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")):
            seen.append(query)

    watched: set[int] = set()

    def _watch(dbapi_conn, _record, _proxy) -> None:
        driver = dbapi_conn.driver_connection
        if id(driver) not in watched:
            driver.add_query_logger(_log)
            watched.add(id(driver))

    event.listen(engine.sync_engine, "checkout", _watch)
    return seen


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)
