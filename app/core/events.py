"""The one event record every source produces, its decoders and validation (contract §1, §2).

Decoders turn proto messages (gRPC) or JSON objects (Kafka, replay files) into `Event`;
validation runs in the order contract §2 gives and raises `InvalidEvent` carrying the exact
message the gRPC layer returns and a short `reason` for metrics and dead-letter headers.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

from app.core.clock import now_utc
from app.core.event_time import event_time
from app.core.time_bounds import TimeBounds

# The contract's default bounds, for callers that pass none (tests, one-off tools); the
# services pass theirs, built from the settings with a `note` that counts fallbacks.
DEFAULT_BOUNDS = TimeBounds()

INT_MAX = 2_147_483_647
INT_MIN = -2_147_483_648
MAX_USER_ID_LENGTH = 100
# Event ids are recorded in a primary key (challenge_processed_events): PostgreSQL's b-tree
# refuses entries over ~2,700 bytes, so a longer id would fail a whole flush. 512
# characters stay under it in any UTF-8 (AGS ids are 32-character hex).
MAX_EVENT_ID_LENGTH = 512


class EventType(StrEnum):
    LOGIN = "login"
    STATISTIC = "statistic"


class InvalidEvent(ValueError):
    """An event we must refuse; `message` is the exact client-facing text."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class Event(NamedTuple):
    """One validated event. A NamedTuple: immutable, and built for every event received
    (a frozen dataclass costs several times more to construct)."""

    event_id: str
    type: EventType
    namespace: str
    user_id: str
    event_time: datetime  # naive UTC
    stat_code: str = ""
    value: int = 0
    inc: int = 0


def clamp_int(number: int) -> int:
    """Any integer -> the INT column's range (a sum or difference of two clamped values)."""
    if number > INT_MAX:
        return INT_MAX
    if number < INT_MIN:
        return INT_MIN
    return number


def to_int(number: float) -> int:
    """Stat doubles -> INT column: truncate toward zero, clamp to the 32-bit range."""
    if number >= INT_MAX:
        return INT_MAX
    if number <= INT_MIN:
        return INT_MIN
    return int(number)


def finite(number: float, name: str) -> float:
    """NaN cannot be truncated to an INT: refuse it (infinities are clamped by to_int)."""
    if math.isnan(number):
        raise InvalidEvent("invalid_value", f"{name} is not a number")
    return number


def _number(raw: Any, name: str) -> float:
    """A JSON number (or the proto-JSON numeric string form); other types are refused."""
    if raw is None or raw == "":
        return 0.0
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise InvalidEvent("wrong_type", f"{name} must be a number")
    try:
        return finite(float(raw), name)
    except (TypeError, ValueError, OverflowError):
        raise InvalidEvent("invalid_value", f"{name} is not a number") from None


def storable(text: str, name: str) -> None:
    """PostgreSQL text holds neither NUL nor unpaired surrogates (not valid UTF-8)."""
    if text.isascii():
        if "\x00" in text:
            raise InvalidEvent("invalid_characters", f"{name} contains invalid characters")
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent("invalid_characters", f"{name} contains invalid characters") from None
    if "\x00" in text:
        raise InvalidEvent("invalid_characters", f"{name} contains invalid characters")


def validate_identity(user_id: str) -> None:
    if not user_id:
        raise InvalidEvent("empty_user_id", "userId cannot be empty")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise InvalidEvent("user_id_too_long", "userId too long")
    storable(user_id, "userId")


