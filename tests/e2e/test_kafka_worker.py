"""Kafka mode end to end: a real `python -m app worker`, real broker, real PostgreSQL."""

from __future__ import annotations

import copy
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.events import Event, EventType
from app.kafka.codec import Forwarded, encode
from tables.schema import user_goal_progress
from tests.helpers.kafka import (
    BASE_TIME,
    ROOT,
    TEST_CONFIG,
    Expected,
    Record,
    Worker,
    create_topics,
    drained,
    login_json,
    login_topic,
    ms,
    new_namespace,
    produce,
    stat_json,
    stat_topic,
    table,
    wait_for,
    write_config,
)
from tests.helpers.process import run_app

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def ns(kafka_bootstrap: str) -> str:
    namespace = new_namespace()
    await create_topics(kafka_bootstrap, namespace, partitions=4)
    return namespace


@pytest.fixture
async def worker(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, ns: str, tmp_path: Path
) -> AsyncIterator[Worker]:
    config = copy.deepcopy(TEST_CONFIG)
    config["challenges"][0]["goals"].append(
        {"goalId": "daily-login", "name": "d", "eventSource": "login", "type": "daily",
         "requirement": {"targetValue": 1, "operator": ">="}}
    )  # fmt: skip
    w = Worker(
        pg_url, kafka_bootstrap, ns, write_config(tmp_path, config), tmp_path / "worker.log"
    ).start()
    try:
        await w.wait_ready()
        yield w
    finally:
        w.terminate()


async def settle(kafka_bootstrap: str, engine: AsyncEngine, ns: str, w: Worker) -> None:
    async def done() -> bool:
        assert w.proc is not None and w.proc.poll() is None, w.tail()
        return await drained(kafka_bootstrap, engine, ns, w.group)

    await wait_for(done, 60, "worker drained")


async def test_both_shapes_keyed_and_unkeyed(
    kafka_bootstrap: str, pg_engine: AsyncEngine, ns: str, worker: Worker
):
    t0 = BASE_TIME + timedelta(hours=8)
    # inside the broker's retention (older records may be deleted before they are read)
    record_time = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(hours=1)
    records = [
        # proto-JSON shape, keyed by something that is not the user id
        Record(login_topic(ns), login_json(ns, "alice", t0), key=b"session-1"),
        Record(stat_topic(ns), stat_json(ns, "alice", "match_wins", 12.9, 1, t0), key=b"x"),
        # short shape, unkeyed
        Record(login_topic(ns), login_json(ns, "bob:1", t0, short=True)),
        Record(stat_topic(ns), stat_json(ns, "bob:1", "enemy_kills", 0, 7, t0, short=True)),
        Record(stat_topic(ns), stat_json(ns, "bob:1", "enemy_kills", 0, 0, t0, short=True)),
        # no timestamp in the event: the record timestamp is the event time
        Record(login_topic(ns), login_json(ns, "carol", None), timestamp_ms=ms(record_time)),
        # another namespace: accepted and skipped
        Record(login_topic(ns), login_json("other-game", "dave", t0)),
    ]
    await produce(kafka_bootstrap, records)
    await settle(kafka_bootstrap, pg_engine, ns, worker)
    assert await table(pg_engine) == {
        ("alice", "login-5"): (1, "in_progress"),
        ("alice", "daily-login"): (1, "completed"),
        ("alice", "wins-10"): (12, "completed"),
        ("bob:1", "login-5"): (1, "in_progress"),
        ("bob:1", "daily-login"): (1, "completed"),
        ("bob:1", "kills-100"): (8, "in_progress"),
        ("carol", "login-5"): (1, "in_progress"),
        ("carol", "daily-login"): (1, "completed"),
    }
    t = user_goal_progress
    async with pg_engine.connect() as conn:
        completed = await conn.scalar(
            select(t.c.completed_at).where(t.c.user_id == "carol", t.c.goal_id == "daily-login")
        )
    assert completed == record_time


