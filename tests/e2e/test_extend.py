"""What an AccelByte Extend app meets, through real `python -m app ...` processes: no
silent embedded database for the services, the database named in every start line
(never its password), and the challenge config taken from CHALLENGES_JSON."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.helpers import kafka
from tests.helpers.grpc import (
    OK,
    Bridge,
    Server,
    fetch_rows,
    login,
    server_env,
    users,
    write_config,
)
from tests.helpers.kafka import wait_for
from tests.helpers.process import ROOT, ServiceProcess

ENV_CONFIG = {
    "challenges": [
        {
            "challengeId": "from-env",
            "name": "From the environment",
            "goals": [
                {
                    "goalId": "env-logins",
                    "eventSource": "login",
                    "type": "increment",
                    "requirement": {"targetValue": 1000, "operator": ">="},
                }
            ],
        }
    ]
}
FILE_GOALS = {"logins", "daily-login", "wins", "kills"}  # tests.helpers.grpc.TEST_CONFIG
NO_DATABASE = "error: DATABASE_URL / DB_HOST: "


def no_database_env(**extra: str) -> dict[str, str]:
    """This environment without any database setting."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("DB_")}
    return {**env, **extra}


def cli(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_line(process: ServiceProcess, event: str) -> dict:
    for line in process.log_text().splitlines():
        if f'"event":"{event}"' in line:
            return dict(json.loads(line))
    raise AssertionError(f"no {event!r} line:\n{process.log_tail()}")


# ------------------------------------------------------------------ the database


@pytest.mark.parametrize(
    ("command", "extra"),
    [("serve", {}), ("serve", {"GRPC_WORKERS": "2"}), ("worker", {})],
    ids=["serve", "serve-grpc-workers", "worker"],
)
def test_the_services_refuse_to_start_without_database_settings(command, extra, tmp_path):
    env = no_database_env(
        AB_NAMESPACE="mygame",
        CONFIG_PATH=str(write_config(tmp_path)),
        PYTHONPATH=str(ROOT),
        **extra,
    )
    done = cli(command, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()  # one line, no traceback
    assert line.startswith(NO_DATABASE)
    assert "DATABASE_URL=sqlite:///path" in line  # how to ask for the file explicitly
    assert not (tmp_path / "data").exists()  # no embedded file created either


async def test_serve_on_an_explicit_sqlite_file_names_it(tmp_path: Path):
    database = tmp_path / "asked-for.db"
    server = Server(
        server_env(f"sqlite:///{database}", write_config(tmp_path)), tmp_path / "serve.log"
    ).start()
    try:
        await server.wait_health()
        assert start_line(server, "gRPC server started")["database"] == str(database)
        assert start_line(server, "migrating database schema")["database"] == str(database)
        (user,) = users(1)
        async with Bridge(server.target) as bridge:
            assert await bridge.call(login(user)) == (OK, "")
        assert server.terminate() == 0
    finally:
        server.stop_quietly()
    with closing(sqlite3.connect(database)) as conn:
        found = conn.execute(
            "SELECT progress FROM user_goal_progress WHERE user_id = ? AND goal_id = 'logins'",
            (user,),
        ).fetchall()
    assert found == [(1,)]


async def test_serve_names_its_postgresql_without_the_password(pg_url: str, tmp_path: Path):
    server = Server(server_env(pg_url, write_config(tmp_path)), tmp_path / "serve.log").start()
    try:
        await server.wait_health()
        database = pg_url.rpartition("/")[2]
        assert start_line(server, "gRPC server started")["database"] == (
            f"127.0.0.1:5432/{database}"
        )
        assert server.terminate() == 0
    finally:
        server.stop_quietly()
    assert ":postgres@" not in server.log_text()


def test_replay_keeps_the_embedded_default_and_names_its_file(tmp_path: Path):
    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps({"id": "r1", "namespace": "mygame", "userId": "embedded-1", "payload": {}})
        + "\n"
    )
    env = no_database_env(
        PYTHONPATH=str(ROOT),
        CONFIG_PATH=str(ROOT / "config" / "challenges.json"),
        LOG_LEVEL="info",
        LOG_FORMAT="json",
    )
    done = cli("replay", str(events), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 applied" in done.stdout
    (started,) = [json.loads(x) for x in done.stderr.splitlines() if '"replay starting"' in x]
    assert started["database"] == str(tmp_path / "data" / "challenge.db")
    assert (tmp_path / "data" / "challenge.db").is_file()
    shown = cli("progress", "embedded-1", env=env, cwd=tmp_path)
    assert shown.returncode == 0 and "completed" in shown.stdout, shown.stderr


# ------------------------------------------------------------- CHALLENGES_JSON


async def test_serve_takes_its_config_from_challenges_json(pg_url: str, tmp_path: Path):
    """The file has four goals, the variable one: the variable's is used, and a SIGHUP
    keeps it (nothing new to read) instead of switching to the file."""
    encoded = base64.b64encode(json.dumps(ENV_CONFIG).encode()).decode()
    env = server_env(pg_url, write_config(tmp_path), CHALLENGES_JSON=encoded)
    server = Server(env, tmp_path / "serve.log").start()
    try:
        await server.wait_health()
        await server.wait_ready()
        started = start_line(server, "gRPC server started")
        assert (started["config"], started["goals"]) == ("CHALLENGES_JSON", 1)
        (user,) = users(1)
        async with Bridge(server.target) as bridge:
            assert await bridge.call(login(user)) == (OK, "")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGHUP)

            async def kept() -> bool:
                return "nothing new to read" in server.log_text()

            await wait_for(kept, 30, "the SIGHUP answer")
            assert await bridge.call(login(user)) == (OK, "")
        rows = await fetch_rows(pg_url, [user])
        assert {goal for _, goal in rows} == {"env-logins"}
        assert rows[(user, "env-logins")]["progress"] == 2
        assert server.terminate() == 0
    finally:
        server.stop_quietly()
    assert encoded not in server.log_text()  # a secret: never logged


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("%%% not base64 %%%", "neither a JSON object"),
        (base64.b64encode(b'{"challenges": [\xff]}').decode(), "not UTF-8 text"),
        (base64.b64encode(b'{"challenges": "\x00"}').decode(), "NUL character"),
        ("[1, 2, 3]", "got a list"),
        ("[" * 120_000, "nested too deeply"),  # near the most one variable can hold
        ('{"challenges": [{"challengeId": "a", "goals": [{"goalId": "g"}]}]}', 'goal "g"'),
    ],
    ids=["base64", "utf8", "nul", "list", "huge", "invalid-goal"],
)
def test_serve_refuses_a_bad_challenges_json_naming_it(value: str, says: str, tmp_path: Path):
    env = server_env("sqlite:///unused.db", write_config(tmp_path), CHALLENGES_JSON=value)
    done = cli("serve", env={**os.environ, **env})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(line.startswith("error: CHALLENGES_JSON: ") for line in lines), lines
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_config_check_reads_challenges_json_and_says_so(tmp_path: Path):
    env = {**os.environ, "CONFIG_PATH": str(write_config(tmp_path))}
    checked = cli("config", "check", env={**env, "CHALLENGES_JSON": json.dumps(ENV_CONFIG)})
    assert checked.returncode == 0, checked.stderr
    first, summary = checked.stdout.splitlines()[:2]
    assert first == "CHALLENGES_JSON: OK (from the environment; it wins over CONFIG_PATH)"
    assert summary == "1 challenges, 1 goals"
    from_file = cli("config", "check", env=env)
    assert from_file.stdout.splitlines()[:2] == [
        f"{tmp_path / 'challenges.json'}: OK",
        f"1 challenges, {len(FILE_GOALS)} goals",
    ]
    refused = cli("config", "check", env={**env, "CHALLENGES_JSON": "[]"})
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: CHALLENGES_JSON: ")


