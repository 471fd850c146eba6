"""Hostile input on every decoder (contract §2 "Hostile input").

Named regressions for each case found by fuzzing `serve` and `worker`, then hypothesis
properties: whatever the bytes or values, a decoder either returns an Event that meets
the contract's invariants or refuses with one of the documented messages, and folding an
accepted event into goals of every kind never raises.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from app.bridge import wire
from app.bridge.refusals import RefusalLog
from app.bridge.shedding import Shedder
from app.core.challenges import ConfigError, load_config
from app.core.clock import from_epoch_ms
from app.core.events import (
    INT_MAX,
    INT_MIN,
    Event,
    EventType,
    InvalidEvent,
    decode_json_event,
)
from app.core.time_bounds import CEILING, FLOOR
from app.kafka.codec import DEAD_LETTER_MAX_VALUE, dead_letter_value
from app.lifecycle import reload_config
from proto.build import load
from tests.helpers.hostile import DOCUMENTED, assert_folds_whole, assert_invariants

pb = load()
RECEIVED = datetime(2026, 11, 25, 12, 0, 0)


def refused(call) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        call()
    assert DOCUMENTED.match(caught.value.message), caught.value.message
    return caught.value


# ------------------------------------------------------------------ regressions


def test_random_request_bytes_are_a_malformed_message_not_unknown():
    """Was: UNKNOWN "Unexpected DecodeError" and a traceback line per call."""
    for data in (b"\xff\xff\xff\xff", b"\x0a\xff\x01", b"\x12\x05ab", b"\x08" * 11):
        error = refused(lambda d=data: wire.stat_event(d, RECEIVED))
        assert (error.reason, error.message) == ("malformed", "malformed message")
        error = refused(lambda d=data: wire.login_event(d, RECEIVED))
        assert error.message == "malformed message"


def test_invalid_utf8_in_a_proto_user_id_is_named():
    good = pb.stat_pb2.StatItemUpdated(
        id="e1", namespace="ns", user_id="AAAA", payload=pb.stat_pb2.StatItem(stat_code="s")
    ).SerializeToString()
    bad = good.replace(b"AAAA", b"A\xffA\xfe")
    error = refused(lambda: wire.stat_event(bad, RECEIVED))
    assert (error.reason, error.message) == (
        "invalid_characters",
        "userId contains invalid characters",
    )
    bad_code = good.replace(b"\x12\x01s", b"\x12\x01\xc0")  # payload.stat_code
    assert refused(lambda: wire.stat_event(bad_code, RECEIVED)).message == (
        "statCode contains invalid characters"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user_id": "a\x00b"}, "userId contains invalid characters"),
        ({"user_id": "u", "id": "e\x00"}, "id contains invalid characters"),
        ({"user_id": "u", "namespace": "n\x00"}, "namespace contains invalid characters"),
    ],
)
def test_nul_in_an_id_is_refused_from_proto(fields, message):
    """Was: accepted, and the row's NUL then failed every flush."""
    data = pb.login_pb2.UserLoggedIn(**fields).SerializeToString()
    assert refused(lambda: wire.login_event(data, RECEIVED)).message == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"userId":"a\\u0000b"}', "userId contains invalid characters"),
        (b'{"userId":"u","id":"\\u0000"}', "id contains invalid characters"),
        (
            b'{"userId":"u","payload":{"statCode":"s\\u0000","value":1}}',
            "statCode contains invalid characters",
        ),
    ],
)
def test_nul_in_an_id_is_refused_from_json(raw, message):
    event_type = EventType.STATISTIC if b"statCode" in raw else EventType.LOGIN
    error = refused(lambda: decode_json_event(raw, event_type))
    assert (error.reason, error.message) == ("invalid_characters", message)


def test_an_event_id_too_long_for_the_dedup_key_is_refused():
    """An id over the b-tree limit of challenge_processed_events' key used to fail the
    whole flush it joined (every caller answered UNAVAILABLE)."""
    ok = {"id": "e" * 512, "userId": "u"}
    assert decode_json_event(ok, EventType.LOGIN).event_id == "e" * 512
    error = refused(lambda: decode_json_event({"id": "é" * 513, "userId": "u"}, EventType.LOGIN))
    assert (error.reason, error.message) == ("event_id_too_long", "id too long")


