"""Beside the AccelByte challenge backend (contract §5.1): its `user_goal_progress` is never
altered, never created in ASSIGNMENT_MODE=required (we wait for it, alive but not ready),
and the table we create in auto mode is the backend's, catalog for catalog."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.settings import async_database_url
from tables.migrate import upgrade
from tests.helpers.backend import (
    BACKEND_DDL,
    OLD_OURS_DDL,
    definition,
    fresh_database,
    run_sql,
)
from tests.helpers.grpc import (
    LIVENESS,
    LOGIN_SERVICE,
    NOT_SERVING,
    OK,
    SERVING,
    Bridge,
    Server,
    fetch_rows,
    login,
    server_env,
    write_config,
)
from tests.helpers.wait import wait_until_async

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]
BACKEND_INDEXES = {
    "user_goal_progress_pkey",
    "idx_user_goal_progress_user_challenge",
    "idx_user_goal_progress_user_active",
    "idx_user_goal_count",
    "idx_user_goal_lookup",
    "idx_user_goal_active_only",
}


def db_upgrade(url: str, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url, "ASSIGNMENT_MODE": mode, "LOG_FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "app", "db", "upgrade"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def backend_db(postgres_server_url: str):
    """A database where the backend migrated first (its exact DDL)."""
    with fresh_database(postgres_server_url) as url:
        asyncio.run(run_sql(url, BACKEND_DDL))
        yield url


@pytest.fixture
def empty_db(postgres_server_url: str):
    with fresh_database(postgres_server_url) as url:
        yield url


def test_backend_ddl_is_the_spec(backend_db):
    """The reference itself: index names exactly as contract §5.1 lists them."""
    found = asyncio.run(definition(backend_db))
    assert {name for name, _ in found["indexes"]} == BACKEND_INDEXES


@pytest.mark.parametrize("mode", ["auto", "required"])
async def test_upgrade_and_serve_leave_the_backends_table_unchanged(backend_db, mode, tmp_path):
    before = await definition(backend_db)
    done = await asyncio.to_thread(db_upgrade, backend_db, mode)
    assert done.returncode == 0, done.stderr
    assert "schema up to date" in done.stdout
    assert await definition(backend_db) == before
    again = await asyncio.to_thread(db_upgrade, backend_db, mode)  # idempotent
    assert again.returncode == 0, again.stderr

    config = write_config(tmp_path)
    server = Server(
        server_env(backend_db, config, ASSIGNMENT_MODE=mode), tmp_path / "serve.log"
    ).start()
    try:
        await server.wait_health(SERVING)
        await run_sql(
            backend_db,
            [
                "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace) "
                "VALUES ('coexist-1', 'logins', 'grpc-test', 'mygame')"
            ],
        )
        async with Bridge(server.target) as bridge:
            assert (await bridge.call(login("coexist-1")))[0] == OK
        rows = await fetch_rows(backend_db, ["coexist-1"])
        assert rows[("coexist-1", "logins")]["progress"] == 1
        assert server.terminate() == 0, server.log_tail()
    finally:
        server.stop_quietly()
    assert await definition(backend_db) == before


async def test_auto_on_an_empty_database_creates_exactly_the_backends_table(
    postgres_server_url,
):
    with fresh_database(postgres_server_url) as ours, fresh_database(postgres_server_url) as theirs:
        await run_sql(theirs, BACKEND_DDL)
        done = await asyncio.to_thread(db_upgrade, ours, "auto")
        assert done.returncode == 0, done.stderr
        assert await definition(ours) == await definition(theirs)


async def test_required_waits_for_the_backend_then_serves(empty_db, tmp_path):
    done = await asyncio.to_thread(db_upgrade, empty_db, "required")
    assert done.returncode == 0, done.stderr
    assert await definition(empty_db) == {}  # our tables only

    config = write_config(tmp_path)
    server = Server(
        server_env(empty_db, config, ASSIGNMENT_MODE="required", HEALTH_CHECK_INTERVAL="200ms"),
        tmp_path / "serve.log",
    ).start()
    try:
        await server.wait_ready(NOT_SERVING)
        assert await server.health(LIVENESS) == SERVING  # alive: a restart would not help
        await wait_until_async(
            lambda: "waiting for the challenge backend" in server.log_text(),
            timeout=30,
            message="the wait for the backend in serve.log",
        )
        # several probes later it still waits and has created nothing (the scenario: a
        # second of probes every 200 ms, asserted each time, not a wait for a state)
        for _ in range(5):
            assert await server.health(LOGIN_SERVICE) == NOT_SERVING
            assert await server.health(LIVENESS) == SERVING
            await asyncio.sleep(0.2)
        assert await definition(empty_db) == {}

        await run_sql(empty_db, BACKEND_DDL)  # the backend migrates
        await server.wait_ready(SERVING)
        assert "user_goal_progress appeared" in server.log_text()
        await run_sql(
            empty_db,
            [
                "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace) "
                "VALUES ('waited-1', 'logins', 'grpc-test', 'mygame')"
            ],
        )
        async with Bridge(server.target) as bridge:
            assert (await bridge.call(login("waited-1")))[0] == OK
            assert (await bridge.call(login("no-row-user")))[0] == OK  # required: dropped
        rows = await fetch_rows(empty_db, ["waited-1", "no-row-user"])
        assert rows[("waited-1", "logins")]["progress"] == 1
        assert not [key for key in rows if key[0] == "no-row-user"]
        assert server.terminate() == 0, server.log_tail()
    finally:
        server.stop_quietly()


async def test_required_stops_cleanly_while_waiting(empty_db, tmp_path):
    config = write_config(tmp_path)
    server = Server(
        server_env(empty_db, config, ASSIGNMENT_MODE="required"), tmp_path / "serve.log"
    ).start()
    try:
        await server.wait_ready(NOT_SERVING)
        assert server.terminate(timeout=30) == 0, server.log_tail()
    finally:
        server.stop_quietly()
    assert await definition(empty_db) == {}


async def test_a_table_our_old_migration_created_is_brought_in_line(postgres_server_url):
    """Databases migrated before the fix: our own old index names are replaced."""
    with fresh_database(postgres_server_url) as old, fresh_database(postgres_server_url) as theirs:
        url = async_database_url("DATABASE_URL", old)
        await asyncio.to_thread(upgrade, url, "0002_processed_events", assignment_mode="required")
        await run_sql(old, OLD_OURS_DDL)
        await run_sql(
            old,
            [
                "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, "
                "progress, status) VALUES ('kept', 'g', 'c', 'mygame', 7, 'in_progress')"
            ],
        )
        done = await asyncio.to_thread(db_upgrade, old, "auto")
        assert done.returncode == 0, done.stderr
        await run_sql(theirs, BACKEND_DDL)
        assert await definition(old) == await definition(theirs)
        rows = await fetch_rows(old, ["kept"])
        assert rows[("kept", "g")]["progress"] == 7


def _sqlite_schema(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(
            conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'user_goal_progress' "
                "AND sql IS NOT NULL"
            ).fetchall()
        )


def test_sqlite_gets_the_backends_index_names_and_required_creates_nothing(tmp_path):
    auto_db, required_db, old_db = tmp_path / "auto.db", tmp_path / "req.db", tmp_path / "old.db"
    assert db_upgrade(f"sqlite:///{auto_db}", "auto").returncode == 0
    schema = _sqlite_schema(auto_db)
    assert set(schema) == (BACKEND_INDEXES - {"user_goal_progress_pkey"}) | {"user_goal_progress"}
    assert "WHERE is_active = true" in schema["idx_user_goal_active_only"]
    assert schema["user_goal_progress"].count("DEFAULT CURRENT_TIMESTAMP NOT NULL") == 2

    assert db_upgrade(f"sqlite:///{required_db}", "required").returncode == 0
    assert _sqlite_schema(required_db) == {}

    upgrade(f"sqlite+aiosqlite:///{old_db}", "0002_processed_events", assignment_mode="required")
    with sqlite3.connect(old_db) as conn:
        for statement in OLD_OURS_DDL:
            conn.execute(statement)
    assert db_upgrade(f"sqlite:///{old_db}", "auto").returncode == 0
    assert set(_sqlite_schema(old_db)) == set(schema)
