"""A seeded stream of events for comparing the modes (file replay, Kafka workers, gRPC):
several days across a month end and an ISO week, goals of every kind, redelivered
duplicates, and arrival shuffled within small windows.

The shuffle reorders only events that touch no common goal (another user, or the same
user's login beside a statistic, or two statistics of different codes): one (user, goal)
sees its events in event-time order in every mode. That is what makes the modes
comparable at all — gRPC one call per event commits each event in its own flush, and
what a flush committed stays (docs/kafka.md "Ordering"); the order *within* a flush is
covered by tests/unit/test_delta_order.py and tests/db/test_arrival_order.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from app.kafka.topics import LOGIN_SUFFIX, STAT_SUFFIX


def _goal(goal_id: str, source: str, target: int, **extra: Any) -> dict[str, Any]:
    requirement: dict[str, Any] = {"targetValue": target}
    if ":" in source:
        source, requirement["statCode"] = source.split(":")
    if extra.pop("relative", False):
        requirement["progressMode"] = "relative"
    return {"goalId": goal_id, "name": goal_id, "eventSource": source,
            "requirement": requirement, **extra}  # fmt: skip


def _rotating(schedule: str, reset: bool, target: int) -> dict[str, Any]:
    tag = f"{schedule}-{'reset' if reset else 'keep'}"
    return {
        "challengeId": f"rot-{tag}",
        "name": tag,
        "rotation": {
            "enabled": True,
            "type": "global",
            "schedule": schedule,
            "onExpiry": {"resetProgress": reset, "allowReselection": False},
        },
        "goals": [
            _goal(f"score-{tag}", "statistic:score", target, relative=True),
            _goal(f"logins-{tag}", "login", 3, relative=True),
        ],
    }


EVERY_KIND: dict[str, Any] = {
    "challenges": [
        {
            "challengeId": "plain",
            "name": "plain",
            "goals": [
                _goal("logins-abs", "login", 6),
                _goal("logins-inc", "login", 9, type="increment"),
                _goal("daily-login", "login", 1, type="daily"),
                _goal("login-streak", "login", 3, type="increment", daily=True),
                _goal("wins-abs", "statistic:match_wins", 12),
                _goal("kills-inc", "statistic:enemy_kills", 40, type="increment"),
                _goal("kills-streak", "statistic:enemy_kills", 4, type="increment", daily=True),
                _goal("daily-kill", "statistic:enemy_kills", 1, type="daily"),
                _goal("score-rel", "statistic:score", 35, relative=True),
            ],
        },
        _rotating("daily", True, 10),
        _rotating("weekly", False, 25),
        _rotating("monthly", True, 22),
        _rotating("monthly", False, 40),
    ]
}

START = datetime(2026, 10, 30, 6, 0)  # a Friday: a month end and a Monday follow
STATS = ("match_wins", "enemy_kills", "score")


@dataclass(frozen=True)
class StreamEvent:
    event_id: str
    user: str
    kind: str  # "login" or a stat code
    when: datetime
    value: float = 0.0
    inc: float = 0.0
    short: bool = False  # the short JSON shape (contract §1.2)

    @property
    def stamp(self) -> str:
        return self.when.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")

    def json(self, ns: str) -> bytes:
        short = self.short
        if self.kind == "login":
            payload: dict[str, Any] = {}
            obj: dict[str, Any] = {"id": self.event_id, "name": "userLoggedIn"}
        else:
            payload = {"statCode": self.kind, "inc": self.inc}
            payload["value" if short else "latestValue"] = self.value
            obj = {"id": self.event_id, "name": "statItemUpdated"}
        if short:
            payload.update(userId=self.user, namespace=ns)
        else:
            obj.update(namespace=ns, userId=self.user)
        obj.update(timestamp=self.stamp, payload=payload)
        return orjson.dumps(obj)

    def topic(self, ns: str) -> str:
        return f"{ns}.{LOGIN_SUFFIX if self.kind == 'login' else STAT_SUFFIX}"


@dataclass
class Stream:
    events: list[StreamEvent]  # in arrival order, duplicates included

    def lines(self, ns: str) -> list[bytes]:
        """JSON lines, both shapes."""
        return [e.json(ns) for e in self.events]

    @property
    def users(self) -> list[str]:
        return sorted({e.user for e in self.events})


def _user_events(rng: random.Random, user: str, serial: int, days: int) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    moment = START + timedelta(minutes=rng.randint(0, 600))
    end = START + timedelta(days=days)
    totals = dict.fromkeys(STATS, 0)
    n = 0
    while moment < end:
        kind = rng.choice(["login", "login", *STATS])
        value = inc = 0.0
        if kind != "login":
            step = rng.randint(-2, 9) if kind != "match_wins" else rng.choice([-1, 1, 1, 2])
            inc = float(step if kind != "score" else max(step, 0))
            totals[kind] = max(totals[kind] + step, 0)
            value = float(totals[kind]) + rng.choice([0.0, 0.0, 0.4, 0.9])
        short = rng.random() < 0.3
        out.append(StreamEvent(f"{serial:03d}-{n:04d}", user, kind, moment, value, inc, short))
        n += 1
        moment += timedelta(seconds=rng.choice([1, 7, 60, 300, 3600, 4 * 3600, 9 * 3600]))
    return out


def _conflict(a: StreamEvent, b: StreamEvent) -> bool:
    """Both may move one (user, goal): their order must stay."""
    return a.user == b.user and a.kind == b.kind


def _shuffle_window(rng: random.Random, window: list[StreamEvent]) -> list[StreamEvent]:
    """A random order of `window` keeping every conflicting pair in its order."""
    left, out = window[:], []
    while left:
        free = [i for i, e in enumerate(left) if not any(_conflict(p, e) for p in left[:i])]
        out.append(left.pop(rng.choice(free)))
    return out


def make_stream(seed: int = 11, users: int = 60, days: int = 4, window: int = 8) -> Stream:
    rng = random.Random(seed)
    names = [f"player-{i:03d}:{'eu' if i % 2 else 'us'}" for i in range(users)]
    events = [e for i, name in enumerate(names) for e in _user_events(rng, name, i, days)]
    events.sort(key=lambda e: (e.when, e.event_id))
    arrived: list[StreamEvent] = []
    for start in range(0, len(events), window):
        arrived += _shuffle_window(rng, events[start : start + window])
    # redeliveries: a copy of an earlier event a few places later (same id, same body)
    for position in sorted(rng.sample(range(len(arrived)), len(arrived) // 20), reverse=True):
        arrived.insert(min(position + rng.randint(1, 6), len(arrived)), arrived[position])
    return Stream(arrived)
