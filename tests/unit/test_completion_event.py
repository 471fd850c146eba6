"""The goal-completed event body (app/core/completions.py): AGS's `goalCompleted` shape,
valid JSON holding exactly the stored ids whatever they contain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from app.core.completions import Completion, encode_batch, metadata, rfc3339

HOSTILE = [
    'quote"back\\slash',
    "emoji-😀-中文-\u2028-\u2029-\t",
    "x" * 100,
    '{"id": "forged"}',
    "\x01\x1f control",
]


def _completion(user: str = "u1", goal: str = "g1", period: bool = True) -> Completion:
    return Completion(
        id=4711,
        namespace="mygame",
        user_id=user,
        challenge_id="weekly",
        goal_id=goal,
        completed_at=datetime(2026, 12, 6, 10, 15, 1),
        period_start=datetime(2026, 11, 30) if period else None,
        period_end=datetime(2026, 12, 7) if period else None,
    )


def _encoded(completion: Completion, published_at: datetime, *, rotating: bool) -> bytes:
    """The event as the publisher encodes it (one batch of one)."""
    return encode_batch([completion], published_at, lambda _goal: rotating)[0]


def event_body(completion: Completion, published_at: datetime, *, rotating: bool) -> dict:
    return orjson.loads(_encoded(completion, published_at, rotating=rotating))


def test_the_body_has_the_goal_completed_shape():
    body = event_body(_completion(), datetime(2026, 12, 6, 10, 15, 2, 120384), rotating=True)
    assert body == {
        "id": "4711",
        "name": "goalCompleted",
        "namespace": "mygame",
        "userId": "u1",
        "timestamp": "2026-12-06T10:15:02.120384Z",
        "payload": {
            "namespace": "mygame",
            "userId": "u1",
            "challengeCode": "weekly",
            "goalCode": "g1",
            "completedAt": "2026-12-06T10:15:01.000000Z",
            "scheduleStart": "2026-11-30T00:00:00.000000Z",
            "scheduleEnd": "2026-12-07T00:00:00.000000Z",
        },
    }


def test_only_rotating_goals_carry_a_schedule():
    daily = event_body(_completion(), datetime(2026, 12, 6), rotating=False)
    once = event_body(_completion(period=False), datetime(2026, 12, 6), rotating=True)
    for body in (daily, once):
        assert not {"scheduleStart", "scheduleEnd"} & set(body["payload"])


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_ids_come_back_exactly(hostile):
    body = _encoded(_completion(hostile, hostile), datetime(2026, 12, 6), rotating=False)
    decoded = orjson.loads(body)
    assert decoded["userId"] == decoded["payload"]["userId"] == hostile
    assert decoded["payload"]["goalCode"] == hostile
    assert b"\n" not in body  # one line per event in the log sink


def test_times_are_rfc3339_utc_whatever_they_came_in():
    aware = datetime(2026, 12, 6, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(aware) == "2026-12-06T10:00:00.000000Z"
    assert rfc3339(datetime(2026, 12, 6, 10, 0, tzinfo=UTC)) == rfc3339(datetime(2026, 12, 6, 10))


def test_metadata_carries_the_trace_id_only_while_traced():
    assert metadata(_completion()) == {"userId": "u1"}
    assert metadata(_completion(), "abc123") == {"userId": "u1", "traceId": "abc123"}
