"""Goal-completed events through real processes: a replay run twice in fresh processes
keeps one outbox row per (user, goal, period); `python -m app completions` lists the
outbox and re-publishes a range to a running `serve` (same ids, sent again)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text

from app.core.settings import async_database_url
from tables.db import make_engine
from tests.e2e.test_cli import run
from tests.helpers.grpc import OK, Bridge, Server, codes, login, server_env, stat, users
from tests.helpers.grpc import write_config as write_grpc_config
from tests.helpers.kafka import wait_for
from tests.helpers.sidecar import SidecarStandIn

CONFIG = {
    "challenges": [
        {
            "challengeId": "c1",
            "goals": [
                {"goalId": "win-3", "eventSource": "statistic",
                 "requirement": {"statCode": "match_wins", "targetValue": 3}},
                {"goalId": "daily", "eventSource": "login", "type": "daily",
                 "requirement": {"targetValue": 1}},
            ],
        }
    ]
}  # fmt: skip


async def _query(url: str, sql: str) -> list[tuple]:
    engine = make_engine(async_database_url("DATABASE_URL", url), pool_size=1)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(sql))
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def test_a_replay_in_a_fresh_process_adds_no_second_completion(db_url: str, tmp_path: Path):
    """Replay the same file in two processes, the progress rows wiped in between (an
    operator rebuilding progress): the outbox keeps its rows and their ids."""
    user = f"replayer-{tmp_path.name[-8:]}"
    lines = [
        {"id": f"{user}-1", "namespace": "mygame", "userId": user,
         "timestamp": "2026-11-20T10:00:00Z", "payload": {"statCode": "match_wins", "value": 5}},
        {"id": f"{user}-2", "namespace": "mygame", "userId": user,
         "timestamp": "2026-11-20T11:00:00Z"},
        {"id": f"{user}-3", "namespace": "mygame", "userId": user,
         "timestamp": "2026-11-21T09:00:00Z"},
    ]  # fmt: skip
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    config = tmp_path / "challenges.json"
    config.write_text(json.dumps(CONFIG))
    env = {"DATABASE_URL": db_url, "CONFIG_PATH": str(config), "AB_NAMESPACE": "mygame"}
    select = (
        "SELECT id, goal_id, completed_at, period_start FROM challenge_goal_completions "
        f"WHERE user_id = '{user}' ORDER BY id"
    )
    outcomes = []
    for attempt in range(2):
        done = run("replay", str(events), env=env)
        assert done.returncode == 0, done.stderr
        outcomes.append(asyncio.run(_query(db_url, select)))
        if attempt == 0:
            asyncio.run(_query(db_url, f"DELETE FROM user_goal_progress WHERE user_id = '{user}'"))
    # one flush: key order, then the next day's period
    assert [goal for _, goal, *_ in outcomes[0]] == ["daily", "win-3", "daily"]
    assert outcomes[1] == outcomes[0]
    listed = run("completions", "--user", user, env=env)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[2] for line in listed.stdout.splitlines()[2:]] == [
        "daily",
        "win-3",
        "daily",
    ]


def test_the_cli_refuses_a_republish_without_its_range(pg_url: str):
    done = run("completions", "--republish", "--from-id", "3", env={"DATABASE_URL": pg_url})
    assert done.returncode == 2
    assert "--republish needs --from-id and --to-id" in done.stderr


@pytest.mark.slow
async def test_republish_sends_a_range_again_with_the_same_ids(pg_url: str, tmp_path: Path):
    sidecar = await SidecarStandIn().start()
    host, port = sidecar.target
    env = server_env(
        pg_url,
        write_grpc_config(tmp_path),
        COMPLETION_SINKS="async-messaging",
        ASYNC_MESSAGING_PUBLISHER_GRPC_HOST=host,
        ASYNC_MESSAGING_PUBLISHER_GRPC_PORT=str(port),
        COMPLETION_POLL_INTERVAL="100ms",
    )
    server = Server(env, tmp_path / "serve.log").start()
    people = users(3)
    try:
        await server.wait_health()
        async with Bridge(server.target) as bridge:
            results = await bridge.call_all([stat(u, "match_wins", 10.0) for u in people])
            results += await bridge.call_all([login(u) for u in people])
        assert codes(results) == {OK.name: 6}
        await wait_for(lambda: _count(sidecar, people, 6), 30, "six completions published")
        ids = sorted(int(i) for i in set(sidecar.ids(people)))
        summary = await asyncio.to_thread(run, "completions", env={"DATABASE_URL": pg_url})
        assert summary.returncode == 0, summary.stderr
        assert "async-messaging" in summary.stdout.split("\n", 1)[1]
        first, last = ids[1], ids[3]
        again = await asyncio.to_thread(
            run,
            "completions", "--republish", "--from-id", str(first), "--to-id", str(last),
            env={"DATABASE_URL": pg_url},
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert f"ids {first}..{last}: 3 delivery marks cleared" in again.stdout
        await wait_for(lambda: _count(sidecar, people, 9), 60, "the range published again")
    finally:
        server.stop_quietly()
        await sidecar.stop()
    counts = Counter(int(i) for i in sidecar.ids(people))
    assert {i for i, n in counts.items() if n == 2} == set(ids[1:4])
    assert sum(counts.values()) == 9


async def _count(sidecar: SidecarStandIn, people: list[str], n: int) -> bool:
    return len(sidecar.ids(people)) >= n
