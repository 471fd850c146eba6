"""Hostile event times on every source (contract §1.3), against the real services.

Stamps from year 1 (once written as `-infinity`, after which AccelByte's backend answered
HTTP 500 for that player for good) to year 9999, unreadable ones, and Kafka record
timestamps as hostile: through a real `serve`, a real worker (both JSON shapes, keyed and
unkeyed), `replay FILE` and `replay --topic`, each into a fresh database. Afterwards no
time in any column of any table is infinite or outside [EVENT_TIME_MIN, now +
EVENT_TIME_MAX_SKEW] (a period end: one period further), every event was applied at the
next real time (the record time, else the receipt), each fallback was counted by reason,
and an old but plausible time is kept exactly.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from app.core.settings import async_database_url
from tables.db import make_engine
from tests.helpers.databases import fresh_databases
from tests.helpers.grpc import OK, SERVING, Bridge, Server, pb, server_env
from tests.helpers.kafka import (
    Record,
    Worker,
    create_topics,
    drained,
    iso,
    ms,
    new_namespace,
    produce,
    wait_for,
)
from tests.helpers.process import run_app, sample_value, scrape
from tests.helpers.stream import EVERY_KIND
from tests.helpers.times import (
    FALLBACK_METRIC,
    HOSTILE_STAMPS,
    TOO_OLD_MS,
    times_out_of_bounds,
    too_new_record_ms,
    utc_now,
)

pytestmark = pytest.mark.postgres

OLD_BUT_REAL = datetime(2026, 10, 1, 10, 0)  # a replay of last month keeps it


@dataclass(frozen=True)
class Sent:
    user: str
    kind: str  # "login" or a stat code
    stamp: str
    reason: str | None  # why the stamp falls back (None: a real time)
    record_ms: int | None = None  # Kafka record timestamp
    record_reason: str | None = None

    def json(self, ns: str, short: bool) -> bytes:
        if self.kind == "login":
            payload: dict[str, Any] = {}
        else:
            value = {"match_wins": 15.0, "enemy_kills": 5.0, "score": 30.0}[self.kind]
            payload = {"statCode": self.kind, "inc": value}
            payload["value" if short else "latestValue"] = value
        obj: dict[str, Any] = {"id": f"{self.user}-{self.kind}", "timestamp": self.stamp}
        if short:
            payload.update(userId=self.user, namespace=ns)
        else:
            obj.update(userId=self.user, namespace=ns)
        obj["payload"] = payload
        return orjson.dumps(obj)


def hostile(kafka: bool = False) -> list[Sent]:
    """Per hostile stamp one player with a login and a statistic of each code; on Kafka
    every other player's records also carry a hostile record time."""
    recent = ms(utc_now() - timedelta(minutes=10)) if kafka else None
    sent = []
    stamps = [*HOSTILE_STAMPS, (iso(OLD_BUT_REAL), None)]
    for i, (stamp, reason) in enumerate(stamps):
        record_ms, record_reason = recent, None
        if kafka and i % 2:
            record_ms, record_reason = (
                (too_new_record_ms(), "too_new") if i % 4 == 1 else (TOO_OLD_MS, "too_old")
            )
        for kind in ("login", "match_wins", "enemy_kills", "score"):
            sent.append(Sent(f"h{i}:{kind[:1]}", kind, stamp, reason, record_ms, record_reason))
    return sent


