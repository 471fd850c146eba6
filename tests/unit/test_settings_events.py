"""Settings parsing (contract §7) and event decoding/validation (contract §1.2, §2)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.clock import utc_naive
from app.core.event_time import parse_utc
from app.core.events import (
    EventType,
    InvalidEvent,
    decode_json_event,
    to_int,
)
from app.core.settings import Settings, SettingsError, async_database_url, parse_duration


@pytest.mark.parametrize(
    ("raw", "seconds"), [("100ms", 0.1), ("1s", 1.0), ("1.5s", 1.5), ("2m", 120.0), ("3", 3.0)]
)
def test_durations(raw, seconds):
    assert parse_duration("X", raw) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"BUFFER_FLUSH_INTERVAL": "soon"}, "BUFFER_FLUSH_INTERVAL"),
        ({"BUFFER_MAX_SIZE": "-1"}, "BUFFER_MAX_SIZE"),
        ({"DB_BATCH_SIZE": "lots"}, "DB_BATCH_SIZE"),
        ({"GRPC_PORT": "70000"}, "GRPC_PORT"),
        ({"ACK_MODE": "eventually"}, "ACK_MODE"),
        ({"ASSIGNMENT_MODE": "maybe"}, "ASSIGNMENT_MODE"),
        ({"DEDUP_WINDOW": "0s"}, "DEDUP_WINDOW"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"BUFFER_COMMIT_DELAY": "-5ms"}, "BUFFER_COMMIT_DELAY"),
        ({"BUFFER_BUSY_COMMIT_DELAY": "later"}, "BUFFER_BUSY_COMMIT_DELAY"),
        ({"BUFFER_COMMIT_SIBLINGS": "0"}, "BUFFER_COMMIT_SIBLINGS"),
        ({"KAFKA_GROUP_INSTANCE_ID": "worker 1"}, "KAFKA_GROUP_INSTANCE_ID"),
        ({"KAFKA_GROUP_INSTANCE_ID": "w\x00"}, "KAFKA_GROUP_INSTANCE_ID"),
        ({"KAFKA_GROUP_INSTANCE_ID": "w" * 250}, "KAFKA_GROUP_INSTANCE_ID"),
    ],
)
def test_a_bad_value_names_the_variable(env, variable):
    with pytest.raises(SettingsError, match=f"^{variable}: "):
        Settings.from_env(env)


def test_defaults_and_database_selection():
    s = Settings.from_env({})
    assert (s.grpc_port, s.metrics_port, s.flush_interval, s.buffer_max_size, s.db_batch_size) == (
        6565,
        8080,
        1.0,
        10_000,
        1000,
    )
    assert (s.ack_mode, s.assignment_mode, s.dedup_window) == ("durable", "auto", 600.0)
    assert s.is_sqlite
    pg = Settings.from_env({"DB_HOST": "db", "DB_PASSWORD": "p@ss"})
    assert pg.database_url == "postgresql+asyncpg://postgres:p%40ss@db:5432/challenge_db"
    assert (
        async_database_url("X", "postgresql://u:p@h:5432/d") == "postgresql+asyncpg://u:p@h:5432/d"
    )
    assert async_database_url("X", "sqlite:///tmp/x.db") == "sqlite+aiosqlite:///tmp/x.db"
    assert (
        async_database_url("X", "postgresql://u:p@h/d?sslmode=require")
        == "postgresql+asyncpg://u:p@h/d?ssl=require"
    )


def test_commit_delay_defaults_to_5ms_10ms_past_32_calls_and_can_be_turned_off():
    """The measured defaults (docs/durability.md); `0` starts urgent flushes at once."""
    assert Settings.from_env({}).commit_delay == Settings().commit_delay == pytest.approx(0.005)
    busy = Settings.from_env({}).busy_commit_delay
    assert busy == Settings().busy_commit_delay == pytest.approx(0.010)
    assert Settings.from_env({"BUFFER_BUSY_COMMIT_DELAY": "0"}).busy_commit_delay == 0.0
    assert Settings.from_env({}).commit_siblings == Settings().commit_siblings == 32
    assert Settings.from_env({"BUFFER_COMMIT_DELAY": "0"}).commit_delay == 0.0
    assert Settings.from_env({"BUFFER_COMMIT_DELAY": "2ms"}).commit_delay == pytest.approx(0.002)
    assert Settings.from_env({"BUFFER_COMMIT_SIBLINGS": "1"}).commit_siblings == 1
    for bad in ("0", "-3", "many", "1e9x"):
        with pytest.raises(SettingsError, match="BUFFER_COMMIT_SIBLINGS"):
            Settings.from_env({"BUFFER_COMMIT_SIBLINGS": bad})


def test_namespace_required_in_grpc_mode():
    with pytest.raises(SettingsError, match=r"^AB_NAMESPACE: "):
        Settings.from_env({}).require_namespace()


@pytest.mark.parametrize(
    ("value", "expected"),
    [(42.7, 42), (-1.1, -1), (0.9, 0), (3e9, 2_147_483_647), (-3e9, -2_147_483_648)],
)
def test_values_truncate_toward_zero_and_clamp(value, expected):
    assert to_int(value) == expected


def test_proto_json_shape():
    event = decode_json_event(
        b'{"id":"e1","namespace":"mygame","userId":"u:1","timestamp":"2026-11-20T10:00:00+02:00",'
        b'"payload":{"statCode":"match_wins","latestValue":42.7,"inc":1.9}}',
        EventType.STATISTIC,
    )
    assert (event.user_id, event.namespace, event.stat_code, event.value, event.inc) == (
        "u:1",
        "mygame",
        "match_wins",
        42,
        1,
    )
    assert event.event_time == datetime(2026, 11, 20, 8, 0)


@pytest.mark.parametrize(
    ("timestamp", "record_ms", "expected"),
    [
        (None, 1_763_726_400_000, datetime(2025, 11, 21, 12, 0)),  # the record time
        ("2026-11-20T08:00:00Z", 1_763_726_400_000, datetime(2026, 11, 20, 8, 0)),
        ("yesterday", 1_763_726_400_000, datetime(2025, 11, 21, 12, 0)),
        (None, 0, None),  # no record time either: the time it was received
        (None, -5, None),
        (None, 10**20, None),  # beyond what a datetime holds
    ],
)
def test_the_kafka_record_time_is_the_fallback_in_epoch_ms(timestamp, record_ms, expected):
    body = {"userId": "u", "payload": {}}
    if timestamp is not None:
        body["timestamp"] = timestamp
    before = datetime.now(UTC).replace(tzinfo=None)
    event = decode_json_event(body, EventType.LOGIN, record_ms=record_ms)
    if expected is None:
        assert event.event_time >= before
    else:
        assert event.event_time == expected


def test_short_shape_with_record_time_fallback():
    record_time = datetime(2026, 11, 21, 12, 0)
    event = decode_json_event(
        {
            "id": "event-456",
            "payload": {
                "userId": "abc123",
                "namespace": "mygame",
                "statCode": "match_wins",
                "value": 42.0,
            },
        },
        EventType.STATISTIC,
        received=record_time,
    )
    assert (event.user_id, event.namespace, event.value, event.event_time) == (
        "abc123",
        "mygame",
        42,
        record_time,
    )


@pytest.mark.parametrize(
    ("raw", "event_type", "reason", "message"),
    [
        (b"null", EventType.LOGIN, "nil_message", "message cannot be nil"),
        (b'{"payload":{}}', EventType.LOGIN, "empty_user_id", "userId cannot be empty"),
        (b'{"userId":"u"}', EventType.STATISTIC, "nil_payload", "payload cannot be nil"),
        (
            b'{"userId":"u","payload":{"latestValue":1}}',
            EventType.STATISTIC,
            "empty_stat_code",
            "statCode cannot be empty",
        ),
        (
            b'{"userId":"' + b"x" * 101 + b'"}',
            EventType.LOGIN,
            "user_id_too_long",
            "userId too long",
        ),
        (b"{oops", EventType.LOGIN, "undecodable", None),
        (
            b'{"userId":"u","payload":{"statCode":"s","latestValue":"many"}}',
            EventType.STATISTIC,
            "invalid_value",
            "latestValue is not a number",
        ),
    ],
)
def test_invalid_events(raw, event_type, reason, message):
    with pytest.raises(InvalidEvent) as caught:
        decode_json_event(raw, event_type)
    assert caught.value.reason == reason
    if message:
        assert caught.value.message == message


def test_user_id_of_exactly_100_characters_is_fine():
    assert decode_json_event({"userId": "x" * 100}, EventType.LOGIN).user_id == "x" * 100


# The UTC fast path of parse_timestamp (no time zone arithmetic for "Z") must give what
# the general path gives: fromisoformat, then converted to naive UTC.
_DIGITS = "0123456789"


@settings(max_examples=400, deadline=None)
@given(
    date=st.tuples(st.integers(1, 9999), st.integers(1, 12), st.integers(1, 28)).map(
        lambda d: f"{d[0]:04d}-{d[1]:02d}-{d[2]:02d}"
    ),
    sep=st.sampled_from(["T", "t", " "]),
    clock=st.one_of(
        st.none(),
        st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda c: f"{c[0]:02d}:{c[1]:02d}"),
        st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59)).map(
            lambda c: f"{c[0]:02d}:{c[1]:02d}:{c[2]:02d}"
        ),
    ),
    fraction=st.one_of(st.none(), st.text(_DIGITS, min_size=1, max_size=9)),
    zone=st.sampled_from(["", "Z", "z", "+00:00", "-00:00", "+05:30", "-11:00", "+14:00"]),
)
def test_utc_fast_path_equals_the_general_conversion(date, sep, clock, fraction, zone):
    text = date
    if clock is not None:
        text += sep + clock
        if fraction is not None and clock.count(":") == 2:
            text += "." + fraction
    text += zone
    try:
        # RFC 3339 allows a lower-case "z"; fromisoformat takes only "Z"
        general = utc_naive(datetime.fromisoformat(text.replace("z", "Z")))
    except (ValueError, OverflowError):
        general = None
    assert parse_utc(text) == general