def test_lone_surrogates_from_a_python_dict_are_refused():
    error = refused(lambda: decode_json_event({"userId": "a\ud800"}, EventType.LOGIN))
    assert error.message == "userId contains invalid characters"


@pytest.mark.parametrize(
    ("value", "inc"), [(5, -2_147_483_649), (3e9, -1), (0, 2**31), (INT_MAX, INT_MIN)]
)
def test_value_minus_inc_stays_in_int_range(value, inc):
    """Was: OK answered, then the row dead-lettered for an int32 overflow of value - inc."""
    data = pb.stat_pb2.StatItemUpdated(
        user_id="u",
        payload=pb.stat_pb2.StatItem(stat_code="s", latest_value=value, inc=inc),
    ).SerializeToString()
    event = wire.stat_event(data, RECEIVED)
    assert_invariants(event)
    assert_folds_whole(event)


@pytest.mark.parametrize(
    "timestamp",
    [
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "9999-12-31T23:59:59Z",  # representable, but its day has no end
        "9999-12-15T00:00:00Z",  # its month has no end
        "not a time",
        "11111111111111111111",  # fromisoformat alone reads this as 1111-11-11 11:11:11
        "2026-W47-1",  # ISO week date: not RFC 3339
        "",
    ],
)
def test_out_of_range_timestamps_fall_back_like_missing_ones(timestamp):
    """Was: INTERNAL after a login had been folded in (and a crashed Kafka agent)."""
    login = pb.login_pb2.UserLoggedIn(user_id="u", timestamp=timestamp).SerializeToString()
    event = wire.login_event(login, RECEIVED)
    assert event.event_time == RECEIVED
    assert_folds_whole(event)
    raw = orjson.dumps({"userId": "u", "timestamp": timestamp})
    assert decode_json_event(raw, EventType.LOGIN, RECEIVED).event_time == RECEIVED


def test_an_out_of_range_record_time_falls_back_to_the_receipt_time():
    assert from_epoch_ms(2**63 - 1) is None
    for record_ms in (2**63 - 1, 10**20, 0, 946_684_799_999):  # the last: 1999-12-31
        event = decode_json_event(
            {"userId": "u"}, EventType.LOGIN, received=RECEIVED, record_ms=record_ms
        )
        assert event.event_time == RECEIVED


def test_the_edges_of_the_time_range_fold_for_every_period_kind():
    for moment in (FLOOR, CEILING):
        event = Event("e", EventType.STATISTIC, "ns", "u", moment, "s", 5, 1)
        assert_folds_whole(event)
        assert_folds_whole(Event("e", EventType.LOGIN, "ns", "u", moment))


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"userId": 123}, "userId must be a string"),
        ({"userId": {"id": "u"}}, "userId must be a string"),
        ({"userId": ["u"]}, "userId must be a string"),
        ({"userId": True}, "userId must be a string"),
        ({"payload": {"userId": 5}}, "userId must be a string"),
        ({"userId": "u", "namespace": 7}, "namespace must be a string"),
        ({"userId": "u", "id": 7}, "id must be a string"),
        ({"userId": "u", "timestamp": 1700000000}, "timestamp must be a string"),
        ({"userId": "u", "payload": "x"}, "payload must be an object"),
        ({"userId": "u", "payload": {"statCode": 1, "value": 1}}, "statCode must be a string"),
        (
            {"userId": "u", "payload": {"statCode": "s", "value": [1]}},
            "latestValue must be a number",
        ),
        (
            {"userId": "u", "payload": {"statCode": "s", "value": True}},
            "latestValue must be a number",
        ),
        ({"userId": "u", "payload": {"statCode": "s", "inc": {}}}, "inc must be a number"),
    ],
)
def test_kafka_json_of_the_wrong_type_is_refused_not_coerced(obj, message):
    """Was: `"userId": 123` applied as user "123"."""
    error = refused(lambda: decode_json_event(orjson.dumps(obj), EventType.STATISTIC))
    assert (error.reason, error.message) == ("wrong_type", message)


