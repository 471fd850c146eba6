"""The one event record every source produces, its decoders and validation (SPEC §1, §2).

Decoders turn proto messages (gRPC) or JSON objects (Kafka, replay files) into `Event`;
validation runs in the order SPEC §2 gives and raises `InvalidEvent` carrying the exact
message the gRPC layer returns and a short `reason` for metrics and dead-letter headers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from app.core.clock import now_utc, utc_naive

INT_MAX = 2_147_483_647
INT_MIN = -2_147_483_648
MAX_USER_ID_LENGTH = 100


class EventType(StrEnum):
    LOGIN = "login"
    STATISTIC = "statistic"


class InvalidEvent(ValueError):
    """An event we must refuse; `message` is the exact client-facing text."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    type: EventType
    namespace: str
    user_id: str
    event_time: datetime  # naive UTC
    stat_code: str = ""
    value: int = 0
    inc: int = 0


def to_int(number: float) -> int:
    """Stat doubles -> INT column: truncate toward zero, clamp to the 32-bit range."""
    if number >= INT_MAX:
        return INT_MAX
    if number <= INT_MIN:
        return INT_MIN
    return int(number)


def parse_timestamp(raw: Any) -> datetime | None:
    """RFC 3339 text -> naive UTC; None when absent or unreadable (caller falls back)."""
    if not raw or not isinstance(raw, str):
        return None
    try:
        return utc_naive(datetime.fromisoformat(raw.strip()))
    except ValueError:
        return None


def finite(number: float, name: str) -> float:
    """NaN cannot be truncated to an INT: refuse it (infinities are clamped by to_int)."""
    if math.isnan(number):
        raise InvalidEvent("invalid_value", f"{name} is not a number")
    return number


def _number(raw: Any, name: str) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        return finite(float(raw), name)
    except (TypeError, ValueError):
        raise InvalidEvent("invalid_value", f"{name} is not a number") from None


def validate_identity(user_id: str) -> None:
    if not user_id:
        raise InvalidEvent("empty_user_id", "userId cannot be empty")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise InvalidEvent("user_id_too_long", "userId too long")


def build_event(
    *,
    event_type: EventType,
    event_id: str,
    namespace: str,
    user_id: str,
    timestamp: Any,
    fallback_time: datetime | None,
    has_payload: bool = True,
    stat_code: str = "",
    value: float = 0.0,
    inc: float = 0.0,
) -> Event:
    """Validate in SPEC §2 order (after 'message cannot be nil') and build the Event."""
    validate_identity(user_id)
    if event_type is EventType.STATISTIC:
        if not has_payload:
            raise InvalidEvent("nil_payload", "payload cannot be nil")
        if not stat_code:
            raise InvalidEvent("empty_stat_code", "statCode cannot be empty")
    event_time = parse_timestamp(timestamp) or fallback_time or now_utc()
    return Event(
        event_id=event_id,
        type=event_type,
        namespace=namespace,
        user_id=user_id,
        event_time=event_time,
        stat_code=stat_code,
        value=to_int(value),
        inc=to_int(inc),
    )


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def event_type_of(obj: dict[str, Any]) -> EventType:
    """For sources without a topic (JSON-lines files): the AGS event name or the payload."""
    kind = str(obj.get("type") or obj.get("eventType") or obj.get("name") or "").lower()
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
    fallback_time: datetime | None = None,
) -> Event:
    """Either JSON shape of SPEC §1.2 -> Event (InvalidEvent when unusable)."""
    if isinstance(raw, dict):
        obj = raw
    else:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEvent("undecodable", f"cannot decode JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("nil_message", "message cannot be nil")
    if event_type is None:
        event_type = event_type_of(obj)
    payload = obj.get("payload")
    if payload is not None and not isinstance(payload, dict):
        raise InvalidEvent("nil_payload", "payload cannot be nil")
    payload = payload or {}
    user_id = str(_get(obj, "userId", "user_id") or _get(payload, "userId", "user_id") or "")
    namespace = str(obj.get("namespace") or payload.get("namespace") or "")
    stat_code = str(_get(payload, "statCode", "stat_code") or "")
    value = _get(payload, "latestValue", "latest_value")
    if value is None:
        value = payload.get("value")
    return build_event(
        event_type=event_type,
        event_id=str(obj.get("id") or ""),
        namespace=namespace,
        user_id=user_id,
        timestamp=obj.get("timestamp"),
        fallback_time=fallback_time,
        has_payload=bool(payload),
        stat_code=stat_code,
        value=_number(value, "latestValue") if event_type is EventType.STATISTIC else 0.0,
        inc=_number(payload.get("inc"), "inc") if event_type is EventType.STATISTIC else 0.0,
    )
