"""Event-time bounds (contract §1.3): a time before EVENT_TIME_MIN or later than receipt +
EVENT_TIME_MAX_SKEW falls back like a missing one, noted with why; the writer's last check
(`delta_refusal`) passes every delta built from real times and refuses any other.

The parser is held to an independent reference (datetime arithmetic on the parts the
text was built from) over the extremes: year 1 and 9999, datetime.min/max, ±14:00 and
±23:59 offsets, leap seconds, the 1999/2000 boundary, receipt + skew, and the day, week
and month boundaries of every rotation kind.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.challenges import Schedule, Source
from app.core.event_time import event_time
from app.core.events import Event, EventType, decode_json_event
from app.core.progress import Delta, fold, period_bounds
from app.core.settings import Settings
from app.core.time_bounds import (
    CEILING,
    CONTRACT_MIN,
    CONTRACT_SKEW,
    FLOOR,
    TOO_NEW,
    TOO_OLD,
    UNREADABLE,
    TimeBounds,
    delta_refusal,
)
from app.observability import metrics
from app.observability.event_times import FallbackLog
from tests.helpers.hostile import ALL_KINDS

US = timedelta(microseconds=1)
RECEIVED = datetime(2026, 11, 25, 12, 0, 0)
OFFSETS = [0, 14 * 60, -14 * 60, 23 * 60 + 59, -(23 * 60 + 59), 5 * 60 + 30, -11 * 60, 1, -1]


def offset_text(minutes: int | None) -> str:
    if minutes is None:
        return ""
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def reference(local: datetime, minutes: int | None) -> tuple[datetime | None, str | None]:
    """(UTC moment, None) or (None, why) for a local time and its offset, by arithmetic."""
    try:
        return local - timedelta(minutes=minutes or 0), None
    except OverflowError:
        return None, TOO_OLD if (minutes or 0) > 0 else TOO_NEW


def expected_time(
    moment: datetime | None, why: str | None, received: datetime
) -> tuple[datetime, list[str]]:
    """What event_time must give, and what it must note, for a parsed moment."""
    if moment is None:
        return received, [why or UNREADABLE]
    if moment < CONTRACT_MIN:
        return received, [TOO_OLD]
    if moment > received + CONTRACT_SKEW:
        return received, [TOO_NEW]
    return moment, []


def check(text: str, local: datetime, minutes: int | None, received: datetime) -> None:
    notes: list[str] = []
    got = event_time(text, None, received, TimeBounds(note=notes.append))
    want, why = expected_time(*reference(local, minutes), received)
    assert (got, notes) == (want, why), text
    assert got == received or CONTRACT_MIN <= got <= received + CONTRACT_SKEW


RECEIPTS = st.one_of(
    st.just(RECEIVED),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(9999, 11, 30)),
)


@st.composite
def clock_texts(draw) -> tuple[str, datetime, int | None]:
    """Any wall-clock time written out as RFC 3339 (leap second included)."""
    year = draw(
        st.one_of(st.sampled_from([1, 2, 1999, 2000, 2001, 2026, 9998, 9999]), st.integers(1, 9999))
    )
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, 28 if month == 2 else 30))
    hour, minute = draw(st.integers(0, 23)), draw(st.integers(0, 59))
    second = draw(st.sampled_from([0, 59, 60]) | st.integers(0, 59))
    micro = draw(st.sampled_from([0, 999_999]) | st.integers(0, 999_999))
    minutes = draw(st.sampled_from([None, *OFFSETS]) | st.integers(-(24 * 60 - 1), 24 * 60 - 1))
    zone = draw(st.sampled_from(["Z", "z"])) if minutes == 0 and draw(st.booleans()) else ""
    zone = zone or offset_text(minutes)
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    text += f".{micro:06d}{zone}"
    if second == 60:  # a leap second is the last microsecond of its minute
        second, micro = 59, 999_999
    return text, datetime(year, month, day, hour, minute, second, micro), minutes


@settings(max_examples=150, deadline=None)
@given(clock_texts(), RECEIPTS)
def test_any_rfc3339_time_is_taken_exactly_when_in_bounds(case, received):
    text, local, minutes = case
    check(text, local, minutes, received)


def _edges(received: datetime) -> list[datetime]:
    """Moments at every boundary that matters, each also one microsecond either side."""
    latest = received + CONTRACT_SKEW
    points = [
        datetime.min,
        datetime.max,
        datetime(1, 1, 1, 12),
        datetime(9999, 12, 30),
        datetime(9999, 12, 31, 23, 59, 59),
        CONTRACT_MIN,
        latest,
        received,
    ]
    for schedule in Schedule:
        start, end = period_bounds(schedule, received)
        points += [start, end]
    shifted = (_shifted(p, d) for p in points for d in (-US, timedelta(0), US))
    return [p for p in shifted if p is not None]


def _shifted(point: datetime, delta: timedelta) -> datetime | None:
    try:
        return point + delta
    except OverflowError:
        return None


@settings(max_examples=100, deadline=None)
@given(RECEIPTS, st.sampled_from([*OFFSETS, None]), st.integers(0, 60))
def test_the_boundaries_with_every_offset(received, minutes, pick):
    """A moment at (or one microsecond off) each boundary, written in any offset."""
    points = _edges(received)
    moment = points[pick % len(points)]
    local = _shifted(moment, timedelta(minutes=minutes or 0))
    if local is None:
        return  # not writable in that offset at all
    zone = offset_text(minutes)
    text = local.isoformat(timespec="microseconds") + zone
    check(text, local, minutes, received)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0001-01-01T00:00:00Z", TOO_OLD),
        ("0001-01-01T00:00:00+01:00", TOO_OLD),  # before year 1 in UTC
        ("1999-12-31T23:59:59.999999Z", TOO_OLD),
        ("2000-01-01T00:00:00+00:01", TOO_OLD),
        ("9999-12-30T00:00:00Z", TOO_NEW),
        ("9999-12-31T23:59:59-01:00", TOO_NEW),  # after year 9999 in UTC
        ("2026-11-25T12:05:00.000001Z", TOO_NEW),
        ("2026-11-25T13:05:00.000001+01:00", TOO_NEW),
        ("yesterday", UNREADABLE),
        ("2026-02-30T00:00:00Z", UNREADABLE),
        ("2026-11-25T24:00:00Z", UNREADABLE),
        ("2026-11-25T10:00:00+24:00", UNREADABLE),
    ],
)
def test_times_out_of_bounds_fall_back_to_the_record_time_then_receipt(text, why):
    notes: list[str] = []
    bounds = TimeBounds(note=notes.append)
    record = datetime(2026, 11, 25, 11, 0)
    record_ms = int((record - datetime(1970, 1, 1)).total_seconds() * 1000)
    got = decode_json_event(
        {"userId": "u", "timestamp": text}, EventType.LOGIN, RECEIVED, record_ms, bounds
    )
    assert (got.event_time, notes) == (record, [why])
    notes.clear()
    for bad_ms in (1, 946_684_799_999, record_ms + 86_400_000, 2**63 - 1):
        got = decode_json_event(
            {"userId": "u", "timestamp": text}, EventType.LOGIN, RECEIVED, bad_ms, bounds
        )
        assert got.event_time == RECEIVED
    assert notes[::2] == [why] * 4
    assert notes[1::2] == [TOO_OLD, TOO_OLD, TOO_NEW, TOO_NEW]


def test_the_exact_bounds_are_real_times():
    notes: list[str] = []
    bounds = TimeBounds(note=notes.append)
    for text, moment in (
        ("2000-01-01T00:00:00Z", CONTRACT_MIN),
        ("2026-11-25T12:05:00Z", RECEIVED + CONTRACT_SKEW),
        ("2026-11-25T13:05:00+01:00", RECEIVED + CONTRACT_SKEW),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999_999)),
    ):
        assert event_time(text, None, RECEIVED, bounds) == moment
    assert notes == []
    assert event_time("", None, RECEIVED, bounds) == RECEIVED  # missing: not noted
    assert event_time("", -1, RECEIVED, bounds) == RECEIVED
    assert notes == []


def test_bounds_come_from_the_settings_and_stay_representable():
    configured = TimeBounds.from_settings(
        Settings.from_env(
            {"EVENT_TIME_MIN": "2020-06-01T02:00:00+02:00", "EVENT_TIME_MAX_SKEW": "1h"}
        )
    )
    assert configured.earliest == datetime(2020, 6, 1)
    assert configured.latest(RECEIVED) == RECEIVED + timedelta(hours=1)
    wild = TimeBounds.from_settings(
        Settings.from_env(
            {"EVENT_TIME_MIN": "0001-01-01T00:00:00Z", "EVENT_TIME_MAX_SKEW": "99999999d"}
        )
    )
    assert wild.earliest == FLOOR
    assert wild.latest(RECEIVED) < CEILING
    assert wild.latest(datetime(9999, 11, 30)) == CEILING
    for schedule in Schedule:
        start, end = period_bounds(schedule, FLOOR)
        assert datetime.min < start and end < datetime.max
        start, end = period_bounds(schedule, CEILING)
        assert datetime.min < start and end < datetime.max


# ------------------------------------------------------------------ the writer's check

LOGIN_GOALS = ALL_KINDS.goals_for(Source.LOGIN, "")
STAT_GOALS = ALL_KINDS.goals_for(Source.STATISTIC, "s")


def _deltas(times: list[datetime]) -> list[Delta]:
    deltas: dict = {}
    for i, moment in enumerate(times):
        fold(deltas, Event(f"e{i}", EventType.LOGIN, "ns", "u", moment), LOGIN_GOALS)
        event = Event(f"s{i}", EventType.STATISTIC, "ns", "u", moment, "s", 3 * i, 1)
        fold(deltas, event, STAT_GOALS)
    return list(deltas.values())


# The bounds and the day, ISO week (Monday 2026-11-23) and month boundaries before RECEIVED
PERIOD_EDGES = [
    moment + shift
    for moment in (
        CONTRACT_MIN,
        datetime(2000, 1, 3),  # the first Monday of the bounds: its week starts in 1999
        datetime(2026, 11, 1),
        datetime(2026, 11, 23),
        datetime(2026, 11, 25),
    )
    for shift in (-US, timedelta(0), US)
    if moment + shift >= CONTRACT_MIN
] + [RECEIVED + CONTRACT_SKEW]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(PERIOD_EDGES),
            st.datetimes(min_value=CONTRACT_MIN, max_value=RECEIVED + CONTRACT_SKEW),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_the_writer_passes_every_delta_of_real_times(times):
    """Every period of every kind (day, week, month, and the buffering day of daily goals)
    holds its events and stays representable: the writer's check passes them all."""
    bounds = TimeBounds()
    for delta in _deltas(times):
        assert delta_refusal(bounds, delta, RECEIVED) is None, delta
        if delta.period_start is not None:
            assert delta.period_start <= delta.first_time <= delta.last_time < delta.period_end


