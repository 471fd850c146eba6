"""GDPR account deletion (contract §1.1, §1.2) against real `serve` / `worker` processes:
rows gone on PostgreSQL and SQLite, other users untouched, nothing buffered resurrects a
row, redelivery harmless, wrong namespace skipped, bad input refused, the Kafka path."""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import orjson
import pytest
from sqlalchemy import text

from app.core.settings import async_database_url
from tables.db import make_engine
from tests.helpers.grpc import (
    INVALID,
    NAMESPACE,
    OK,
    SERVING,
    Bridge,
    Server,
    login,
    pb,
    server_env,
    stat,
    users,
)
from tests.helpers.kafka import (
    Record,
    Worker,
    create_topics,
    login_json,
    login_topic,
    new_namespace,
    produce,
    wait_for,
)
from tests.helpers.process import sample_value

GDPR_METHOD = (
    "/accelbyte.iam.account.v1.DeletionAccountGdprGdprRequestDataDeletionResponseService/OnMessage"
)
GDPR_SUFFIX = "iam.account.v1.gdprRequestDataDeletionResponse"
CONFIG = {
    "challenges": [
        {
            "challengeId": "gdpr",
            "name": "gdpr",
            "goals": [
                {
                    "goalId": "logins",
                    "eventSource": "login",
                    "type": "increment",
                    "requirement": {"targetValue": 1000, "operator": ">="},
                },
                {
                    "goalId": "daily-logins",
                    "eventSource": "login",
                    "type": "increment",
                    "daily": True,
                    "requirement": {"targetValue": 30, "operator": ">="},
                },
                {
                    "goalId": "wins",
                    "eventSource": "statistic",
                    "requirement": {"statCode": "match_wins", "targetValue": 10, "operator": ">="},
                },
            ],
        }
    ]
}
KAFKA_CONFIG = {
    "challenges": [
        {
            "challengeId": "kc",
            "name": "kc",
            "goals": [
                {
                    "goalId": "login-5",
                    "eventSource": "login",
                    "type": "increment",
                    "daily": True,
                    "requirement": {"targetValue": 5, "operator": ">="},
                }
            ],
        }
    ]
}


def deletion(user: str, namespace: str = NAMESPACE, *, top_level_only: bool = False):
    if top_level_only:
        return pb.gdpr_pb2.GdprRequestDataDeletionResponse(
            id=uuid.uuid4().hex, namespace=namespace, user_id=user
        )
    return pb.gdpr_pb2.GdprRequestDataDeletionResponse(
        id=uuid.uuid4().hex,
        namespace=namespace,
        payload=pb.gdpr_pb2.GdprRequestDataDeletionResponsePayloadData(
            deletion_gdpr=pb.gdpr_pb2.DeletionGDPR(user_id=user, namespace=namespace)
        ),
    )


async def call_gdpr(server: Server, message) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = pb.gdpr_grpc.DeletionAccountGdprGdprRequestDataDeletionResponseServiceStub(channel)
        try:
            await stub.OnMessage(message, timeout=30)
            return OK, ""
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""


