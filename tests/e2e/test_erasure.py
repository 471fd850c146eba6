"""Erasure is final (contract §1.1) against real processes: a GDPR deletion answered by
one `serve` holds on another replica from that moment, and replaying a JSON-lines file or
a Kafka topic that predates the deletion brings nothing of the user back — counted as
erased, the other users' rows exactly as before."""

from __future__ import annotations

import json
import os
import uuid

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.e2e.test_gdpr import CONFIG, call_gdpr, deletion
from tests.helpers.grpc import NAMESPACE, OK, Bridge, Server, login, server_env, stat
from tests.helpers.kafka import (
    Record,
    create_topics,
    login_json,
    login_topic,
    new_namespace,
    produce,
)
from tests.helpers.process import run_app as run_process_app

pytestmark = pytest.mark.postgres


async def user_rows(engine: AsyncEngine, user: str) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("SELECT count(*) FROM user_goal_progress WHERE user_id = :u"), {"u": user}
        )
    return int(found or 0)


def run_app(env: dict[str, str], *args: str) -> str:
    return run_process_app({**os.environ, **env}, *args)


async def test_a_deletion_on_one_replica_holds_on_another(pg_url, pg_engine, tmp_path):
    config = tmp_path / "challenges.json"
    config.write_text(json.dumps(CONFIG))
    suffix = uuid.uuid4().hex[:8]
    gone, kept = f"erased-{suffix}", f"kept-{suffix}"
    a = Server(server_env(pg_url, config), tmp_path / "a.log").start()
    b = Server(server_env(pg_url, config), tmp_path / "b.log").start()
    try:
        await a.wait_ready()
        await b.wait_ready()
        async with Bridge(a.target) as on_a:
            assert (await on_a.call(login(gone)))[0] == OK
        assert await user_rows(pg_engine, gone) == 2
        assert await call_gdpr(a, deletion(gone)) == (OK, "")
        assert await user_rows(pg_engine, gone) == 0
        # B never heard of the deletion: its events for the user are acknowledged (the
        # bridge must not redeliver them) and left out by the merge statement
        async with Bridge(b.target) as on_b:
            for call in (login(gone), stat(gone, "match_wins", 7), login(kept)):
                assert (await on_b.call(call))[0] == OK
        assert await user_rows(pg_engine, gone) == 0
        assert await user_rows(pg_engine, kept) == 2
        # the login's two rows were left out by the statement; from that flush on B
        # knew, so the stat event (sent after the login was answered) was skipped on arrival
        assert await b.metric("challenge_event_handler_rows_dropped_total", 'reason="erased"') == 2
        skipped = await b.metric("challenge_event_handler_events_skipped_total", 'reason="erased"')
        assert skipped == 2
        # and from then on B skips the user's events as they arrive
        async with Bridge(b.target) as on_b:
            assert (await on_b.call(login(gone)))[0] == OK
        assert (
            await b.metric("challenge_event_handler_events_skipped_total", 'reason="erased"')
            == skipped + 1
        )
        assert await user_rows(pg_engine, gone) == 0
    finally:
        a.stop_quietly()
        b.stop_quietly()


def _line(user: str, when: str, kind: str = "login", value: int = 0) -> bytes:
    body: dict[str, object] = {
        "id": uuid.uuid4().hex,
        "namespace": NAMESPACE,
        "userId": user,
        "timestamp": when,
    }
    if kind == "login":
        body["name"] = "userLoggedIn"
    else:
        body["name"] = "statItemUpdated"
        body["payload"] = {"statCode": "match_wins", "latestValue": value, "inc": 1}
    return orjson.dumps(body)


async def test_replaying_a_file_that_predates_the_deletion_brings_nothing_back(
    pg_url, pg_engine, tmp_path
):
    config = tmp_path / "challenges.json"
    config.write_text(json.dumps(CONFIG))
    suffix = uuid.uuid4().hex[:8]
    gone, kept = f"replayed-{suffix}", f"stays-{suffix}"
    events = tmp_path / "before.jsonl"
    events.write_bytes(
        b"\n".join(
            _line(user, f"2026-11-2{day}T10:00:00Z", kind, value=day)
            for day in (1, 2, 3)
            for user in (gone, kept)
            for kind in ("login", "stat")
        )
        + b"\n"
    )
    env = {"DATABASE_URL": pg_url, "AB_NAMESPACE": NAMESPACE, "CONFIG_PATH": str(config)}
    run_app({**env, "LOG_LEVEL": "warning"}, "replay", str(events))
    before = await user_rows(pg_engine, kept)
    assert before == 3 and await user_rows(pg_engine, gone) == 3

    server = Server(server_env(pg_url, config), tmp_path / "serve.log").start()
    try:
        await server.wait_ready()
        assert await call_gdpr(server, deletion(gone)) == (OK, "")
    finally:
        server.stop_quietly()
    assert await user_rows(pg_engine, gone) == 0

    out = run_app({**env, "LOG_LEVEL": "warning"}, "replay", str(events))
    assert await user_rows(pg_engine, gone) == 0
    assert await user_rows(pg_engine, kept) == before
    assert "skipped (erased)" in out, out


@pytest.mark.kafka
async def test_replaying_a_topic_from_its_start_after_the_deletion_brings_nothing_back(
    pg_url, pg_engine, kafka_bootstrap, tmp_path
):
    ns = new_namespace()
    await create_topics(kafka_bootstrap, ns, partitions=2)
    config = tmp_path / "challenges.json"
    config.write_text(json.dumps(CONFIG))
    gone, kept = f"t-gone-{ns}", f"t-kept-{ns}"
    records = [
        Record(login_topic(ns), login_json(ns, user, None), key=user.encode())
        for _ in range(3)
        for user in (gone, kept)
    ]
    await produce(kafka_bootstrap, records)
    env = {
        "DATABASE_URL": pg_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "AB_NAMESPACE": ns,
        "CONFIG_PATH": str(config),
        "LOG_LEVEL": "warning",
    }
    run_app(env, "replay", "--topic", login_topic(ns), "--from-offset", "0")
    assert await user_rows(pg_engine, gone) == 2

    server = Server(
        {**server_env(pg_url, config), "AB_NAMESPACE": ns}, tmp_path / "serve.log"
    ).start()
    try:
        await server.wait_ready()
        assert await call_gdpr(server, deletion(gone, ns)) == (OK, "")
    finally:
        server.stop_quietly()

    out = run_app(env, "replay", "--topic", login_topic(ns), "--from-offset", "0")
    assert await user_rows(pg_engine, gone) == 0
    assert await user_rows(pg_engine, kept) == 2
    assert "skipped (erased)" in out, out
