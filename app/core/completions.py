"""A goal-completed event as consumers receive it (docs/completions.md, contract §8).

One outbox row becomes one event body, shaped like AGS's own `goalCompleted` so a
consumer can reuse its code: the outbox id (as a string) is the event id to dedup on.
The body is always built by orjson from a dict: any id (quotes, backslashes, any
unicode) comes out as valid JSON holding exactly that id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

EVENT_NAME = "goalCompleted"


class Completion(NamedTuple):
    """One row of `challenge_goal_completions` (times naive UTC). A tuple: the publisher
    makes one per row it reads, and a frozen dataclass costs several times as much."""

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


def encode_batch(
    completions: Sequence[Completion], published_at: datetime, rotating: Callable[[str], bool]
) -> list[bytes]:
    """The encoded events of one publish: one publish time for all, each goal's
    rotation asked once."""
    timestamp = rfc3339(published_at)
    rotates: dict[str, bool] = {}
    encoded = []
    for completion in completions:
        goal_rotates = rotates.get(completion.goal_id)
        if goal_rotates is None:
            goal_rotates = rotates[completion.goal_id] = rotating(completion.goal_id)
        encoded.append(orjson.dumps(_body(completion, timestamp, goal_rotates)))
    return encoded


def _body(completion: Completion, timestamp: str, rotating: bool) -> dict[str, Any]:
    """`rotating`: the goal rotates, so its period is the schedule (a `daily` goal's day
    is a period of the outbox, not a schedule)."""
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
        "timestamp": timestamp,
        "payload": payload,
    }


def metadata(completion: Completion, trace_id: str | None = None) -> dict[str, str]:
    """Message metadata: the user id, and the trace id of the publish when traced."""
    found = {"userId": completion.user_id}
    if trace_id:
        found["traceId"] = trace_id
    return found