async def test_bad_records_are_dead_lettered_and_the_rest_applied(
    kafka_bootstrap: str, pg_engine: AsyncEngine, ns: str, worker: Worker
):
    t0 = BASE_TIME
    bad = [
        (login_topic(ns), b"{not json", "undecodable"),
        (login_topic(ns), b'{"id":"e1","namespace":"x","payload":{}}', "empty_user_id"),
        (stat_topic(ns), b'{"id":"e2","userId":"u1","namespace":"x"}', "nil_payload"),
        (stat_topic(ns), b'{"id":"e3","userId":"u1","payload":{"latestValue":1}}', "empty_stat_code"),
        (login_topic(ns), login_json(ns, "u" * 101, t0), "user_id_too_long"),
        (stat_topic(ns), b"[1, 2]", "wrong_type"),
    ]  # fmt: skip
    records: list[Record] = []
    expected = Expected()
    for i, (topic, value, _reason) in enumerate(bad):
        records.append(Record(login_topic(ns), login_json(ns, "good", t0 + timedelta(i))))
        expected.login("good")
        records.append(Record(topic, value, key=b"k%d" % i))
    records.append(Record(login_topic(ns), login_json(ns, "good", t0 + timedelta(days=9))))
    expected.login("good")
    await produce(kafka_bootstrap, records)
    await settle(kafka_bootstrap, pg_engine, ns, worker)
    rows = await table(pg_engine)
    assert rows[("good", "login-5")] == expected.rows()[("good", "login-5")]

    dead: list[tuple[bytes, str]] = []
    consumer = AIOKafkaConsumer(
        f"{login_topic(ns)}.dlq",
        f"{stat_topic(ns)}.dlq",
        bootstrap_servers=kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:

        async def fetch() -> bool:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for r in batch:
                    headers = dict(r.headers)
                    dead.append((r.value, headers["reason"].decode()))
                    assert headers["source_topic"].decode() == r.topic.removesuffix(".dlq")
            return len(dead) >= len(bad)

        await wait_for(fetch, 30, "dead letters", every=0)
    finally:
        await consumer.stop()
    assert sorted(dead) == sorted((value, reason) for _t, value, reason in bad)
    assert worker.metric("challenge_event_handler_dead_lettered_total") == len(bad)


async def test_one_users_absolute_values_across_partitions_end_at_the_last(
    kafka_bootstrap: str, pg_engine: AsyncEngine, ns: str, worker: Worker
):
    records = [
        Record(
            stat_topic(ns),
            stat_json(ns, "solo", "match_wins", i, 1, BASE_TIME + timedelta(seconds=i)),
            partition=i % 4,  # spread over every source partition; no key
        )
        for i in range(1, 1001)
    ]
    await produce(kafka_bootstrap, records)
    await settle(kafka_bootstrap, pg_engine, ns, worker)
    assert await table(pg_engine) == {("solo", "wins-10"): (1000, "completed")}


async def test_copies_forwarded_twice_by_the_source_hop_are_applied_once(
    kafka_bootstrap: str, pg_engine: AsyncEngine, ns: str, worker: Worker
):
    """A crash between forwarding and committing the source offset forwards again: the
    copy carries the same source position and must be dropped."""
    by_user = f"{ns}.{worker.group}.events-by-user"
    source = login_topic(ns)

    def forwarded(source_offset: int, seconds: int) -> Record:
        event = Event(
            event_id=f"e{source_offset}",
            type=EventType.LOGIN,
            namespace=ns,
            user_id="dup",
            event_time=BASE_TIME + timedelta(seconds=seconds),
        )
        value = encode(Forwarded(event, source, 0, source_offset, None))
        return Record(by_user, value, key=b"dup")

    await produce(
        kafka_bootstrap,
        [forwarded(5, 1), forwarded(5, 1), forwarded(3, 2), forwarded(6, 3), forwarded(6, 3)],
    )
    await settle(kafka_bootstrap, pg_engine, ns, worker)
    assert await table(pg_engine) == {
        ("dup", "login-5"): (2, "in_progress"),
        ("dup", "daily-login"): (1, "completed"),
    }
    assert worker.metric("challenge_event_handler_kafka_redelivered_total") == 3


async def test_sighup_reloads_a_valid_config_and_keeps_the_old_one_otherwise(
    kafka_bootstrap: str, pg_engine: AsyncEngine, ns: str, worker: Worker
):
    config_path = Path(worker.env["CONFIG_PATH"])
    valid = copy.deepcopy(TEST_CONFIG)
    valid["challenges"][0]["goals"].append(
        {"goalId": "login-any", "name": "l", "eventSource": "login", "type": "increment",
         "requirement": {"targetValue": 1000, "operator": ">="}}
    )  # fmt: skip
    assert worker.proc is not None

    async def logged(text_: str, count: int) -> bool:
        return worker.log.read_text(errors="replace").count(text_) >= count

    write_config(config_path.parent, {"challenges": []})
    worker.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: logged("config reload refused", 1), 30, "reload refused")
    await produce(kafka_bootstrap, [Record(login_topic(ns), login_json(ns, "before", BASE_TIME))])
    await settle(kafka_bootstrap, pg_engine, ns, worker)

    write_config(config_path.parent, valid)
    worker.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: logged("config reloaded", 1), 30, "config reloaded")
    await produce(kafka_bootstrap, [Record(login_topic(ns), login_json(ns, "after", BASE_TIME))])
    await settle(kafka_bootstrap, pg_engine, ns, worker)
    assert {goal for user, goal in await table(pg_engine) if user == "before"} == {
        "login-5",
        "daily-login",
    }
    assert {goal for user, goal in await table(pg_engine) if user == "after"} == {
        "login-5",
        "login-any",
    }


