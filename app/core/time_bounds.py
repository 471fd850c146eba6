"""Which event times are real (docs/contract.md §1.3).

A time before `EVENT_TIME_MIN`, or later than the moment the service received the event
plus `EVENT_TIME_MAX_SKEW`, is no real event time: where events are built it falls back
like a missing one (app/core/events.py), and the writer refuses any delta still holding
one (`delta_refusal`), so no row ever gets a time the backend cannot read (asyncpg sends
Python's `datetime.min`/`max` as `-infinity`/`infinity`).

Plain Python without I/O: the adapters pass a `note` callable that counts each fallback
(a metric, an aggregated log line); this module only says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from app.core.clock import utc_naive

if TYPE_CHECKING:
    from app.core.progress import Delta
    from app.core.settings import Settings

TOO_OLD = "too_old"
TOO_NEW = "too_new"
UNREADABLE = "unreadable"

CONTRACT_MIN = datetime(2000, 1, 1)
CONTRACT_SKEW = timedelta(minutes=5)
# Whatever the settings say, bounds stay where every period computed from a time in them
# (its day, ISO week and month, start and end) is a real time: after the first of
# February of year 1 no period starts at `datetime.min`; before December 9999 every
# month has an end short of `datetime.max`.
FLOOR = datetime(1, 2, 1)
CEILING = datetime(9999, 12, 1) - timedelta(microseconds=1)
MAX_SKEW = timedelta(days=3650)
# A buffered period holds its events: a rotation period spans at most a month.
LONGEST_PERIOD = timedelta(days=31)


def _ignore(reason: str) -> None:
    """The default `note`: nobody counts (tests, one-off tools)."""


class TimeBounds:
    """[earliest, receipt + skew] and the `note` the adapters count fallbacks with.

    `latest()` keeps the last receipt it saw: a Kafka batch shares one receipt time, so
    its events cost an identity check instead of an addition each.
    """

    __slots__ = ("_cap", "_latest", "_received", "earliest", "note", "skew")

    def __init__(
        self,
        earliest: datetime = CONTRACT_MIN,
        skew: timedelta = CONTRACT_SKEW,
        note: Callable[[str], None] | None = None,
    ):
        self.earliest = min(max(utc_naive(earliest), FLOOR), CEILING)
        self.skew = min(max(skew, timedelta(0)), MAX_SKEW)
        self._cap = CEILING - self.skew  # a receipt after it: the bound is CEILING
        self.note: Callable[[str], None] = note or _ignore
        self._received: datetime | None = None
        self._latest = CEILING

    @classmethod
    def from_settings(
        cls, settings: Settings, note: Callable[[str], None] | None = None
    ) -> TimeBounds:
        skew = min(settings.event_time_max_skew, MAX_SKEW.total_seconds())
        return cls(settings.event_time_min, timedelta(seconds=skew), note)

    def latest(self, received: datetime) -> datetime:
        """The latest real event time for an event received at `received`."""
        if received is not self._received:
            self._received = received
            self._latest = received + self.skew if received < self._cap else CEILING
        return self._latest

    def refusal(self, moment: datetime, received: datetime) -> str | None:
        """Why `moment` is no real event time (TOO_OLD, TOO_NEW), None when it is."""
        if moment < self.earliest:
            return TOO_OLD
        if moment > self.latest(received):
            return TOO_NEW
        return None

    def in_bounds(self, moment: datetime, now: datetime) -> bool:
        return self.refusal(moment, now) is None

    def delta_in_bounds(self, delta: Delta, now: datetime) -> bool:
        return delta_refusal(self, delta, now) is None


def delta_refusal(bounds: TimeBounds, delta: Delta, now: datetime) -> str | None:
    """Why the writer must not send `delta` (a time out of bounds), None when it may.

    Every time a delta sends is checked: its first and last event time, each step's time
    (completed_at comes from them), and its period (expires_at): a period must hold the
    delta's events and span at most a month, so it stays within a month of the bounds.
    A few comparisons per delta: it runs for every row of every flush.
    """
    earliest, latest = bounds.earliest, bounds.latest(now)
    first, last = delta.first_time, delta.last_time
    if not (earliest <= first <= latest and earliest <= last <= latest):
        name, moment = ("first_time", first) if bounds.refusal(first, now) else ("last_time", last)
        return f"event time out of bounds ({bounds.refusal(moment, now)}): {name} {moment}"
    for _, moment in delta.steps:
        if moment < earliest or moment > latest:
            return f"event time out of bounds ({bounds.refusal(moment, now)}): step {moment}"
    start, end = delta.period_start, delta.period_end
    if start is None and end is None:
        return None
    if (
        start is None
        or end is None
        or not (datetime.min < start <= first and last < end < datetime.max)
        or end - start > LONGEST_PERIOD
    ):
        return f"period out of bounds: {start} to {end}"
    return None


def refused_deltas(
    bounds: TimeBounds, deltas: Iterable[Delta], now: datetime
) -> list[tuple[Delta, str]]:
    """(delta, why) for each delta the writer must not send."""
    refused = []
    for delta in deltas:
        why = delta_refusal(bounds, delta, now)
        if why is not None:
            refused.append((delta, why))
    return refused
