"""One stream, four ways in, the same rows (contract §1.3, §6).

The seeded stream of tests/helpers/stream.py (60 players over four days across a month
end and a Monday; every goal kind; redelivered duplicates; arrival shuffled within small
windows) goes through

- `python -m app replay FILE`,
- a worker on records keyed by user id (produced by the test),
- a worker on what `python -m app produce FILE` sent,
- a real `serve`, one OnMessage call per event (each player's calls in order, players
  side by side),

each into a fresh database and its own namespace. Every row matches across the four in
every column but the database-clock ones (created_at, updated_at, assigned_at) and the
namespace, which is each run's own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
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
    new_namespace,
    produce,
    wait_for,
)
from tests.helpers.process import run_app
from tests.helpers.stream import EVERY_KIND, Stream, StreamEvent, make_stream

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

CLOCK_COLUMNS = {"created_at", "updated_at", "assigned_at"}


@pytest.fixture
def databases(postgres_server_url: str) -> Iterator[list[str]]:
    with fresh_databases(postgres_server_url, 4) as urls:
        yield urls


async def table_rows(url: str, ns: str) -> dict[tuple[str, str], dict[str, Any]]:
    engine = make_engine(async_database_url("DATABASE_URL", url))
    try:
        async with engine.connect() as conn:
            found = (await conn.execute(text("SELECT * FROM user_goal_progress"))).all()
    finally:
        await engine.dispose()
    out = {}
    for row in found:
        values = {k: v for k, v in row._mapping.items() if k not in CLOCK_COLUMNS}
        assert values.pop("namespace") == ns
        out[(row.user_id, row.goal_id)] = values
    return out


def base_env(url: str, ns: str, config: Path, bootstrap: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        "AB_NAMESPACE": ns,
        "CONFIG_PATH": str(config),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LOG_LEVEL": "warning",
    }


async def by_file(stream: Stream, url: str, config: Path, bootstrap: str, tmp: Path) -> str:
    ns = new_namespace()
    events = tmp / "file.jsonl"
    events.write_bytes(b"\n".join(stream.lines(ns)) + b"\n")
    out = await asyncio.to_thread(
        run_app, base_env(url, ns, config, bootstrap), "replay", str(events)
    )
    assert f"read {len(stream.events)} lines" in out and " 0 invalid" in out, out
    return ns


async def by_worker(
    stream: Stream, url: str, config: Path, bootstrap: str, tmp: Path, use_cli: bool
) -> str:
    ns = new_namespace()
    await create_topics(bootstrap, ns, partitions=4)
    name = "produce" if use_cli else "keyed"
    if use_cli:
        events = tmp / f"{name}.jsonl"
        events.write_bytes(b"\n".join(stream.lines(ns)) + b"\n")
        env = base_env(url, ns, config, bootstrap)
        await asyncio.to_thread(run_app, env, "produce", str(events))
    else:
        await produce(
            bootstrap,
            [Record(e.topic(ns), line, key=e.user.encode()) for e, line in _lines(stream, ns)],
        )
    worker = Worker(url, bootstrap, ns, config, tmp / f"{name}.log", LOG_LEVEL="warning")
    engine = make_engine(async_database_url("DATABASE_URL", url))
    try:
        worker.start()

        async def done() -> bool:
            assert worker.running(), worker.tail()
            return await drained(bootstrap, engine, ns, worker.group)

        await wait_for(done, 90, f"{name} worker drained", every=0.5)
        assert worker.terminate() == 0, worker.tail()
    finally:
        worker.stop_quietly()
        await engine.dispose()
    return ns


def _lines(stream: Stream, ns: str) -> list[tuple[StreamEvent, bytes]]:
    return list(zip(stream.events, stream.lines(ns), strict=True))


def message(event: StreamEvent, ns: str) -> Any:
    stamp = event.stamp
    if event.kind == "login":
        return pb.login_pb2.UserLoggedIn(
            id=event.event_id, namespace=ns, user_id=event.user, timestamp=stamp
        )
    return pb.stat_pb2.StatItemUpdated(
        id=event.event_id,
        namespace=ns,
        user_id=event.user,
        timestamp=stamp,
        payload=pb.stat_pb2.StatItem(stat_code=event.kind, latest_value=event.value, inc=event.inc),
    )


async def by_grpc(stream: Stream, url: str, config: Path, tmp: Path) -> str:
    ns = new_namespace()
    server = Server(server_env(url, config, AB_NAMESPACE=ns), tmp / "serve.log").start()
    try:
        await server.wait_health(SERVING)
        async with Bridge(server.target) as bridge:

            async def player(user: str) -> list:
                return [await bridge.call(message(e, ns)) for e in stream.events if e.user == user]

            answers = await asyncio.gather(*(player(user) for user in stream.users))
        assert {code for calls in answers for code, _ in calls} == {OK}
        assert server.terminate() == 0, server.log_tail()
    finally:
        server.stop_quietly()
    return ns


async def test_file_replay_workers_and_grpc_give_the_same_rows(
    databases: list[str], kafka_bootstrap: str, tmp_path: Path
):
    stream = make_stream()
    config = tmp_path / "challenges.json"
    config.write_bytes(orjson.dumps(EVERY_KIND))
    file_db, keyed_db, produce_db, grpc_db = databases
    namespaces = await asyncio.gather(
        by_file(stream, file_db, config, kafka_bootstrap, tmp_path),
        by_worker(stream, keyed_db, config, kafka_bootstrap, tmp_path, use_cli=False),
        by_worker(stream, produce_db, config, kafka_bootstrap, tmp_path, use_cli=True),
        by_grpc(stream, grpc_db, config, tmp_path),
    )
    runs = [await table_rows(url, ns) for url, ns in zip(databases, namespaces, strict=True)]
    replayed = runs[0]
    # every (player, goal) the stream moves has its row, and some of each kind completed
    assert len(replayed) > 900
    completed = {goal for (_, goal), row in replayed.items() if row["status"] == "completed"}
    assert len(completed) == sum(len(c["goals"]) for c in EVERY_KIND["challenges"])
    for name, rows in zip(("keyed worker", "produce + worker", "gRPC"), runs[1:], strict=True):
        differing = sorted(
            k for k in replayed.keys() | rows.keys() if replayed.get(k) != rows.get(k)
        )
        assert not differing, (
            name,
            len(differing),
            [(replayed.get(k), rows.get(k)) for k in differing[:3]],
        )
