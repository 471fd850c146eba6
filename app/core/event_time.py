"""Reading an event's time (contract §1.3): RFC 3339 text to naive UTC, and the choice
among the event's own timestamp, the Kafka record time and the receipt time.

A time that is missing, unreadable or outside the bounds (app/core/time_bounds.py) is
passed over for the next source; each one passed over is noted with why, for the
adapters to count.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from app.core.clock import from_epoch_ms, utc_naive
from app.core.time_bounds import TOO_NEW, TOO_OLD, UNREADABLE, TimeBounds

# RFC 3339 (contract §1.3); a missing offset is taken as UTC. datetime.fromisoformat alone
# would also take "11111111" or week dates.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?([Zz]|[+-]\d{2}:\d{2})?"
)


def parse_utc(raw: str) -> datetime | None:
    """RFC 3339 text -> naive UTC, not range-checked; None when unreadable or when its
    UTC form leaves years 1..9999 (`unparsed_reason` tells which)."""
    text = raw.strip()
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    offset = match.group(4)
    try:
        if offset is None:
            return datetime.fromisoformat(text)
        if offset in "Zz" and match.group(1):  # UTC already: no time zone arithmetic
            return datetime.fromisoformat(text[:-1])
        return utc_naive(datetime.fromisoformat(text))
    except OverflowError:  # the UTC shift leaves year 1..9999
        return None
    except ValueError:
        return _leap_second(text, match)


def _leap_second(text: str, match: re.Match[str]) -> datetime | None:
    """`23:59:60` (a leap second, valid RFC 3339) -> the last microsecond of its minute,
    so it stays in its UTC day; anything else fromisoformat refused is unreadable."""
    replaced = _without_leap_second(text, match)
    return None if replaced is None else parse_utc(replaced)


def _without_leap_second(text: str, match: re.Match[str]) -> str | None:
    if (match.group(2) or "")[1:3] != "60":
        return None
    start, end = match.span(2)
    return f"{text[:start]}:59.999999{text[end:]}"


def unparsed_reason(raw: str) -> str:
    """Why `parse_utc` gave nothing: a time before year 1 or after 9999 in UTC is too old
    or too new; anything else is unreadable. Only runs for times that fell back."""
    text = raw.strip()
    match = _RFC3339.fullmatch(text)
    if match is None or not match.group(4) or match.group(4) in "Zz":
        return UNREADABLE
    try:
        datetime.fromisoformat(_without_leap_second(text, match) or text)
    except ValueError:
        return UNREADABLE
    return TOO_OLD if match.group(4).startswith("+") else TOO_NEW


def event_time(
    timestamp: Any, record_ms: float | None, received: datetime, bounds: TimeBounds
) -> datetime:
    """The event time (contract §1.3): the payload's timestamp, else the Kafka record
    time, else `received`. A time out of bounds (or unreadable) is passed over like a
    missing one, and noted with why. Hot path: a parse and two comparisons."""
    if timestamp:
        moment = parse_utc(timestamp) if isinstance(timestamp, str) else None
        if moment is None:
            bounds.note(unparsed_reason(timestamp) if isinstance(timestamp, str) else UNREADABLE)
        elif (why := bounds.refusal(moment, received)) is None:
            return moment
        else:
            bounds.note(why)
    if record_ms is not None and record_ms >= 0:  # Kafka: -1 is "no timestamp"
        moment = from_epoch_ms(record_ms) if record_ms > 0 else datetime(1970, 1, 1)
        if moment is None:  # beyond what a datetime holds
            bounds.note(TOO_NEW)
        elif (why := bounds.refusal(moment, received)) is None:
            return moment
        else:
            bounds.note(why)
    return received
