"""Kafka test kit: a unique namespace per test, topics, producing, a real worker process,
and "everything consumed and committed" conditions polled with deadlines."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.kafka.admin import ensure_topics
from app.kafka.aiokafka_internals import refresh_metadata
from app.kafka.topics import LOGIN_SUFFIX, STAT_SUFFIX
from tables.schema import user_goal_progress
from tests.helpers.process import ServiceProcess, free_port, sample_sum, scrape

ROOT = Path(__file__).resolve().parents[2]
BASE_TIME = datetime(2026, 11, 2, 0, 0, 0)  # a Monday

TEST_CONFIG = {
    "challenges": [
        {
            "challengeId": "kc",
            "name": "kafka test",
            "goals": [
                {
                    "goalId": "login-5",
                    "name": "login-5",
                    "eventSource": "login",
                    "type": "increment",
                    "requirement": {"targetValue": 5, "operator": ">="},
                },
                {
                    "goalId": "kills-100",
                    "name": "kills-100",
                    "eventSource": "statistic",
                    "type": "increment",
                    "requirement": {
                        "statCode": "enemy_kills",
                        "targetValue": 100,
                        "operator": ">=",
                    },
                },
                {
                    "goalId": "wins-10",
                    "name": "wins-10",
                    "eventSource": "statistic",
                    "type": "absolute",
                    "requirement": {"statCode": "match_wins", "targetValue": 10, "operator": ">="},
                },
            ],
        }
    ]
}


def new_namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def login_topic(ns: str) -> str:
    return f"{ns}.{LOGIN_SUFFIX}"


def stat_topic(ns: str) -> str:
    return f"{ns}.{STAT_SUFFIX}"


def write_config(directory: Path, config: dict | None = None) -> Path:
    path = directory / "challenges.json"
    path.write_bytes(orjson.dumps(config or TEST_CONFIG))
    return path


async def create_topics(bootstrap: str, ns: str, partitions: int = 4) -> None:
    await ensure_topics(
        bootstrap,
        {
            login_topic(ns): partitions,
            stat_topic(ns): partitions,
            f"{login_topic(ns)}.dlq": 1,
            f"{stat_topic(ns)}.dlq": 1,
        },
    )


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, every: float = 0.25
) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` at the deadline.

    Connection errors count as "not yet": the shared services may restart under us.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await check()
        except (OSError, DBAPIError, KafkaError) as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# ----------------------------------------------------------------------- events


def iso(moment: datetime) -> str:
    return moment.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def ms(moment: datetime) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp() * 1000)


@dataclass
class Record:
    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None
    timestamp_ms: int | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def login_json(ns: str, user: str, when: datetime | None, short: bool = False) -> bytes:
    event_id = uuid.uuid4().hex
    if short:
        obj: dict[str, Any] = {"id": event_id, "payload": {"userId": user, "namespace": ns}}
    else:
        obj = {"id": event_id, "namespace": ns, "userId": user, "payload": {}}
    if when is not None:
        obj["timestamp"] = iso(when)
    return orjson.dumps(obj)


def stat_json(
    ns: str,
    user: str,
    stat: str,
    value: float,
    inc: float,
    when: datetime | None,
    short: bool = False,
) -> bytes:
    event_id = uuid.uuid4().hex
    if short:
        payload = {"userId": user, "namespace": ns, "statCode": stat, "value": value, "inc": inc}
        obj: dict[str, Any] = {"id": event_id, "payload": payload}
    else:
        obj = {
            "id": event_id,
            "namespace": ns,
            "userId": user,
            "payload": {"statCode": stat, "latestValue": value, "inc": inc},
        }
    if when is not None:
        obj["timestamp"] = iso(when)
    return orjson.dumps(obj)


@dataclass
class Expected:
    """Independent expectation for TEST_CONFIG, from counts per user."""

    logins: dict[str, int] = field(default_factory=dict)
    kills: dict[str, int] = field(default_factory=dict)
    wins: dict[str, tuple[datetime, int]] = field(default_factory=dict)

    def login(self, user: str) -> None:
        self.logins[user] = self.logins.get(user, 0) + 1

    def kill(self, user: str, inc: int) -> None:
        self.kills[user] = self.kills.get(user, 0) + (inc if inc > 0 else 1)

    def win(self, user: str, value: int, when: datetime) -> None:
        if user not in self.wins or when >= self.wins[user][0]:
            self.wins[user] = (when, value)

    def rows(self) -> dict[tuple[str, str], tuple[int, str]]:
        out: dict[tuple[str, str], tuple[int, str]] = {}

        def status(progress: int, target: int) -> str:
            return "completed" if progress >= target else "in_progress"

        for user, n in self.logins.items():
            out[(user, "login-5")] = (n, status(n, 5))
        for user, n in self.kills.items():
            out[(user, "kills-100")] = (n, status(n, 100))
        for user, (_, v) in self.wins.items():
            out[(user, "wins-10")] = (v, status(v, 10))
        return out


def mixed_stream(
    ns: str,
    events: int,
    users: int,
    seed: int = 7,
    keyed: bool = True,
    start: datetime = BASE_TIME,
) -> tuple[list[Record], Expected]:
    """A mixed login/kills/wins stream with increasing event time per user from `start`."""
    rng = random.Random(seed)
    names = [f"user:{i:05d}" for i in range(users)]
    wins = dict.fromkeys(names, 0)
    clock = dict.fromkeys(names, start)
    expected = Expected()
    records: list[Record] = []
    for _ in range(events):
        user = rng.choice(names)
        clock[user] += timedelta(seconds=rng.randint(1, 60))
        when = clock[user]
        key = user.encode() if keyed else None
        roll = rng.random()
        if roll < 0.3:
            records.append(Record(login_topic(ns), login_json(ns, user, when), key))
            expected.login(user)
        elif roll < 0.7:
            inc = rng.randint(1, 5)
            value = rng.randint(0, 10_000)
            records.append(
                Record(stat_topic(ns), stat_json(ns, user, "enemy_kills", value, inc, when), key)
            )
            expected.kill(user, inc)
        else:
            wins[user] += 1
            records.append(
                Record(
                    stat_topic(ns),
                    stat_json(ns, user, "match_wins", wins[user], 1, when, short=True),
                    key,
                )
            )
            expected.win(user, wins[user], when)
    return records, expected


async def produce(bootstrap: str, records: Iterable[Record]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        pending = []
        for r in records:
            pending.append(
                await producer.send(
                    r.topic,
                    r.value,
                    key=r.key,
                    partition=r.partition,
                    timestamp_ms=r.timestamp_ms,
                    headers=r.headers or None,
                )
            )
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


# ----------------------------------------------------------------------- state


async def table(engine: AsyncEngine) -> dict[tuple[str, str], tuple[int, str]]:
    t = user_goal_progress
    async with engine.connect() as conn:
        rows = await conn.execute(select(t.c.user_id, t.c.goal_id, t.c.progress, t.c.status))
        return {(u, g): (p, s) for u, g, p, s in rows}


async def end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await refresh_metadata(consumer)
                parts = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in parts]
        return dict(await consumer.end_offsets(tps)) if tps else {}
    finally:
        await consumer.stop()


async def group_offsets(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in found.items()}
    finally:
        await admin.close()


async def drained(bootstrap: str, engine: AsyncEngine, ns: str, group: str) -> bool:
    """All source records forwarded (group offsets at the end) and every forwarded record
    applied by a committed flush (stored repartition positions at the end)."""
    sources = await end_offsets(bootstrap, [login_topic(ns), stat_topic(ns)])
    committed = await group_offsets(bootstrap, group)
    if any(committed.get(tp, 0) < end for tp, end in sources.items() if end > 0):
        return False
    by_user = f"{ns}.{group}.events-by-user"
    ends = await end_offsets(bootstrap, [by_user])
    async with engine.connect() as conn:
        stored = dict(
            (
                await conn.execute(
                    text(
                        "SELECT partition, next_offset FROM challenge_consumer_offsets "
                        "WHERE consumer_group = :g AND topic = :t"
                    ),
                    {"g": group, "t": by_user},
                )
            ).all()
        )
    return all(stored.get(tp.partition, 0) >= end for tp, end in ends.items() if end > 0)


# ----------------------------------------------------------------------- worker


class Worker(ServiceProcess):
    """`python -m app worker` as a real subprocess."""

    def __init__(self, pg_url: str, bootstrap: str, ns: str, config: Path, log: Path, **env: str):
        self.group = env.pop("KAFKA_CONSUMER_GROUP", f"ceh-{ns}")
        self.port = free_port()
        full_env = {
            **os.environ,
            "DATABASE_URL": pg_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "AB_NAMESPACE": ns,
            "KAFKA_CONSUMER_GROUP": self.group,
            "CONFIG_PATH": str(config),
            "METRICS_PORT": str(self.port),
            "BUFFER_FLUSH_INTERVAL": "200ms",
            "KAFKA_REPARTITION_PARTITIONS": "4",
            "LOG_LEVEL": "info",
            **env,
        }
        super().__init__("worker", full_env, log)

    @property
    def log(self) -> Path:
        return self.log_path

    def start(self) -> Worker:
        self.start_process()
        return self

    def metric(self, name: str) -> float | None:
        """The sum over the metric's label sets; None while the worker does not answer."""
        try:
            body = scrape(self.port, timeout=2)
        except OSError:
            return None
        return sample_sum(body, name)

    async def wait_ready(self, timeout: float = 60) -> None:
        async def ready() -> bool:
            assert self.running(), self.tail()
            return self.metric("challenge_event_handler_kafka_ready") == 1.0

        await wait_for(ready, timeout, "worker ready")

    def tail(self, lines: int = 30) -> str:
        return self.log_tail(lines)
