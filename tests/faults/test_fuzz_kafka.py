"""Fuzz suite, Kafka (hostile input, contract §2): ~2,000 garbage records among ~2,000 good ones through a
real `worker` on real Kafka and PostgreSQL.

Garbage: random bytes, JSON that is not an object, fields of the wrong type, NUL in ids,
10,000-deep JSON, records near the broker's size limit. Good: the usual mixed stream plus
events whose values overflow INT arithmetic or whose timestamps lie outside the range
the service can represent, and one good record near the size limit.

Every good event is applied exactly (expectation counted independently from the stream),
every bad one is in `<topic>.dlq` with its reason, the agents never crash (the worker
stays alive and drains everything), and SIGTERM ends the worker with exit code 0.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy.ext.asyncio import AsyncEngine

from app.kafka.codec import DEAD_LETTER_MAX_VALUE
from tests.helpers.kafka import (
    BASE_TIME,
    Record,
    Worker,
    create_topics,
    drained,
    login_json,
    login_topic,
    mixed_stream,
    ms,
    new_namespace,
    produce,
    stat_json,
    stat_topic,
    table,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

GOOD, GARBAGE = 2000, 2000
NEAR_LIMIT = 1_000_000  # the producer's default limit is 1,048,576 bytes per request


def garbage_records(ns: str, rng: random.Random) -> list[tuple[Record, str]]:
    """(record, the reason it must be dead-lettered with)."""
    login, stat = login_topic(ns), stat_topic(ns)

    def obj(**fields) -> bytes:
        return orjson.dumps({"id": uuid.uuid4().hex, "namespace": ns, **fields})

    def payload(**fields) -> dict:
        return {"statCode": "enemy_kills", "latestValue": 1, "inc": 1, **fields}

    makers = [
        # bytes that are not JSON (0xff is never UTF-8)
        lambda: (stat, b"\xff" + rng.randbytes(rng.randint(0, 200)), "undecodable"),
        lambda: (
            login,
            rng.randbytes(rng.randint(1, 50)).replace(b"{", b"(") + b"\xfe",
            "undecodable",
        ),
        # JSON, but not an object
        lambda: (stat, orjson.dumps([rng.random(), "x"]), "wrong_type"),
        lambda: (login, orjson.dumps(rng.randint(-(2**40), 2**40)), "wrong_type"),
        lambda: (login, b'"just a string"', "wrong_type"),
        lambda: (login, b"null", "nil_message"),
        lambda: (stat, b"", "nil_message"),
        # fields of the wrong type: dead-lettered, never coerced
        lambda: (login, obj(userId=rng.randint(0, 10**6)), "wrong_type"),
        lambda: (login, obj(userId={"id": "u"}), "wrong_type"),
        lambda: (login, obj(userId=["u"]), "wrong_type"),
        lambda: (login, obj(userId=True), "wrong_type"),
        lambda: (login, obj(userId="u-t", timestamp=1_700_000_000), "wrong_type"),
        lambda: (stat, obj(userId="u-p", payload="scalar"), "wrong_type"),
        lambda: (stat, obj(userId="u-s", payload=payload(statCode=7)), "wrong_type"),
        lambda: (stat, obj(userId="u-v", payload=payload(latestValue=[1])), "wrong_type"),
        lambda: (stat, obj(userId="u-i", payload=payload(inc={"a": 1})), "wrong_type"),
        lambda: (stat, obj(userId="u-n", payload=payload(latestValue="many")), "invalid_value"),
        # ids PostgreSQL text cannot hold
        lambda: (login, obj(userId=f"nul\x00{rng.random()}"), "invalid_characters"),
        lambda: (
            stat,
            obj(userId="u-c", payload=payload(statCode="kills\x00")),
            "invalid_characters",
        ),
        # contract §2 refusals
        lambda: (login, obj(userId=""), "empty_user_id"),
        lambda: (login, obj(userId="x" * 101), "user_id_too_long"),
        lambda: (stat, obj(userId="u-np"), "nil_payload"),
        lambda: (stat, obj(userId="u-ec", payload=payload(statCode="")), "empty_stat_code"),
    ]
    records = [
        (Record(topic, value, key=rng.choice([None, b"k", rng.randbytes(4)])), reason)
        for topic, value, reason in (rng.choice(makers)() for _ in range(GARBAGE - 4))
    ]
    deep = b"[" * 10_000 + b"]" * 10_000
    records.append((Record(login, deep), "undecodable"))
    records.append(
        (Record(stat, b'{"userId":"u","payload":' * 5_000 + b"{}" + b"}" * 5_000), "undecodable")
    )
    near = orjson.dumps({"namespace": ns, "userId": "y" * (NEAR_LIMIT - 60)})
    records.append((Record(login, near), "user_id_too_long"))
    records.append((Record(stat, b"\xff" * NEAR_LIMIT), "undecodable"))
    return records


async def test_kafka_fuzz_garbage_among_good_records(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path
):
    rng = random.Random(9)
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=4)
    good, expected = mixed_stream(ns, GOOD, 200, seed=9)

    # good records with hostile values: each applied as the rules say
    record_time = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(minutes=5)
    for i in range(50):
        user = f"hostile-ts-{i}"
        stamp = rng.choice(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "11111111"])
        value = orjson.loads(login_json(ns, user, None))
        value["timestamp"] = stamp  # falls back to the record time
        good.append(Record(login_topic(ns), orjson.dumps(value), timestamp_ms=ms(record_time)))
        expected.login(user)
        kills = f"overflow-{i}"
        good.append(
            Record(
                stat_topic(ns), stat_json(ns, kills, "enemy_kills", 5, -2_147_483_649, BASE_TIME)
            )
        )
        expected.kill(kills, 0)  # inc <= 0 counts 1
        wins = f"clamped-{i}"
        good.append(Record(stat_topic(ns), stat_json(ns, wins, "match_wins", 3e9, -1, BASE_TIME)))
        expected.win(wins, 2_147_483_647, BASE_TIME)
    big = orjson.loads(login_json(ns, "big-but-good", BASE_TIME))
    big["padding"] = "p" * (NEAR_LIMIT - 200)
    good.append(Record(login_topic(ns), orjson.dumps(big)))
    expected.login("big-but-good")

    bad = garbage_records(ns, rng)
    # garbage spread at random through the stream; the good records keep their order
    keyed = [(i / len(good), record) for i, record in enumerate(good)]
    keyed += [(rng.random(), record) for record, _ in bad]
    mixed = [record for _, record in sorted(keyed, key=lambda pair: pair[0])]

    worker = Worker(pg_url, kafka_bootstrap, ns, write_config(tmp_path), tmp_path / "w.log")
    worker.start()
    try:
        await worker.wait_ready()
        await produce(kafka_bootstrap, mixed)

        async def done() -> bool:
            assert worker.running(), worker.tail()
            return await drained(kafka_bootstrap, pg_engine, ns, worker.group)

        await wait_for(done, 240, "worker drained", every=0.5)
        assert await table(pg_engine) == expected.rows()

        dead = await read_dead_letters(kafka_bootstrap, ns, len(bad))
        want = Counter((_dlq_value(r.value), r.topic + ".dlq", reason) for r, reason in bad)
        assert Counter(dead) == want
        assert worker.metric("challenge_event_handler_dead_lettered_total") == len(bad)
        assert worker.running(), worker.tail()
        assert worker.terminate(timeout=60) == 0, worker.tail()
        assert "Agent crashed" not in worker.log_text()
        reasons = Counter(reason for _, _, reason in dead)
        print(
            f"\nKafka fuzz: sent={len(mixed)} good={len(good)} garbage={len(bad)} "
            f"rows={len(expected.rows())} dead-lettered={len(dead)} by reason={dict(reasons)} "
            "crashes=0 sigterm_exit=0"
        )
    finally:
        worker.stop_quietly()


def _dlq_value(value: bytes) -> bytes:
    return value[:DEAD_LETTER_MAX_VALUE]


async def read_dead_letters(bootstrap: str, ns: str, count: int) -> list[tuple[bytes, str, str]]:
    dead: list[tuple[bytes, str, str]] = []
    consumer = AIOKafkaConsumer(
        f"{login_topic(ns)}.dlq",
        f"{stat_topic(ns)}.dlq",
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=2_000_000,
        fetch_max_bytes=4_000_000,
    )
    await consumer.start()
    try:

        async def fetch() -> bool:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for r in batch:
                    headers = dict(r.headers)
                    assert headers["source_topic"].decode() == r.topic.removesuffix(".dlq")
                    dead.append((r.value or b"", r.topic, headers["reason"].decode()))
            return len(dead) >= count

        await wait_for(fetch, 60, "dead letters", every=0)
    finally:
        await consumer.stop()
    return dead