@pytest.mark.kafka
async def test_worker_takes_its_config_from_challenges_json(
    pg_url: str, pg_engine: AsyncEngine, kafka_bootstrap: str, tmp_path: Path
):
    ns = kafka.new_namespace()
    await kafka.create_topics(kafka_bootstrap, ns)
    worker = kafka.Worker(
        pg_url,
        kafka_bootstrap,
        ns,
        kafka.write_config(tmp_path),
        tmp_path / "worker.log",
        CHALLENGES_JSON=json.dumps(ENV_CONFIG),
    ).start()
    try:
        await worker.wait_ready()
        started = start_line(worker, "kafka worker starting")
        database = pg_url.rpartition("/")[2]
        assert (started["config"], started["database"]) == (
            "CHALLENGES_JSON",
            f"127.0.0.1:5432/{database}",
        )
        await kafka.produce(
            kafka_bootstrap,
            [kafka.Record(kafka.login_topic(ns), kafka.login_json(ns, "kafka-env", None))],
        )

        async def written() -> bool:
            return ("kafka-env", "env-logins") in await kafka.table(pg_engine)

        await kafka.wait_for(written, 60, "the row of the environment's goal")
        assert {g for u, g in await kafka.table(pg_engine) if u == "kafka-env"} == {"env-logins"}
        assert worker.terminate() == 0
    finally:
        worker.stop_quietly()