async def test_produce_command_then_progress_matches_the_core_file_replay(
    kafka_bootstrap: str, pg_url: str, pg_engine: AsyncEngine, ns: str, worker: Worker,
    tmp_path: Path,
):  # fmt: skip
    """The dev loop: `produce FILE` -> worker -> `progress USER`; the rows equal a run of
    the same file through the core pipeline (`replay FILE`)."""
    events = tmp_path / "events.jsonl"
    sample = (ROOT / "config" / "sample-events.jsonl").read_text()
    events.write_text(sample.replace('"mygame"', f'"{ns}"'))
    env = {**worker.env, "LOG_LEVEL": "warning"}

    def cli(*args: str) -> str:
        return run_app(env, *args)

    assert "records" in cli("produce", str(events))
    await settle(kafka_bootstrap, pg_engine, ns, worker)
    assert "login-5" in cli("progress", "alice")
    live = await table(pg_engine)
    assert live
    async with pg_engine.begin() as conn:
        await conn.execute(text("DELETE FROM user_goal_progress"))
        await conn.execute(text("DELETE FROM challenge_daily_marks"))
    cli("replay", str(events))
    assert await table(pg_engine) == live


async def test_same_event_id_at_another_offset_after_a_restart_is_applied_once(
    pg_url: str, kafka_bootstrap: str, pg_engine: AsyncEngine, ns: str, worker: Worker,
    tmp_path: Path,
):  # fmt: skip
    """A producer retry writes one event twice; the in-memory window is gone after a
    restart, the event ids recorded with the rows are not."""
    event = login_json(ns, "once", BASE_TIME)
    await produce(kafka_bootstrap, [Record(login_topic(ns), event)])
    await settle(kafka_bootstrap, pg_engine, ns, worker)
    assert worker.terminate() == 0
    again = Worker(
        pg_url, kafka_bootstrap, ns, Path(worker.env["CONFIG_PATH"]), tmp_path / "again.log"
    ).start()
    try:
        await again.wait_ready()
        await produce(kafka_bootstrap, [Record(login_topic(ns), event)])
        await settle(kafka_bootstrap, pg_engine, ns, again)
    finally:
        again.terminate()
    assert (await table(pg_engine))[("once", "login-5")] == (1, "in_progress")
