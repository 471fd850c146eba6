"""Shared by the hostile-input tests (unit regressions and the decoder fuzz suite): the
documented refusals, a config with a goal of every kind, and the contract's invariants of an
accepted event."""

from __future__ import annotations

import re
from datetime import datetime

from app.core.challenges import ChallengeConfig, Source, parse_config
from app.core.events import (
    INT_MAX,
    INT_MIN,
    Event,
    EventType,
)
from app.core.progress import Delta, fold
from app.core.time_bounds import CEILING, CONTRACT_MIN, CONTRACT_SKEW, FLOOR

# Every refusal a decoder may answer (contract §2 and the hostile-input rules), as patterns.
DOCUMENTED = re.compile(
    r"^(message cannot be nil|userId cannot be empty|payload cannot be nil"
    r"|statCode cannot be empty|userId too long|id too long|malformed message"
    r"|\w+ contains invalid characters|\w+ must be a string|\w+ must be a number"
    r"|\w+ is not a number|message must be a JSON object|payload must be an object"
    r"|cannot decode JSON: .*)$",
    re.DOTALL,
)

# One goal of every family and period kind, for both sources.
ALL_KINDS = parse_config(
    {
        "challenges": [
            {
                "challengeId": "plain",
                "goals": [
                    {"goalId": "l-abs", "eventSource": "login", "requirement": {"targetValue": 3}},
                    {
                        "goalId": "l-daily",
                        "eventSource": "login",
                        "type": "daily",
                        "requirement": {"targetValue": 1},
                    },
                    {
                        "goalId": "s-abs",
                        "eventSource": "statistic",
                        "requirement": {"statCode": "s", "targetValue": 10},
                    },
                    {
                        "goalId": "s-inc",
                        "eventSource": "statistic",
                        "type": "increment",
                        "requirement": {"statCode": "s", "targetValue": 10},
                    },
                    {
                        "goalId": "s-inc-daily",
                        "eventSource": "statistic",
                        "type": "increment",
                        "daily": True,
                        "requirement": {"statCode": "s", "targetValue": 10},
                    },
                ],
            },
            *[
                {
                    "challengeId": f"rot-{schedule}",
                    "rotation": {
                        "enabled": True,
                        "type": "global",
                        "schedule": schedule,
                        "onExpiry": {"resetProgress": True},
                    },
                    "goals": [
                        {
                            "goalId": f"rel-{schedule}",
                            "eventSource": "statistic",
                            "requirement": {
                                "statCode": "s",
                                "targetValue": 10,
                                "progressMode": "relative",
                            },
                        },
                        {
                            "goalId": f"rel-login-{schedule}",
                            "eventSource": "login",
                            "requirement": {"targetValue": 5, "progressMode": "relative"},
                        },
                    ],
                }
                for schedule in ("daily", "weekly", "monthly")
            ],
        ]
    }
)


def assert_invariants(event: Event, received: datetime | None = None) -> None:
    """What every accepted event satisfies, whatever the source (contract §2); with
    `received`, its time is also inside the contract's default bounds (§1.3)."""
    assert 0 < len(event.user_id) <= 100
    for text in (event.user_id, event.event_id, event.namespace, event.stat_code):
        assert "\x00" not in text
        text.encode("utf-8")  # no lone surrogates
    assert type(event.value) is int and INT_MIN <= event.value <= INT_MAX
    assert type(event.inc) is int and INT_MIN <= event.inc <= INT_MAX
    assert event.event_time.tzinfo is None
    assert FLOOR <= event.event_time <= CEILING
    if received is not None:
        assert CONTRACT_MIN <= event.event_time <= received + CONTRACT_SKEW
    if event.type is EventType.STATISTIC:
        assert event.stat_code


def assert_folds_whole(event: Event, config: ChallengeConfig = ALL_KINDS) -> None:
    """The event folds into goals of every kind without raising; amounts stay INT."""
    source = Source.LOGIN if event.type is EventType.LOGIN else Source.STATISTIC
    deltas: dict = {}
    fold(deltas, event, config.goals_for(source, "s"))
    for delta in deltas.values():
        assert isinstance(delta, Delta)
        for number in (delta.amount, delta.value, delta.first_base or 0):
            assert INT_MIN <= number <= INT_MAX
