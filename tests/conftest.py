"""Real services for the tests.

PostgreSQL: `DATABASE_URL` when set (a plain postgresql:// URL to a server we may create
databases on), else a testcontainers PostgreSQL when a Docker engine answers, else the
test run fails with how to start one. Kafka likewise with `KAFKA_BOOTSTRAP_SERVERS`.
Each test session works in its own freshly created database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.settings import async_database_url
from tables.db import make_engine
from tables.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
HOW_TO = (
    "start the real services with `bash scripts/services.sh up` and export the two lines it "
    "prints (DATABASE_URL=..., KAFKA_BOOTSTRAP_SERVERS=...), or run the tests with a Docker "
    "engine available (testcontainers)"
)


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """Plain postgresql:// URL of a server (any database on it)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            pytest.fail(f"DATABASE_URL must be a postgresql:// URL for the tests, got {url!r}")
        yield url
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver=None) as container:
            yield container.get_connection_url()
        return
    pytest.fail(f"PostgreSQL is needed: DATABASE_URL is not set and no Docker engine; {HOW_TO}")


def _admin(server_url: str, sql: str) -> None:
    import asyncio

    async def run() -> None:
        engine = make_engine(async_database_url("DATABASE_URL", server_url))
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(sql))
        await engine.dispose()

    asyncio.run(run())


@pytest.fixture(scope="session")
def pg_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test session (plain postgresql:// URL)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    base, _, _ = postgres_server_url.rpartition("/")
    _admin(postgres_server_url, f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    upgrade(async_database_url("DATABASE_URL", url))
    yield url
    _admin(postgres_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.db'}"
    upgrade(async_database_url("DATABASE_URL", url))
    return url


CLEAN = (
    "DELETE FROM user_goal_progress",
    "DELETE FROM challenge_daily_marks",
    "DELETE FROM challenge_consumer_offsets",
    "DELETE FROM challenge_dead_letters",
    "DELETE FROM challenge_processed_events",
    "DELETE FROM challenge_completion_deliveries",
    "DELETE FROM challenge_goal_completions",
)


async def _clean_engine(url: str) -> AsyncEngine:
    engine = make_engine(async_database_url("DATABASE_URL", url))
    async with engine.begin() as conn:
        for statement in CLEAN:
            await conn.execute(text(statement))
    return engine


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await _clean_engine(pg_url)
    yield engine
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request: pytest.FixtureRequest) -> str:
    """Both databases the rules must hold on."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
async def engine(any_db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await _clean_engine(any_db_url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if servers:
        yield servers
        return
    if _docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    pytest.fail(
        f"Kafka is needed: KAFKA_BOOTSTRAP_SERVERS is not set and no Docker engine; {HOW_TO}"
    )


KINDS = ("unit", "db", "e2e", "faults")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its kind from its folder (tests/unit -> unit, ...)."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in KINDS:
            item.add_marker(getattr(pytest.mark, parts[0]))
