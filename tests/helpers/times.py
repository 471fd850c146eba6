"""Hostile event times and the check that no row anywhere holds a time the backend cannot
read (contract §1.3): every timestamp column of every table of a database, found from
the catalog (tables added later are covered too)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from app.core.settings import async_database_url
from app.core.time_bounds import CONTRACT_MIN, CONTRACT_SKEW
from tables.db import make_engine

# Each with the reason it falls back for (a receipt at the time of the test).
HOSTILE_STAMPS: list[tuple[str, str]] = [
    ("0001-01-01T00:00:00Z", "too_old"),  # asyncpg once wrote it as -infinity
    ("0001-01-01T00:00:00+01:00", "too_old"),  # before year 1 in UTC
    ("0001-01-02T00:00:00Z", "too_old"),
    ("1999-12-31T23:59:59.999999Z", "too_old"),
    ("1970-01-01T00:00:00-14:00", "too_old"),
    ("9999-12-30T00:00:00Z", "too_new"),
    ("9999-12-31T23:59:59-01:00", "too_new"),  # after year 9999 in UTC
    ("2999-01-01T00:00:00+14:00", "too_new"),
    ("not a time", "unreadable"),
    ("2026-02-30T00:00:00Z", "unreadable"),
]
TOO_OLD_MS = 946_684_799_999  # a Kafka record time: 1999-12-31T23:59:59.999Z

FALLBACK_METRIC = "challenge_event_handler_event_time_fallback_total"

# Columns that look ahead by design: the next period start (a rotation period is at most
# a month: a row's expires_at, a goal-completed event's period_end) or the end of the
# dedup window.
AHEAD = {"expires_at": timedelta(days=31), "period_end": timedelta(days=31)}


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def too_new_record_ms() -> int:
    """A Kafka record time later than receipt + EVENT_TIME_MAX_SKEW that the broker still
    takes (it refuses record times more than an hour ahead by default)."""
    return int((utc_now() + timedelta(minutes=30)).replace(tzinfo=UTC).timestamp() * 1000)


async def times_out_of_bounds(url: str, now: datetime | None = None) -> list[tuple]:
    """(table, column, rows, min, max) of every timestamp column holding a time out of
    [EVENT_TIME_MIN, now + EVENT_TIME_MAX_SKEW] (plus `AHEAD` for such columns) or an
    infinite one; empty when every row of every table is fine."""
    latest = (now or utc_now()) + CONTRACT_SKEW
    engine = make_engine(async_database_url("DATABASE_URL", url))
    found: list[tuple] = []
    try:
        async with engine.connect() as conn:
            columns = (
                await conn.execute(
                    text(
                        "SELECT table_name, column_name FROM information_schema.columns "
                        "WHERE table_schema = 'public' AND data_type LIKE 'timestamp%' "
                        "ORDER BY table_name, column_name"
                    )
                )
            ).all()
            assert columns, "no timestamp column found: wrong database?"
            for table, column in columns:
                high = latest + AHEAD.get(column, timedelta(0))
                row = (
                    await conn.execute(
                        text(
                            f'SELECT count(*), min("{column}"), max("{column}") FROM "{table}" '
                            f'WHERE NOT isfinite("{column}") OR "{column}" < :low '
                            f'OR "{column}" > :high'
                        ),
                        {"low": CONTRACT_MIN, "high": high},
                    )
                ).one()
                if row[0]:
                    found.append((table, column, *row))
    finally:
        await engine.dispose()
    return found


async def row_count(url: str, table: str) -> int:
    engine = make_engine(async_database_url("DATABASE_URL", url))
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text(f'SELECT count(*) FROM "{table}"'))).scalar_one())
    finally:
        await engine.dispose()
