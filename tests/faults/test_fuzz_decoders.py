"""Fuzz suite, decoders (hostile input, contract §2): hypothesis on the proto bytes decoder
and on both JSON shapes. Whatever arrives, a decoder returns an Event meeting the
contract's invariants (clamped INT values, a non-empty storable user id of at most 100
characters, a naive UTC time inside the bounds of contract §1.3) that folds into goals
of every kind, or it refuses with one of the documented messages. Nothing else may
escape."""

from __future__ import annotations

import math
from datetime import datetime

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.bridge import wire
from app.core.events import INT_MAX, INT_MIN, EventType, InvalidEvent, decode_json_event
from proto.build import load
from tests.helpers.hostile import DOCUMENTED, assert_folds_whole, assert_invariants

pb = load()
RECEIVED = datetime(2026, 11, 25, 12, 0, 0)
INT32_EDGES = [2**31, -(2**31) - 1, INT_MAX, INT_MIN, 3e9, -3e9]


HOSTILE_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, -0.0, 0.9999, *INT32_EDGES]),
)
HOSTILE_TEXT = st.one_of(
    st.text(max_size=120),
    st.sampled_from(
        [
            "",
            "x" * 100,
            "x" * 101,
            "a\x00b",
            "'; DROP TABLE user_goal_progress; --",
            "ユーザー🎮",
            "user:with:colons",
        ]
    ),
)
TIMESTAMPS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00Z",
            "2026-11-25T10:00:00+14:00",
            "2026-02-30T00:00:00Z",
            "1999-12-31T23:59:59.999999Z",
            "2026-11-25T12:05:00Z",  # RECEIVED + EVENT_TIME_MAX_SKEW: still real
            "2026-11-25T12:05:00.000001Z",
            "2016-12-31T23:59:60Z",
            "9999-12-30T00:00:00Z",
        ]
    ),
    st.datetimes().map(lambda d: d.isoformat()),
)


def _check_decoder(call) -> None:
    try:
        event = call()
    except InvalidEvent as exc:
        assert DOCUMENTED.match(exc.message), exc.message
        return
    assert_invariants(event, RECEIVED)
    assert_folds_whole(event)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_request_bytes_decode_or_are_refused(data: bytes):
    _check_decoder(lambda: wire.stat_event(data, RECEIVED))
    _check_decoder(lambda: wire.login_event(data, RECEIVED))


@settings(max_examples=500, deadline=None)
@given(
    user=HOSTILE_TEXT,
    payload_user=HOSTILE_TEXT,
    event_id=HOSTILE_TEXT,
    code=HOSTILE_TEXT,
    value=HOSTILE_FLOATS,
    inc=HOSTILE_FLOATS,
    timestamp=TIMESTAMPS,
    with_payload=st.booleans(),
)
def test_hostile_proto_values_decode_or_are_refused(
    user, payload_user, event_id, code, value, inc, timestamp, with_payload
):
    fields: dict = {"user_id": user, "id": event_id, "timestamp": timestamp, "namespace": "ns"}
    if with_payload:
        fields["payload"] = pb.stat_pb2.StatItem(
            stat_code=code, user_id=payload_user, latest_value=value, inc=inc
        )
    data = pb.stat_pb2.StatItemUpdated(**fields).SerializeToString()
    _check_decoder(lambda: wire.stat_event(data, RECEIVED))
    login = pb.login_pb2.UserLoggedIn(user_id=user, id=event_id, timestamp=timestamp)
    _check_decoder(lambda: wire.login_event(login.SerializeToString(), RECEIVED))


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    HOSTILE_TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def json_events(draw) -> bytes:
    """Either shape of contract §1.2, each field either plausible or anything at all."""

    def field(plausible):
        return draw(st.one_of(plausible, JSON_VALUES))

    payload = {
        "statCode": field(HOSTILE_TEXT),
        draw(st.sampled_from(["latestValue", "value", "latest_value"])): field(
            HOSTILE_FLOATS.filter(math.isfinite)
        ),
        "inc": field(HOSTILE_FLOATS.filter(math.isfinite)),
    }
    obj: dict = {"id": field(HOSTILE_TEXT), "timestamp": field(TIMESTAMPS)}
    if draw(st.booleans()):
        obj.update(userId=field(HOSTILE_TEXT), namespace=field(HOSTILE_TEXT))
    else:
        payload.update(userId=field(HOSTILE_TEXT), namespace=field(HOSTILE_TEXT))
    obj["payload"] = draw(st.one_of(st.just(payload), JSON_VALUES))
    top = draw(st.one_of(st.just(obj), JSON_VALUES))
    return orjson.dumps(top)


@settings(max_examples=500, deadline=None)
@given(json_events(), st.sampled_from([EventType.LOGIN, EventType.STATISTIC, None]))
def test_any_json_decodes_or_is_refused(raw: bytes, event_type):
    _check_decoder(lambda: decode_json_event(raw, event_type, RECEIVED))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_json_bytes_decode_or_are_refused(raw: bytes):
    _check_decoder(lambda: decode_json_event(raw, EventType.STATISTIC, RECEIVED))
