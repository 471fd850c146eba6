"""The completion publisher (tables/publisher.py) with the real sinks, on PostgreSQL and
SQLite: the `log` sink, the `async-messaging` sink against a gRPC server implementing
the sidecar's real proto (tests/helpers/sidecar.py), the `kafka` sink against the real
broker. Waits are bounded polls on the outbox or on what a sink received.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import uuid
from collections import Counter
from datetime import datetime

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from sqlalchemy import func, select, text

from app.completions.async_messaging import AsyncMessagingSink
from app.completions.kafka_sink import MAX_BATCH_BYTES, KafkaSink
from app.completions.log_sink import LogSink
from app.completions.relay import RelayedSink
from app.core.challenges import parse_config
from app.core.clock import now_utc
from app.core.settings import async_database_url
from app.kafka.admin import ensure_topics
from app.observability import metrics
from tables import outbox
from tables.db import make_engine
from tables.flusher import Flusher
from tables.gdpr import erase_user
from tables.publisher import Publisher
from tables.schema import challenge_completion_deliveries, challenge_goal_completions
from tables.writer import Writer
from tests.helpers.kafka import wait_for
from tests.helpers.sidecar import SidecarStandIn
from tests.helpers.support import completions, flush, goal, login, rotation, stat

CFG = parse_config(
    {
        "challenges": [
            {
                "challengeId": "season",
                "goals": [
                    goal("win-3", "statistic:match_wins", target=3),
                    goal("daily-login", type="daily"),
                ],
            },
            {
                "challengeId": "weekly",
                "goals": [goal("weekly-login", target=1, progressMode="relative")],
                "rotation": {"enabled": True, "type": "global", **rotation("weekly", True, True)},
            },
        ]
    }
)


def _rotating(goal_id: str) -> bool:
    found = CFG.goal(goal_id)
    return found is not None and found.rotation is not None


def _publisher(engine, sinks, **kw) -> Publisher:
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("max_backoff", 0.3)
    kw.setdefault("standby_interval", 0.1)
    return Publisher(engine, sinks, rotating=_rotating, **kw)


async def _complete(engine, users: list[str], when: str = "2026-11-18 10:00") -> None:
    """Three completions per user: win-3, daily-login, weekly-login."""
    events = []
    for user in users:
        events += [stat(user, "match_wins", 5, when), login(user, when)]
    result = await flush(engine, CFG, events)
    assert result.completions == 3 * len(users)


async def _drained(engine) -> bool:
    async with engine.connect() as conn:
        return (await outbox.backlog(conn)).depth == 0


def _sink(sidecar: SidecarStandIn, topic: str = "goalCompleted") -> AsyncMessagingSink:
    host, port = sidecar.target
    return AsyncMessagingSink(host, port, topic, timeout=2.0)


async def test_every_completion_goes_to_every_sink_once_in_id_order(engine):
    users = [f"u{i}" for i in range(4)]
    await _complete(engine, users)
    stream = io.StringIO()
    sidecar = await SidecarStandIn().start()
    publisher = _publisher(engine, [LogSink(stream), _sink(sidecar)], batch_size=5)
    publisher.start()
    try:
        await wait_for(lambda: _drained(engine), 20, "the outbox published")
    finally:
        await publisher.stop()
        await sidecar.stop()
    rows = await completions(engine)
    ids = [str(r.id) for r in rows]
    logged = [orjson.loads(line) for line in _lines(stream)]
    assert [b["id"] for b in logged] == ids  # the log sink writes one after the other
    assert sorted(sidecar.ids(), key=int) == ids  # each once; calls of different users overlap
    assert sidecar.first_arrivals_by_user() == _ids_by_user(rows)
    assert all(r.published_at is not None for r in rows)
    assert {r.topic for r in sidecar.received} == {"goalCompleted"}
    assert all(r.metadata == {"userId": r.body["userId"]} for r in sidecar.received)
    async with engine.connect() as conn:
        marks = (
            await conn.execute(
                select(challenge_completion_deliveries.c.sink, func.count()).group_by(
                    challenge_completion_deliveries.c.sink
                )
            )
        ).all()
    assert dict(marks) == {"log": 12, "async-messaging": 12}
    by_goal = {(b["userId"], b["payload"]["goalCode"]): b for b in logged}
    weekly = by_goal[("u0", "weekly-login")]
    row = next(r for r in rows if (r.user_id, r.goal_id) == ("u0", "weekly-login"))
    assert weekly == {
        "id": str(row.id),
        "name": "goalCompleted",
        "namespace": "mygame",
        "userId": "u0",
        "timestamp": weekly["timestamp"],
        "payload": {
            "namespace": "mygame",
            "userId": "u0",
            "challengeCode": "weekly",
            "goalCode": "weekly-login",
            "completedAt": "2026-11-18T10:00:00.000000Z",
            "scheduleStart": "2026-11-16T00:00:00.000000Z",
            "scheduleEnd": "2026-11-23T00:00:00.000000Z",
        },
    }
    assert datetime.fromisoformat(weekly["timestamp"].replace("Z", "+00:00")).tzinfo is not None
    # a daily goal has a period in the outbox, but no schedule: it does not rotate
    assert "scheduleStart" not in by_goal[("u0", "daily-login")]["payload"]
    assert "scheduleStart" not in by_goal[("u0", "win-3")]["payload"]


async def test_a_sink_that_is_down_holds_up_no_other_and_drains_when_back(engine):
    await _complete(engine, ["d1", "d2"])
    stream = io.StringIO()
    sidecar = SidecarStandIn()  # not started: the sidecar is down
    failed = metrics.COMPLETIONS.labels("async-messaging", "failed")
    failed_before = failed._value.get()
    publisher = _publisher(engine, [_sink(sidecar), LogSink(stream)])
    publisher.start()
    try:

        async def logged_all() -> bool:
            return len(_lines(stream)) == 6

        await wait_for(logged_all, 20, "the log sink publishing while the sidecar is down")
        await wait_for(
            lambda: _async(failed._value.get() >= failed_before + 2), 20, "failed attempts"
        )
        assert not await _drained(engine)  # the outbox keeps them for the sidecar
        assert all(r.published_at is None for r in await completions(engine))
        await sidecar.start()
        await wait_for(lambda: _drained(engine), 30, "the outbox drained once the sidecar is up")
    finally:
        await publisher.stop()
        await sidecar.stop()
    rows = await completions(engine)
    assert sorted(sidecar.ids(), key=int) == [str(r.id) for r in rows]
    assert sidecar.first_arrivals_by_user() == _ids_by_user(rows)
    assert len(_lines(stream)) == 6  # the log sink sent each once


async def test_completions_held_back_by_a_sink_taken_out_are_published_at_start(engine):
    """Two sinks were configured and one fell behind; it is taken out of COMPLETION_SINKS.
    What the other had delivered is published when the publisher starts with that one
    sink alone, and is not sent again; the rest goes out as usual."""
    await _complete(engine, ["h1", "h2"])
    rows = await completions(engine)
    held = [r.id for r in rows[:4]]  # the log sink had these; the sidecar had none
    async with engine.begin() as conn:
        await outbox.mark(conn, "log", held, ["log", "async-messaging"], now_utc())
    assert not await _drained(engine)
    stream = io.StringIO()
    publisher = _publisher(engine, [LogSink(stream)])
    publisher.start()
    try:
        await wait_for(lambda: _drained(engine), 20, "the outbox published")
    finally:
        await publisher.stop()
    assert [orjson.loads(line)["id"] for line in _lines(stream)] == [str(r.id) for r in rows[4:]]
    assert all(r.published_at is not None for r in await completions(engine))


def _ids_by_user(rows) -> dict[str, list[int]]:
    """Each user's completion ids in id order: the order the user's events must arrive."""
    found: dict[str, list[int]] = {}
    for r in sorted(rows, key=lambda r: r.id):
        found.setdefault(r.user_id, []).append(r.id)
    return found


async def test_a_refusal_mid_batch_keeps_each_users_order_and_loses_nothing(engine):
    """Calls of different users overlap; the sidecar refuses the tenth call it gets. A
    user's next event is never sent before the sidecar accepted the one before, so every
    user's events first arrive in id order; everything arrives; some arrive twice."""
    users = [f"r{i}" for i in range(8)]
    await _complete(engine, users)
    sidecar = await SidecarStandIn().start()
    calls = 0

    def refuse_the_tenth(_request: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 10:
            raise RuntimeError("refused once")

    sidecar.on_receive = refuse_the_tenth
    host, port = sidecar.target
    sink = AsyncMessagingSink(host, port, "goalCompleted", timeout=2.0, in_flight=4)
    failed = metrics.COMPLETIONS.labels("async-messaging", "failed")
    failed_before = failed._value.get()
    publisher = _publisher(engine, [sink], batch_size=50)
    publisher.start()
    try:
        await wait_for(lambda: _drained(engine), 20, "the outbox drained after the refusal")
    finally:
        await publisher.stop()
        await sidecar.stop()
    rows = [r for r in await completions(engine) if r.user_id in users]
    assert len(rows) == 24 and calls > 24
    assert sorted({int(i) for i in sidecar.ids(users)}) == [r.id for r in rows]
    assert {u: ids for u, ids in sidecar.first_arrivals_by_user().items() if u in users} == (
        _ids_by_user(rows)
    )
    assert failed._value.get() == failed_before + 1


async def test_a_relay_killed_mid_batch_is_started_again_and_loses_nothing(engine):
    """COMPLETION_SENDER=process: the sink's calls run in a child process. Killed with -9
    while its calls are in flight, that batch fails (counted), the next is sent by a
    fresh child, and every completion of these hostile ids arrives exactly as stored,
    each user's in id order."""
    users = ['q"uote\\', "emoji-😀-中文", "line\u2028sep", "x" * 100, "plain"]
    await _complete(engine, users)
    sidecar = await SidecarStandIn().start()
    host, port = sidecar.target
    sink = RelayedSink(
        {"sink": "async-messaging", "host": host, "port": port, "topic": "goalCompleted",
         "timeout": 2.0}
    )  # fmt: skip
    killed: list[int] = []

    def kill_the_relay_on_the_fifth(_request: object) -> None:
        if len(sidecar.received) == 5 and sink.pid is not None:
            killed.append(sink.pid)
            os.kill(sink.pid, signal.SIGKILL)

    sidecar.on_receive = kill_the_relay_on_the_fifth
    failed = metrics.COMPLETIONS.labels("async-messaging", "failed")
    failed_before = failed._value.get()
    publisher = _publisher(engine, [sink], batch_size=50)
    publisher.start()
    try:
        await wait_for(lambda: _drained(engine), 30, "the outbox drained after the kill")
        assert killed and sink.pid not in (None, killed[0])  # a fresh relay finished it
    finally:
        await publisher.stop()
        await sidecar.stop()
    assert sink.pid is None  # stopped with the publisher
    rows = [r for r in await completions(engine) if r.user_id in users]
    assert len(rows) == 15
    assert sorted({int(i) for i in sidecar.ids(users)}) == [r.id for r in rows]
    assert {u: ids for u, ids in sidecar.first_arrivals_by_user().items() if u in users} == (
        _ids_by_user(rows)
    )
    assert {r.body["userId"] for r in sidecar.of(users)} == set(users)
    assert failed._value.get() >= failed_before + 1


def _lines(stream: io.StringIO) -> list[str]:
    """One JSON document per line (split on newlines only: an id may hold U+2028)."""
    return stream.getvalue().split("\n")[:-1]


async def _async(value: object) -> object:
    return value


async def test_gauges_follow_the_outbox(engine):
    await _complete(engine, ["g1"])
    sidecar = SidecarStandIn()  # down: the completions wait
    publisher = _publisher(engine, [_sink(sidecar)], gauge_interval=0.05)
    publisher.start()
    try:
        await wait_for(
            lambda: _async(metrics.COMPLETION_OUTBOX_DEPTH._value.get() == 3), 20, "depth 3"
        )
        await wait_for(
            lambda: _async(metrics.COMPLETION_OLDEST_UNPUBLISHED._value.get() > 0), 20, "age"
        )
        await sidecar.start()
        await wait_for(
            lambda: _async(metrics.COMPLETION_OUTBOX_DEPTH._value.get() == 0), 20, "depth 0"
        )
        assert metrics.COMPLETION_OLDEST_UNPUBLISHED._value.get() == 0
    finally:
        await publisher.stop()
        await sidecar.stop()


HOSTILE_USERS = [
    'quote"back\\slash',
    "emoji-😀-ümlaut-中文-\u2028-\t-tab",
    "x" * 100,
    "</script><b>&amp;",
    '{"id": "forged"}',
]


async def test_hostile_ids_come_out_as_valid_json_with_the_exact_ids(engine):
    hostile_goal = 'g"o\\al-ü-😀'
    cfg = parse_config(
        {
            "challenges": [
                {
                    "challengeId": 'chal"lenge\\-中',
                    "goals": [goal(hostile_goal, target=1)],
                }
            ]
        }
    )
    result = await flush(engine, cfg, [login(u, "2026-11-20 10:00") for u in HOSTILE_USERS])
    assert result.completions == len(HOSTILE_USERS)
    stream = io.StringIO()
    sidecar = await SidecarStandIn().start()
    publisher = _publisher(engine, [LogSink(stream), _sink(sidecar)])
    publisher.start()
    try:
        await wait_for(lambda: _drained(engine), 20, "the outbox published")
    finally:
        await publisher.stop()
        await sidecar.stop()
    rows = {str(r.id): r for r in await completions(engine)}
    for body in [orjson.loads(line) for line in _lines(stream)] + [
        r.body for r in sidecar.received
    ]:
        row = rows[body["id"]]
        assert body["userId"] == body["payload"]["userId"] == row.user_id
        assert body["payload"]["goalCode"] == hostile_goal
        assert body["payload"]["challengeCode"] == 'chal"lenge\\-中'
    assert sorted(r.metadata["userId"] for r in sidecar.received) == sorted(HOSTILE_USERS)
    assert len(sidecar.received) == len(HOSTILE_USERS)


async def test_a_gdpr_deletion_deletes_the_users_completions_and_they_are_never_sent(engine):
    await _complete(engine, ["erased", "kept"])
    stream = io.StringIO()
    early = _publisher(engine, [LogSink(stream)], batch_size=2)
    early.start()  # some of them published and marked before the deletion
    await wait_for(lambda: _async(len(_lines(stream)) >= 2), 20, "a first batch")
    await early.stop()
    erasure = await erase_user(Flusher(Writer(engine)), "erased", "mygame", source="test")
    assert erasure.rows["challenge_goal_completions"] == 3
    async with engine.connect() as conn:
        left = (await conn.execute(select(challenge_goal_completions.c.user_id))).scalars()
        assert set(left) == {"kept"}
        marked = select(func.count()).select_from(challenge_completion_deliveries)
        kept_ids = select(challenge_goal_completions.c.id)
        assert (await conn.execute(marked)).scalar_one() == (
            await conn.execute(
                marked.where(challenge_completion_deliveries.c.completion_id.in_(kept_ids))
            )
        ).scalar_one()
    stream = io.StringIO()
    later = _publisher(engine, [LogSink(stream)])
    later.start()
    try:
        await wait_for(lambda: _drained(engine), 20, "the rest published")
    finally:
        await later.stop()
    assert {orjson.loads(line)["userId"] for line in _lines(stream)} <= {"kept"}


# ------------------------------------------------------------ PostgreSQL: replicas


async def test_two_publishers_on_one_outbox_publish_each_completion_once(pg_engine, pg_url):
    """Two replicas share the outbox: one holds the sink's lease and publishes, the other
    stands by; when the first stops, the second takes over where it left off."""
    sidecar = await SidecarStandIn().start()
    engines = [make_engine(async_database_url("DATABASE_URL", pg_url)) for _ in range(2)]
    publishers = [_publisher(e, [_sink(sidecar)], batch_size=7) for e in engines]
    publishers[0].start()
    try:
        await _complete(pg_engine, [f"w0-{i}" for i in range(10)])
        await wait_for(lambda: _drained(pg_engine), 20, "the first replica publishing")
        publishers[1].start()  # stands by: the first holds the lease
        await _complete(pg_engine, [f"w1-{i}" for i in range(10)])
        await wait_for(lambda: _drained(pg_engine), 20, "the second wave published")
        await publishers[0].stop()  # the first replica leaves (a rolling update)
        before = len(sidecar.received)
        for wave in (2, 3):
            await _complete(pg_engine, [f"w{wave}-{i}" for i in range(10)])
        await wait_for(lambda: _drained(pg_engine), 30, "the second replica taking over")
        assert len(sidecar.received) - before == 60
    finally:
        for publisher in publishers:
            await publisher.stop()
        for e in engines:
            await e.dispose()
        await sidecar.stop()
    counts = Counter(sidecar.ids())
    assert set(counts.values()) == {1}
    assert sorted(counts, key=int) == [str(r.id) for r in await completions(pg_engine)]
    assert len(counts) == 120


async def test_an_id_committed_late_is_published_while_the_outbox_keeps_filling(pg_engine):
    """A flush that began first commits last: its completion's id is below ids already
    published. It goes out within the late-commit window while new completions keep
    arriving (no full rescan: that one is set to an hour), and nothing is sent twice."""
    sidecar = await SidecarStandIn().start()
    publisher = _publisher(
        pg_engine, [_sink(sidecar)], batch_size=5, rescan_every=3600, late_window=0.5
    )
    busy = asyncio.Event()

    async def keep_completing() -> None:
        wave = 0
        while not busy.is_set():
            await _complete(pg_engine, [f"busy-{wave}"])
            wave += 1

    publisher.start()
    filling = asyncio.create_task(keep_completing())
    try:
        async with pg_engine.connect() as late:
            late_id = (
                await late.execute(
                    text(
                        "INSERT INTO challenge_goal_completions"
                        " (namespace, user_id, challenge_id, goal_id, completed_at)"
                        " VALUES ('mygame', 'late', 'season', 'win-3', now()) RETURNING id"
                    )
                )
            ).scalar_one()

            async def passed() -> bool:
                return any(int(i) > late_id for i in sidecar.ids())

            await wait_for(passed, 20, "ids above the open transaction's published")
            await late.commit()

        async def sent() -> bool:
            return str(late_id) in sidecar.ids()

        await wait_for(sent, 20, "the late id sent")
    finally:
        busy.set()
        await filling
        await publisher.stop()
        await sidecar.stop()
    assert set(Counter(sidecar.ids()).values()) == {1}


async def test_two_sinks_marking_the_same_ids_at_once_publish_them(pg_engine):
    """Each sink marks in a transaction of its own. The second mark, run while the first
    is still open, must see the first's delivery once it commits: else each counts only
    its own row and no completion is ever published (both sinks have it, neither sends
    it again)."""
    await _complete(pg_engine, ["m1", "m2"])
    ids = [r.id for r in await completions(pg_engine)]
    sinks = ["log", "async-messaging"]
    when = datetime(2026, 11, 18, 10, 1)
    async with pg_engine.connect() as first, pg_engine.connect() as second:
        await first.begin()
        await outbox.mark(first, "log", ids, sinks, when)
        await second.begin()
        marking = asyncio.create_task(outbox.mark(second, "async-messaging", ids, sinks, when))
        probe = await pg_engine.connect()
        try:

            async def waiting_or_done() -> bool:
                waits = await probe.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
                return marking.done() or bool(waits)

            await wait_for(waiting_or_done, 20, "the second mark waiting or done")
        finally:
            await probe.close()
        await first.commit()
        await asyncio.wait_for(marking, 20)
        await second.commit()
    rows = await completions(pg_engine)
    assert len(rows) == 6 and all(r.published_at == when for r in rows)
    assert await _drained(pg_engine)


# ------------------------------------------------------------ the kafka sink


@pytest.mark.kafka
async def test_the_kafka_sink_writes_keyed_events_to_the_real_broker(pg_engine, kafka_bootstrap):
    topic = f"mygame.challenge.v1.goalCompleted.{uuid.uuid4().hex[:8]}"
    users = ["k1", 'k"2\\', "k-ü-😀"]
    await _complete(pg_engine, users)
    servers = kafka_bootstrap.split(",")
    publisher = _publisher(pg_engine, [KafkaSink(servers, topic)])
    publisher.start()
    try:
        await wait_for(lambda: _drained(pg_engine), 60, "the outbox published to Kafka")
    finally:
        await publisher.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        records = []
        while len(records) < 9:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
            for found in batch.values():
                records.extend(found)
    finally:
        await consumer.stop()
    rows = {str(r.id): r for r in await completions(pg_engine)}
    bodies = [orjson.loads(r.value) for r in records]
    assert sorted(b["id"] for b in bodies) == sorted(rows)  # each once
    for record, body in zip(records, bodies, strict=True):
        assert record.key == rows[body["id"]].user_id.encode() == body["userId"].encode()
        assert dict(record.headers) == {"userId": body["userId"].encode()}
    per_user: dict[str, list[int]] = {}
    for body in bodies:
        per_user.setdefault(body["userId"], []).append(int(body["id"]))
    assert all(ids == sorted(ids) for ids in per_user.values())  # in order per user


async def _consume(servers: list[str], topic: str, count: int) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        records: list = []
        while len(records) < count:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
            for found in batch.values():
                records.extend(found)
        return records
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_the_kafka_sink_partitions_by_key_as_a_plain_send_would_across_record_batches(
    pg_engine, kafka_bootstrap
):
    """One publish larger than a record batch: every event lands in the partition
    aiokafka's (and Java's) default partitioner gives its key, once, in id order per user."""
    topic = f"mygame.challenge.v1.goalCompleted.{uuid.uuid4().hex[:8]}"
    servers = kafka_bootstrap.split(",")
    await ensure_topics(kafka_bootstrap, {topic: 3})
    users = [f"player-{i:04d}-" + "x" * 80 for i in range(500)]  # 1,500 events, > 512 KiB
    await _complete(pg_engine, users)
    publisher = _publisher(pg_engine, [KafkaSink(servers, topic)], batch_size=2000)
    publisher.start()
    try:
        await wait_for(lambda: _drained(pg_engine), 60, "the outbox published to Kafka")
    finally:
        await publisher.stop()
    records = await _consume(servers, topic, 3 * len(users))
    assert sum(len(r.value) for r in records) > MAX_BATCH_BYTES  # more than one record batch
    bodies = [orjson.loads(r.value) for r in records]
    assert sorted(int(b["id"]) for b in bodies) == sorted(
        int(r.id) for r in await completions(pg_engine)
    )
    partitioner = DefaultPartitioner()
    for record in records:
        assert record.partition == partitioner(record.key, [0, 1, 2], [0, 1, 2])
    assert {r.partition for r in records} == {0, 1, 2}
    per_user: dict[str, list[int]] = {}
    for body in bodies:
        per_user.setdefault(body["userId"], []).append(int(body["id"]))
    assert all(ids == sorted(ids) for ids in per_user.values())