@pytest.mark.parametrize("raw", [b"[1,2]", b"42", b'"text"', b"true"])
def test_a_json_value_that_is_not_an_object_is_refused(raw):
    assert refused(lambda: decode_json_event(raw, EventType.LOGIN)).reason == "wrong_type"


def test_deep_json_is_refused_without_recursion_error():
    raw = b"[" * 10_000 + b"]" * 10_000
    assert refused(lambda: decode_json_event(raw, EventType.LOGIN)).reason == "undecodable"
    deep = b'{"userId":"u","type":' + b"[" * 1000 + b"]" * 1000 + b"}"
    assert decode_json_event(deep).user_id == "u"  # replay's type sniffing survives it


def test_numeric_strings_are_the_proto_json_form_of_doubles():
    event = decode_json_event(
        b'{"userId":"u","payload":{"statCode":"s","latestValue":"42.9","inc":"Infinity"}}',
        EventType.STATISTIC,
    )
    assert (event.value, event.inc) == (42, INT_MAX)
    error = refused(
        lambda: decode_json_event(
            b'{"userId":"u","payload":{"statCode":"s","latestValue":"NaN"}}', EventType.STATISTIC
        )
    )
    assert error.message == "latestValue is not a number"


# ------------------------------------------------------------------ config reload


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"challenges": [\xff\xfe]}', "not UTF-8"),
        (b"\x00\x01binary", "invalid JSON"),
        (b"{not json", "invalid JSON"),
        (b'{"challenges": "many"}', "needs at least one challenge"),
        (b'{"challenges": [{"challengeId": "c", "goals": 7}]}', "needs at least one goal"),
        (
            b'{"challenges": [{"challengeId": "c", "goals": [{"goalId": "g", '
            b'"eventSource": "login", "requirement": {"targetValue": Infinity}}]}]}',
            "must be a finite number",
        ),
        (
            b'{"challenges": [{"challengeId": "c", "goals": [{"goalId": "g\\u0000", '
            b'"eventSource": "login", "requirement": {"targetValue": 1}}]}]}',
            "contains invalid characters",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (None, "cannot read config"),
    ],
)
def test_an_unreadable_config_is_refused_and_the_running_one_kept(
    tmp_path: Path, caplog, content, problem
):
    """Was: a non-UTF-8 challenges.json on SIGHUP gave an asyncio traceback."""
    path = tmp_path / "challenges.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any(problem in line for line in caught.value.problems), caught.value.problems
    applied: list = []
    with caplog.at_level(logging.ERROR):
        assert reload_config(path, applied.append) is False
    assert applied == []
    refusals = [r for r in caplog.records if r.getMessage() == "config reload refused"]
    assert refusals and all(problem in r.problem for r in refusals[:1])


# ------------------------------------------------------------------ overload, logs, DLQ


def test_the_shedder_admits_up_to_its_limit():
    shedder = Shedder(2)
    assert shedder.enter() and shedder.enter()
    assert not shedder.enter()
    shedder.leave()
    assert shedder.enter()


def test_refusals_are_logged_aggregated(caplog):
    refusals = RefusalLog(logging.getLogger("test.refusals"), interval=3600)
    with caplog.at_level(logging.DEBUG, logger="test.refusals"):
        for _ in range(2000):
            refusals.note("malformed", "malformed message")
        refusals.note("empty_user_id", "userId cannot be empty")
        assert caplog.records == []  # nothing per call
        refusals.flush()
    (line,) = caplog.records
    assert line.refused == {"malformed": 2000, "empty_user_id": 1}
    assert line.exc_info is None


def test_dead_letters_of_near_limit_records_fit_a_record():
    small = b"x" * 100
    assert dead_letter_value(small) == (small, [])
    big = b"y" * 1_040_000
    value, headers = dead_letter_value(big)
    assert len(value) == DEAD_LETTER_MAX_VALUE
    assert headers == [("truncated_from", b"1040000")]
    assert dead_letter_value(None) == (b"", [])