def build_event(
    *,
    event_type: EventType,
    event_id: str,
    namespace: str,
    user_id: str,
    timestamp: Any,
    received: datetime | None = None,
    record_ms: float | None = None,
    bounds: TimeBounds = DEFAULT_BOUNDS,
    has_payload: bool = True,
    stat_code: str = "",
    value: float = 0.0,
    inc: float = 0.0,
) -> Event:
    """Validate in contract §2 order (after 'message cannot be nil') and build the Event.

    Everything that could refuse the event happens here, before any goal sees it, so an
    event is applied whole or not at all. `received`: when the service received it (the
    last fallback time and the base of the future bound; now when not given).
    """
    validate_identity(user_id)
    if event_type is EventType.STATISTIC:
        if not has_payload:
            raise InvalidEvent("nil_payload", "payload cannot be nil")
        if not stat_code:
            raise InvalidEvent("empty_stat_code", "statCode cannot be empty")
        storable(stat_code, "statCode")
        finite(value, "latestValue")
        finite(inc, "inc")
    if len(event_id) > MAX_EVENT_ID_LENGTH:
        raise InvalidEvent("event_id_too_long", "id too long")
    storable(event_id, "id")
    storable(namespace, "namespace")
    return Event(
        event_id=event_id,
        type=event_type,
        namespace=namespace,
        user_id=user_id,
        event_time=event_time(timestamp, record_ms, received or now_utc(), bounds),
        stat_code=stat_code,
        value=to_int(value),
        inc=to_int(inc),
    )


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _text(raw: Any, name: str) -> str:
    """A JSON string field: absent/null -> "", any other type is refused, never coerced."""
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise InvalidEvent("wrong_type", f"{name} must be a string")
    return raw


def json_user_id(obj: dict[str, Any], payload: dict[str, Any]) -> str:
    """The user id of a JSON event: top-level `userId`, else the payload's (contract
    §1.1); InvalidEvent when either is not a string."""
    return _text(_get(obj, "userId", "user_id"), "userId") or _text(
        _get(payload, "userId", "user_id"), "userId"
    )


def event_type_of(obj: dict[str, Any]) -> EventType:
    """For sources without a topic (JSON-lines files): the AGS event name or the payload."""
    kind = obj.get("type") or obj.get("eventType") or obj.get("name") or ""
    kind = kind.lower() if isinstance(kind, str) else ""
    if "login" in kind or "loggedin" in kind:
        return EventType.LOGIN
    if "stat" in kind:
        return EventType.STATISTIC
    payload = obj.get("payload")
    if isinstance(payload, dict) and (
        "statCode" in payload or "stat_code" in payload or "latestValue" in payload
    ):
        return EventType.STATISTIC
    return EventType.LOGIN


def decode_json_event(
    raw: bytes | str | dict[str, Any],
    event_type: EventType | None = None,
    received: datetime | None = None,
    record_ms: float | None = None,
    bounds: TimeBounds = DEFAULT_BOUNDS,
) -> Event:
    """Either JSON shape of contract §1.2 -> Event (InvalidEvent when unusable).

    `record_ms`: the Kafka record timestamp (epoch ms), the event time when the payload
    has no real one (contract §1.3); `received`: when the service received the record."""
    if isinstance(raw, dict):
        obj = raw
    else:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("undecodable", f"cannot decode JSON: {exc}") from None
    if obj is None:
        raise InvalidEvent("nil_message", "message cannot be nil")
    if not isinstance(obj, dict):
        raise InvalidEvent("wrong_type", "message must be a JSON object")
    if event_type is None:
        event_type = event_type_of(obj)
    payload = obj.get("payload")
    if payload is not None and not isinstance(payload, dict):
        raise InvalidEvent("wrong_type", "payload must be an object")
    payload = payload or {}
    user_id = json_user_id(obj, payload)
    namespace = _text(obj.get("namespace"), "namespace") or _text(
        payload.get("namespace"), "namespace"
    )
    event_id = _text(obj.get("id"), "id")
    timestamp = obj.get("timestamp")
    if timestamp is not None and not isinstance(timestamp, str):
        raise InvalidEvent("wrong_type", "timestamp must be a string")
    stat_code, value, inc = "", 0.0, 0.0
    if event_type is EventType.STATISTIC:
        stat_code = _text(_get(payload, "statCode", "stat_code"), "statCode")
        raw_value = _get(payload, "latestValue", "latest_value")
        value = _number(payload.get("value") if raw_value is None else raw_value, "latestValue")
        inc = _number(payload.get("inc"), "inc")
    return build_event(
        event_type=event_type,
        event_id=event_id,
        namespace=namespace,
        user_id=user_id,
        timestamp=timestamp,
        received=received,
        record_ms=record_ms,
        bounds=bounds,
        has_payload=bool(payload),
        stat_code=stat_code,
        value=value,
        inc=inc,
    )
