"""A goal-completed event as consumers receive it (docs/completions.md, contract §8).

One outbox row becomes one event body, shaped like AGS's own `goalCompleted` so a
consumer can reuse its code: the outbox id (as a string) is the event id to dedup on.
The body is always built by orjson from a dict: any id (quotes, backslashes, any
unicode) comes out as valid JSON holding exactly that id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

EVENT_NAME = "goalCompleted"


@dataclass(frozen=True, slots=True)
class Completion:
    """One row of `challenge_goal_completions` (times naive UTC)."""

    id: int
    namespace: str
    user_id: str
    challenge_id: str
    goal_id: str
    completed_at: datetime
    period_start: datetime | None = None
    period_end: datetime | None = None
    created_at: datetime | None = None


def rfc3339(moment: datetime) -> str:
    """Naive UTC (or aware) -> `2026-11-20T10:00:00.123456Z`."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


def event_body(completion: Completion, published_at: datetime, *, rotating: bool) -> dict[str, Any]:
    """The event as a dict. `rotating`: the goal rotates, so its period is the schedule
    (a `daily` goal's day is a period of the outbox, not a schedule)."""
    payload: dict[str, Any] = {
        "namespace": completion.namespace,
        "userId": completion.user_id,
        "challengeCode": completion.challenge_id,
        "goalCode": completion.goal_id,
        "completedAt": rfc3339(completion.completed_at),
    }
    if rotating and completion.period_start is not None and completion.period_end is not None:
        payload["scheduleStart"] = rfc3339(completion.period_start)
        payload["scheduleEnd"] = rfc3339(completion.period_end)
    return {
        "id": str(completion.id),
        "name": EVENT_NAME,
        "namespace": completion.namespace,
        "userId": completion.user_id,
        "timestamp": rfc3339(published_at),
        "payload": payload,
    }


def encode(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


def metadata(completion: Completion, trace_id: str | None = None) -> dict[str, str]:
    """Message metadata: the user id, and the trace id of the publish when traced."""
    found = {"userId": completion.user_id}
    if trace_id:
        found["traceId"] = trace_id
    return found