@pytest.mark.parametrize(
    "bad",
    [
        datetime.min,
        datetime(1, 1, 1, 12),
        CONTRACT_MIN - US,
        RECEIVED + CONTRACT_SKEW + US,
        datetime(9999, 11, 30),
    ],
)
def test_the_writer_refuses_any_delta_holding_a_time_out_of_bounds(bad):
    """Built past the decoders (as a bug or another caller could): each one is refused."""
    bounds = TimeBounds()
    deltas = _deltas([RECEIVED - timedelta(days=1), bad])
    holding = [d for d in deltas if bad in (d.first_time, d.last_time)]
    assert len(holding) == len(LOGIN_GOALS) + len(STAT_GOALS)  # one per goal
    for delta in deltas:
        why = delta_refusal(bounds, delta, RECEIVED)
        if delta in holding:
            assert why is not None and "out of bounds" in why
            assert not bounds.delta_in_bounds(delta, RECEIVED)
        else:
            assert why is None


def test_the_writer_refuses_a_period_that_does_not_hold_its_events():
    (delta, *_) = _deltas([RECEIVED])
    bounds = TimeBounds()
    assert bounds.delta_in_bounds(delta, RECEIVED)
    delta.period_start, delta.period_end = datetime.min, RECEIVED + timedelta(days=1)
    assert not bounds.delta_in_bounds(delta, RECEIVED)
    delta.period_start, delta.period_end = RECEIVED, datetime.max
    assert not bounds.delta_in_bounds(delta, RECEIVED)
    delta.period_start, delta.period_end = RECEIVED, RECEIVED + timedelta(days=40)
    assert not bounds.delta_in_bounds(delta, RECEIVED)
    delta.period_start, delta.period_end = RECEIVED, None
    assert not bounds.delta_in_bounds(delta, RECEIVED)


# ------------------------------------------------------------------ counting


def test_fallbacks_are_counted_each_and_logged_once_a_minute(caplog):
    fallbacks = FallbackLog(logging.getLogger("test.fallbacks"), interval=3600)
    before = metrics.EVENT_TIME_FALLBACK.labels(TOO_OLD)._value.get()
    with caplog.at_level(logging.DEBUG, logger="test.fallbacks"):
        for _ in range(1000):
            fallbacks.note(TOO_OLD)
        fallbacks.note(TOO_NEW)
        fallbacks.flush()
    first, second = caplog.records
    assert first.fallbacks == {TOO_OLD: 1}  # the first one at once
    assert second.fallbacks == {TOO_OLD: 999, TOO_NEW: 1}
    assert metrics.EVENT_TIME_FALLBACK.labels(TOO_OLD)._value.get() == before + 1000