async def call_gdpr_bytes(server: Server, body: bytes) -> tuple[grpc.StatusCode, str]:
    """A GDPR call whose body is raw bytes (not necessarily a valid message)."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        method = channel.unary_unary(
            "/accelbyte.iam.account.v1.DeletionAccountGdprGdprRequestDataDeletionResponseService/OnMessage"
        )
        try:
            await method(body, timeout=30)
            return OK, ""
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""


async def ours_about(url: str, users_: list[str]) -> dict[str, int]:
    """Rows per table that mention any of `users_`."""
    engine = make_engine(async_database_url("DATABASE_URL", url), pool_size=1)
    counts = {}
    try:
        async with engine.connect() as conn:
            for table in ("user_goal_progress", "challenge_daily_marks", "challenge_dead_letters"):
                marks = ", ".join(f":u{i}" for i in range(len(users_)))
                found = await conn.execute(
                    text(f"SELECT count(*) FROM {table} WHERE user_id IN ({marks})"),
                    {f"u{i}": u for i, u in enumerate(users_)},
                )
                counts[table] = int(found.scalar_one())
    finally:
        await engine.dispose()
    return counts


async def add_dead_letter(url: str, user: str) -> None:
    engine = make_engine(async_database_url("DATABASE_URL", url), pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO challenge_dead_letters (source, user_id, goal_id, reason, payload) "
                    "VALUES ('flush', :u, 'logins', 'test', :payload)"
                ),
                {"u": user, "payload": f"payload of {user}"},
            )
    finally:
        await engine.dispose()


@pytest.fixture(
    scope="module",
    params=[("postgresql", "durable"), ("postgresql", "buffered"), ("sqlite", "buffered")],
    ids=["postgresql-durable", "postgresql-buffered", "sqlite-buffered"],
)
def server(request, tmp_path_factory):
    """One `serve` per database and ack mode, shared by the tests of this module."""
    database, ack_mode = request.param
    directory = tmp_path_factory.mktemp("gdpr")
    if database == "sqlite":
        db_url = f"sqlite:///{directory / 'gdpr.db'}"
    else:
        db_url = request.getfixturevalue("pg_url")
    config = directory / "challenges.json"
    config.write_text(json.dumps(CONFIG))
    proc = Server(server_env(db_url, config, ACK_MODE=ack_mode), directory / "serve.log").start()
    try:
        asyncio.run(proc.wait_health(SERVING))
        proc.db_url = db_url  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.stop_quietly()


async def gdpr_count(server: Server, outcome: str) -> float:
    return sample_value(
        await server.metrics(),
        "challenge_event_handler_gdpr_deletions_total",
        f'outcome="{outcome}",source="grpc"',
    )


async def test_deletion_erases_the_user_and_nothing_else(server):
    url = server.db_url
    gone, kept = users(2)
    async with Bridge(server.target) as bridge:
        for user in (gone, kept):
            assert (await bridge.call(login(user)))[0] == OK
            assert (await bridge.call(stat(user, "match_wins", 4)))[0] == OK
    await add_dead_letter(url, gone)
    await add_dead_letter(url, kept)
    await wait_for(lambda: _has_rows(url, [gone, kept], 3 + 1 + 1), 15, "both users' rows written")
    deleted_before = await gdpr_count(server, "deleted")
    log_before = len(server.log_text().splitlines())
    assert await call_gdpr(server, deletion(gone)) == (OK, "")
    assert await ours_about(url, [gone]) == dict.fromkeys(
        ("user_goal_progress", "challenge_daily_marks", "challenge_dead_letters"), 0
    )
    assert await ours_about(url, [kept]) == {
        "user_goal_progress": 3,
        "challenge_daily_marks": 1,
        "challenge_dead_letters": 1,
    }
    # redelivered: harmless, answered the same
    assert await call_gdpr(server, deletion(gone)) == (OK, "")
    # the top-level user_id is the fallback when the payload is empty
    assert await call_gdpr(server, deletion(kept, top_level_only=True)) == (OK, "")
    assert (await ours_about(url, [kept]))["user_goal_progress"] == 0

    audit = [
        json.loads(line)
        for line in server.log_text().splitlines()[log_before:]
        if '"audit":"gdpr_deletion"' in line
    ]
    assert [(a["user_id"], a["rows_deleted"], a["level"]) for a in audit] == [
        (gone, 5, "info"),
        (gone, 0, "info"),
        (kept, 5, "info"),
    ]
    assert all("payload" not in entry for entry in audit)
    assert await gdpr_count(server, "deleted") == deleted_before + 3
    assert (
        await server.metric(
            "challenge_event_handler_grpc_requests_total", f'code="OK",method="{GDPR_METHOD}"'
        )
        >= 3
    )


async def _has_rows(url: str, users_: list[str], each: int) -> bool:
    counts = [sum((await ours_about(url, [u])).values()) for u in users_]
    return all(c >= each for c in counts)


async def test_bad_deletions_refused_and_other_namespace_skipped(server):
    url = server.db_url
    (user,) = users(1)
    async with Bridge(server.target) as bridge:
        assert (await bridge.call(login(user)))[0] == OK
    await wait_for(lambda: _has_rows(url, [user], 2), 15, "rows written")
    skipped_before = await gdpr_count(server, "skipped_namespace")
    invalid_before = await gdpr_count(server, "invalid")
    empty = pb.gdpr_pb2.GdprRequestDataDeletionResponse
    assert await call_gdpr(server, empty()) == (INVALID, "message cannot be nil")
    assert await call_gdpr(server, deletion("")) == (INVALID, "userId cannot be empty")
    assert await call_gdpr(server, deletion("x" * 101)) == (INVALID, "userId too long")
    assert await call_gdpr(server, deletion("nul\x00user")) == (
        INVALID,
        "userId contains invalid characters",
    )
    assert await call_gdpr_bytes(server, b"\xff\xfe garbage") == (INVALID, "malformed message")
    assert await call_gdpr(server, deletion(user, "othergame")) == (OK, "")
    assert (await ours_about(url, [user]))["user_goal_progress"] == 2
    assert await gdpr_count(server, "skipped_namespace") == skipped_before + 1
    assert await gdpr_count(server, "invalid") == invalid_before + 5


async def test_nothing_buffered_resurrects_a_deleted_user(server):
    """Updates acknowledged before the deletion (buffered, or in a flush in flight) never
    re-create a row after it: many users, each deleted right after its burst."""
    url = server.db_url
    victims = users(12)
    async with Bridge(server.target) as bridge:

        async def burst_then_delete(user: str) -> None:
            messages = [login(user) for _ in range(5)] + [stat(user, "match_wins", 7)]
            results = await bridge.call_all(messages, concurrency=6)
            assert {code for code, _ in results} == {OK}
            assert await call_gdpr(server, deletion(user)) == (OK, "")

        await asyncio.gather(*(burst_then_delete(u) for u in victims))
        # a bystander's event sent after the deletions: once its row is written, every
        # flush that could still hold a victim's update has been written (flushes are
        # serial, and a generation holds what arrived before it was taken)
        (bystander,) = users(1)
        assert (await bridge.call(login(bystander)))[0] == OK

    async def bystander_written() -> bool:
        return (await ours_about(url, [bystander]))["user_goal_progress"] > 0

    await wait_for(bystander_written, 10, "the bystander's row")
    assert sum((await ours_about(url, victims)).values()) == 0


# --------------------------------------------------------------------------- Kafka


@pytest.mark.kafka
async def test_kafka_gdpr_topic_erases_the_user(pg_url, kafka_bootstrap, tmp_path):
    ns = new_namespace()
    gdpr_topic = f"{ns}.{GDPR_SUFFIX}"
    await create_topics(kafka_bootstrap, ns)
    from app.kafka.admin import ensure_topics

    await ensure_topics(kafka_bootstrap, {gdpr_topic: 1, f"{gdpr_topic}.dlq": 1})
    config = tmp_path / "challenges.json"
    config.write_bytes(orjson.dumps(KAFKA_CONFIG))
    worker = Worker(pg_url, kafka_bootstrap, ns, config, tmp_path / "worker.log").start()
    gone, kept = f"kg-{ns}-1", f"kg-{ns}-2"
    try:
        await worker.wait_ready()
        await produce(
            kafka_bootstrap,
            [Record(login_topic(ns), login_json(ns, u, None)) for u in (gone, kept)],
        )
        await wait_for(lambda: _has_rows(pg_url, [gone, kept], 2), 60, "rows and marks")

        def gdpr_json(user: str, namespace: str) -> bytes:
            return orjson.dumps(
                {
                    "id": uuid.uuid4().hex,
                    "name": "gdprRequestDataDeletionResponse",
                    "namespace": namespace,
                    "payload": {"deletionGDPR": {"userId": user, "namespace": namespace}},
                }
            )

        await produce(
            kafka_bootstrap,
            [
                Record(gdpr_topic, b"{not json"),
                Record(gdpr_topic, orjson.dumps({"namespace": ns, "userId": 123})),
                Record(gdpr_topic, gdpr_json(kept, "othergame")),
                Record(gdpr_topic, gdpr_json(gone, ns)),
                Record(gdpr_topic, gdpr_json(gone, ns)),  # redelivered
            ],
        )

        async def erased() -> bool:
            return sum((await ours_about(pg_url, [gone])).values()) == 0

        await wait_for(erased, 60, "the deleted user's rows gone")
        assert await ours_about(pg_url, [kept]) == {
            "user_goal_progress": 1,
            "challenge_daily_marks": 1,
            "challenge_dead_letters": 0,
        }

        async def counted() -> bool:
            return worker.metric("challenge_event_handler_gdpr_deletions_total") == 5

        await wait_for(counted, 30, "every deletion record counted")
        body = await asyncio.to_thread(_scrape, worker.port)
        label = 'outcome="{}",source="kafka"'
        assert (
            sample_value(
                body, "challenge_event_handler_gdpr_deletions_total", label.format("deleted")
            )
            == 2
        )
        assert (
            sample_value(
                body, "challenge_event_handler_gdpr_deletions_total", label.format("invalid")
            )
            == 2
        )
        assert (
            sample_value(
                body,
                "challenge_event_handler_gdpr_deletions_total",
                label.format("skipped_namespace"),
            )
            == 1
        )
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.stop_quietly()
    audit = [line for line in worker.log_text().splitlines() if "gdpr_deletion" in line]
    assert len(audit) == 2 and all('"source":"kafka"' in line for line in audit)


def _scrape(port: int) -> str:
    from tests.helpers.process import scrape

    return scrape(port)