def expected_fallbacks(sent: list[Sent]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for s in sent:
        if s.reason is not None:
            counts[s.reason] += 1
            if s.record_reason is not None:
                counts[s.record_reason] += 1
    return counts


@pytest.fixture
def database(postgres_server_url: str) -> Iterator[str]:
    with fresh_databases(postgres_server_url, 1) as (url,):
        yield url


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "challenges.json"
    path.write_bytes(orjson.dumps(EVERY_KIND))
    return path


async def applied_times(url: str) -> dict[str, datetime]:
    """user -> the time their goals were applied at (the daily goals' completed_at)."""
    engine = make_engine(async_database_url("DATABASE_URL", url))
    try:
        async with engine.connect() as conn:
            found = await conn.execute(
                text(
                    "SELECT user_id, completed_at FROM user_goal_progress "
                    "WHERE goal_id IN ('daily-login', 'daily-kill')"
                )
            )
            return dict(found.all())
    finally:
        await engine.dispose()


async def check_rows(url: str, sent: list[Sent], started: datetime) -> None:
    """No time out of bounds anywhere; each event applied at its next real time."""
    finished = utc_now()
    assert await times_out_of_bounds(url) == []
    times = await applied_times(url)
    for s in sent:
        if s.kind not in ("login", "enemy_kills"):
            continue
        moment = times[s.user]
        if s.reason is None:
            assert moment == OLD_BUT_REAL, s
        elif s.record_ms is not None and s.record_reason is None:
            assert moment == datetime(1970, 1, 1) + timedelta(milliseconds=s.record_ms), s
        else:  # the receipt time
            assert started - timedelta(seconds=1) <= moment <= finished, (s, moment)


def summary_counts(out: str) -> Counter[str]:
    """The replay summary's 'event time <reason>, next source used: N' lines."""
    counts: Counter[str] = Counter()
    for line in out.splitlines():
        if "next source used:" in line:
            reason = line.split("event time ", 1)[1].split(",", 1)[0].replace(" ", "_")
            counts[reason] += int(line.rsplit(":", 1)[1])
    return counts


def env_for(url: str, ns: str, config: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        "AB_NAMESPACE": ns,
        "CONFIG_PATH": str(config),
        "LOG_LEVEL": "warning",
        **extra,
    }


# ------------------------------------------------------------------------ the sources


def grpc_message(s: Sent, ns: str) -> Any:
    if s.kind == "login":
        return pb.login_pb2.UserLoggedIn(
            id=f"{s.user}-l", namespace=ns, user_id=s.user, timestamp=s.stamp
        )
    value = {"match_wins": 15.0, "enemy_kills": 5.0, "score": 30.0}[s.kind]
    return pb.stat_pb2.StatItemUpdated(
        id=f"{s.user}-s",
        namespace=ns,
        user_id=s.user,
        timestamp=s.stamp,
        payload=pb.stat_pb2.StatItem(stat_code=s.kind, latest_value=value, inc=value),
    )


async def test_grpc(database: str, config: Path, tmp_path: Path):
    sent = hostile()
    ns = "mygame"
    server = Server(server_env(database, config), tmp_path / "serve.log").start()
    try:
        await server.wait_health(SERVING)
        started = utc_now()
        async with Bridge(server.target) as bridge:
            answers = await bridge.call_all([grpc_message(s, ns) for s in sent])
        assert {code for code, _ in answers} == {OK}
        body = await server.metrics()
        counted = {
            reason: sample_value(body, FALLBACK_METRIC, f'reason="{reason}"')
            for reason in ("too_old", "too_new", "unreadable")
        }
        assert counted == expected_fallbacks(sent)
        await check_rows(database, sent, started)
        assert server.terminate() == 0
        lines = [
            line for line in server.log_text().splitlines() if "event times passed over" in line
        ]
        assert 1 <= len(lines) <= 2  # one a minute at most
    finally:
        server.stop_quietly()


@pytest.mark.kafka
async def test_kafka_worker_both_shapes(
    database: str, config: Path, tmp_path: Path, kafka_bootstrap: str
):
    sent = hostile(kafka=True)
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=4)
    records = []
    for i, s in enumerate(sent):
        short = i % 2 == 0
        topic = f"{ns}.iam.account.v1.userLoggedIn" if s.kind == "login" else (
            f"{ns}.social.statistic.v1.statItemUpdated"
        )  # fmt: skip
        key = s.user.encode() if i % 3 else None  # keyed: applied direct; else forwarded
        records.append(Record(topic, s.json(ns, short), key=key, timestamp_ms=s.record_ms))
    worker = Worker(database, kafka_bootstrap, ns, config, tmp_path / "w.log")
    engine = make_engine(async_database_url("DATABASE_URL", database))
    try:
        worker.start()
        await worker.wait_ready()
        started = utc_now()
        await produce(kafka_bootstrap, records)

        async def done() -> bool:
            assert worker.running(), worker.tail()
            return await drained(kafka_bootstrap, engine, ns, worker.group)

        await wait_for(done, 90, "worker drained")
        body = await asyncio.to_thread(scrape, worker.port)
        counted = {
            reason: sample_value(body, FALLBACK_METRIC, f'reason="{reason}"')
            for reason in ("too_old", "too_new", "unreadable")
        }
        assert counted == expected_fallbacks(sent)
        await check_rows(database, sent, started)
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.stop_quietly()
        await engine.dispose()


async def test_file_replay(database: str, config: Path, tmp_path: Path):
    sent = hostile()
    ns = "mygame"
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(s.json(ns, i % 2 == 0) for i, s in enumerate(sent)) + b"\n")
    started = utc_now()
    out = await asyncio.to_thread(run_app, env_for(database, ns, config), "replay", str(events))
    assert f"{len(sent)} applied" in out, out
    assert summary_counts(out) == expected_fallbacks(sent), out
    await check_rows(database, sent, started)


@pytest.mark.kafka
async def test_topic_replay(database: str, config: Path, tmp_path: Path, kafka_bootstrap: str):
    sent = hostile(kafka=True)
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=2)
    login, stat = f"{ns}.iam.account.v1.userLoggedIn", f"{ns}.social.statistic.v1.statItemUpdated"
    await produce(
        kafka_bootstrap,
        [
            Record(login if s.kind == "login" else stat, s.json(ns, i % 2 == 1),
                   key=s.user.encode(), timestamp_ms=s.record_ms)
            for i, s in enumerate(sent)
        ],
    )  # fmt: skip
    env = env_for(database, ns, config, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    started = utc_now()
    counts: Counter[str] = Counter()
    for topic in (login, stat):
        out = await asyncio.to_thread(
            run_app, env, "replay", "--topic", topic, "--from-offset", "0"
        )
        assert " 0 invalid" in out, out
        counts += summary_counts(out)
    assert counts == expected_fallbacks(sent)
    await check_rows(database, sent, started)
