"""Time in one place: naive UTC datetimes (the table's TIMESTAMP columns) and epoch ms
(Kafka record timestamps)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_naive(moment: datetime) -> datetime:
    """Any datetime -> naive UTC (aware ones are converted, naive ones taken as UTC)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def now_utc() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def epoch_ms(moment: datetime) -> int:
    """Naive UTC datetime -> milliseconds since the epoch."""
    return int(moment.replace(tzinfo=UTC).timestamp() * 1000)


def from_epoch_ms(ms: float | None) -> datetime | None:
    """Kafka record timestamp (ms) -> naive UTC; None when absent, not positive or beyond
    what datetime holds (any producer may set CreateTime)."""
    if not ms or ms <= 0:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        return None
