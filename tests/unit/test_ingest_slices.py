"""The source agent's slice fallback (agents/ingest.py): a slice of directly keyed records
whose apply fails (a bug, not bad input: bad input is dead-lettered before it) is applied
record by record, the record that still fails is dead-lettered `internal`, and the rest
of the batch goes on.

The progress runtime here is a recording stand-in that fails for one user: no real input
makes the real one raise (tests/faults/test_fuzz_kafka.py holds it to that), and this is
the agent's own logic under a fault it must survive.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agents.ingest import SLICE, Ingest
from app.core.events import Event, EventType
from app.core.time_bounds import TimeBounds
from tests.helpers.kafka import login_json

WHEN = datetime(2026, 11, 20, 10, 0)
TOPIC = "ns.iam.account.v1.userLoggedIn"


@dataclass
class Message:
    key: bytes
    offset: int
    topic: str = TOPIC
    partition: int = 0
    timestamp: float = 0.0


@dataclass
class Record:
    message: Message
    value: bytes
    acked: bool = False

    def ack(self) -> None:
        self.acked = True


@dataclass
class FailingRuntime:
    """Applies slices; any slice holding `bad_user` raises before applying anything."""

    bad_user: str
    applied: list[str] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)

    async def direct(self, items: list[tuple[Any, Event]]) -> None:
        self.calls.append(len(items))
        if any(event.user_id == self.bad_user for _, event in items):
            raise RuntimeError("a bug in the runtime")
        self.applied.extend(event.user_id for _, event in items)


@dataclass
class DeadLetters:
    sent: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, **record: Any) -> asyncio.Future[None]:
        self.sent.append(record)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@dataclass
class Topic:
    name: str

    def get_topic_name(self) -> str:
        return self.name


@dataclass
class Source:
    topic: Topic
    event_type: EventType
    dlq: DeadLetters


@dataclass
class Kafka:
    runtime: FailingRuntime
    time_bounds: TimeBounds = field(default_factory=TimeBounds)


def ingest(runtime: FailingRuntime, dead_letters: DeadLetters) -> Ingest:
    source: Any = Source(Topic(TOPIC), EventType.LOGIN, dead_letters)
    kafka: Any = Kafka(runtime)
    return Ingest(kafka, source)


def records(users: list[str]) -> list[Record]:
    return [
        Record(Message(user.encode(), offset), login_json("ns", user, WHEN))
        for offset, user in enumerate(users)
    ]


async def test_a_failing_slice_is_applied_record_by_record_and_only_the_culprit_dead_lettered():
    users = [f"user-{i}" for i in range(SLICE + 10)]
    users[5] = "bad-user"
    runtime, dead_letters = FailingRuntime("bad-user"), DeadLetters()
    batch = records(users)
    await ingest(runtime, dead_letters).batch(batch)
    # the first slice failed whole, then went one by one; the remainder slice went whole
    assert runtime.calls == [SLICE, *[1] * SLICE, 10]
    assert runtime.applied == [u for u in users if u != "bad-user"]
    assert len(dead_letters.sent) == 1
    letter = dead_letters.sent[0]
    headers = dict(letter["headers"])
    assert headers["reason"] == b"internal"
    assert b"a bug in the runtime" in headers["error"]
    assert headers["source_offset"] == b"5"
    assert letter["value"] == batch[5].value and letter["key"] == b"bad-user"
    assert batch[5].acked  # dead-lettered, so acked; the others are acked by their flush
    assert not any(r.acked for i, r in enumerate(batch) if i != 5)


async def test_a_slice_that_applies_is_one_call():
    runtime, dead_letters = FailingRuntime("nobody"), DeadLetters()
    await ingest(runtime, dead_letters).batch(records([f"u{i}" for i in range(SLICE)]))
    assert runtime.calls == [SLICE]
    assert dead_letters.sent == []
