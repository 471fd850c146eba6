"""Event ids recorded in the flush transaction that applies them (gRPC redelivery).

The in-memory dedup window only covers one process. A redelivery that reaches another
replica, or arrives after a restart (the bridge never got our ack), would count twice on
counter goals. So each flush also records its event ids in `challenge_processed_events`
inside the same transaction as the rows; ids already recorded (and not expired) are
duplicates, and the flush's deltas are re-folded without those events before writing.
Two replicas racing on one id serialise on its primary key: one applies it, one skips.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.challenges import Goal
from app.core.clock import now_utc
from app.core.events import Event
from app.core.progress import BufferKey, Delta, fold
from tables.db import driver_fetch, positional

_RECORD = {
    "postgresql": (
        "INSERT INTO challenge_processed_events (event_id, expires_at) "
        "SELECT u.id, CAST(:expires AS TIMESTAMP) FROM unnest(CAST(:ids AS TEXT[])) AS u(id) "
        "ORDER BY u.id "
        "ON CONFLICT (event_id) DO UPDATE SET expires_at = excluded.expires_at "
        "WHERE challenge_processed_events.expires_at < CAST(:now AS TIMESTAMP) "
        "RETURNING event_id"
    ),
    "sqlite": (
        "INSERT INTO challenge_processed_events (event_id, expires_at) "
        "SELECT value, :expires FROM json_each(:ids) WHERE true ORDER BY value "
        "ON CONFLICT (event_id) DO UPDATE SET expires_at = excluded.expires_at "
        "WHERE challenge_processed_events.expires_at < :now "
        "RETURNING event_id"
    ),
}
_PRUNE = "DELETE FROM challenge_processed_events WHERE expires_at < :now"
_FORGET = {
    "postgresql": "DELETE FROM challenge_processed_events WHERE event_id = ANY(CAST(:ids AS TEXT[]))",
    "sqlite": "DELETE FROM challenge_processed_events WHERE event_id IN (SELECT value FROM json_each(:ids))",
}

_SQLITE_RECORD = text(_RECORD["sqlite"])  # parsed once (hot path)
# PostgreSQL: run on the driver directly (tables/db.py driver_of), in $n form
_PG_RECORD, _PG_RECORD_NAMES = positional(_RECORD["postgresql"])


def storable(text_: str) -> str:
    """`text_` as PostgreSQL text can hold it: NUL and lone surrogates escaped (rare)."""
    if "\x00" not in text_:
        try:
            text_.encode()
            return text_
        except UnicodeEncodeError:
            pass
    return text_.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


def _stored_ids(ids: list[str]) -> dict[str, str]:
    """id as stored -> id as the event carries it (identity unless escaping was needed)."""
    joined = "".join(ids)
    if joined.isascii() and "\x00" not in joined:
        return {i: i for i in ids}
    return {storable(i): i for i in ids}


def _bind_time(dialect: str, moment: datetime) -> datetime | str:
    return moment if dialect == "postgresql" else moment.strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass
class EventClaim:
    """The events of (part of) one flush, to record and, on duplicates, re-fold."""

    log: Sequence[tuple[Event, tuple[Goal, ...]]]
    window: float
    # ids this claim recorded itself (as stored), set by `record`
    fresh: dict[str, str] = field(default_factory=dict)

    def only_users(self, users: set[str]) -> EventClaim:
        return EventClaim([item for item in self.log if item[0].user_id in users], self.window)

    def without_users(self, users: set[str]) -> EventClaim:
        return EventClaim([item for item in self.log if item[0].user_id not in users], self.window)

    @property
    def repeats(self) -> bool:
        """One id more than once in the flush (copies that both waited for buffer space
        and joined the same generation): the flush must be re-folded with the first."""
        ids = [event.event_id for event, _ in self.log if event.event_id]
        return len(ids) != len(set(ids))

    async def record(self, conn: AsyncConnection) -> set[str]:
        """Record the ids; returns those already recorded within the window."""
        ids = list(dict.fromkeys(event.event_id for event, _ in self.log if event.event_id))
        if not ids:
            return set()
        stored = _stored_ids(ids)
        dialect = conn.dialect.name
        now = now_utc()
        keys = list(stored)
        params = {
            "ids": keys if dialect == "postgresql" else orjson.dumps(keys).decode(),
            "now": _bind_time(dialect, now),
            "expires": _bind_time(dialect, now + timedelta(seconds=self.window)),
        }
        if dialect == "postgresql":
            rows = await driver_fetch(conn, _PG_RECORD, [params[n] for n in _PG_RECORD_NAMES])
        else:
            rows = list((await conn.execute(_SQLITE_RECORD, params)).all())
        fresh = {row[0] for row in rows}
        self.fresh = {key: stored[key] for key in fresh}
        return {stored[key] for key in keys if key not in fresh}

    def owned_ids(self) -> tuple[list[str], list[str], tuple[datetime, datetime]] | None:
        """For the one-statement flush: the ids as stored, the user of each, and the
        (now, expires) times; None when an id came twice (a repeat to fold once, or hostile
        reuse by two users: left to `record`, `refold` and `forget`)."""
        owner: dict[str, str] = {}
        for event, _ in self.log:
            event_id = event.event_id
            if event_id:
                if event_id in owner:
                    return None
                owner[event_id] = event.user_id
        stored = _stored_ids(list(owner))
        now = now_utc()
        users = [owner[original] for original in stored.values()]
        return list(stored), users, (now, now + timedelta(seconds=self.window))

    async def forget(self, conn: AsyncConnection, users: set[str]) -> None:
        """Un-record (same transaction) the ids of `users`' events: their rows were
        carried to a later flush, which records them when it writes them."""
        ids = {event.event_id for event, _ in self.log if event.user_id in users}
        keys = [key for key, original in self.fresh.items() if original in ids]
        if not keys:
            return
        dialect = conn.dialect.name
        params = {"ids": keys if dialect == "postgresql" else orjson.dumps(keys).decode()}
        await conn.execute(text(_FORGET[dialect]), params)

    def refold(self, duplicates: set[str]) -> list[Delta]:
        """The flush's deltas without the events already applied elsewhere, and with each
        id once (its first copy)."""
        deltas: dict[BufferKey, Delta] = {}
        seen: set[str] = set()
        for event, goals in self.log:
            event_id = event.event_id
            if event_id:
                if event_id in duplicates or event_id in seen:
                    continue
                seen.add(event_id)
            fold(deltas, event, goals)
        return list(deltas.values())


async def prune(conn: AsyncConnection) -> int:
    dialect = conn.dialect.name
    result = await conn.execute(text(_PRUNE), {"now": _bind_time(dialect, now_utc())})
    return result.rowcount or 0
