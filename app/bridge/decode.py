"""Extend-bridge proto messages -> `Event`, validated in contract §2 order.

The Python gRPC runtime never hands us a None request: a call whose body is empty
decodes to a message with no field set. That is the nearest thing to Go's nil message,
so an all-default message is refused with "message cannot be nil".
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.core.events import DEFAULT_BOUNDS, Event, EventType, InvalidEvent, build_event
from app.core.time_bounds import TimeBounds


def _require_message(message: Any) -> None:
    if message is None or message.ByteSize() == 0:
        raise InvalidEvent("nil_message", "message cannot be nil")


def decode_login(message: Any, received: datetime, bounds: TimeBounds = DEFAULT_BOUNDS) -> Event:
    """`accelbyte.iam.account.v1.UserLoggedIn` -> login Event."""
    _require_message(message)
    user_id = message.user_id or message.payload.user_account.user_id
    return build_event(
        event_type=EventType.LOGIN,
        event_id=message.id,
        namespace=message.namespace,
        user_id=user_id,
        timestamp=message.timestamp,
        received=received,
        bounds=bounds,
    )


def decode_stat(message: Any, received: datetime, bounds: TimeBounds = DEFAULT_BOUNDS) -> Event:
    """`accelbyte.social.statistic.v1.StatItemUpdated` -> statistic Event."""
    _require_message(message)
    has_payload = message.HasField("payload")
    payload = message.payload
    user_id = message.user_id or payload.user_id
    return build_event(
        event_type=EventType.STATISTIC,
        event_id=message.id,
        namespace=message.namespace,
        user_id=user_id,
        timestamp=message.timestamp,
        received=received,
        bounds=bounds,
        has_payload=has_payload,
        stat_code=payload.stat_code,
        value=payload.latest_value,  # NaN is refused by build_event, after the contract §2 checks
        inc=payload.inc,
    )
