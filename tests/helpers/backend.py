"""The AccelByte challenge backend's side of the shared database, for coexistence tests.

`BACKEND_DDL` is the backend's migration for `user_goal_progress`, written here from
contract §5.1 on purpose (not taken from tables/schema.py), so a table we create is compared
with the backend's, not with itself. `definition()` reads a table's full definition from
the catalogs: columns (type, nullability, default, order), constraints, indexes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text

from app.core.settings import async_database_url
from tables.db import make_engine

BACKEND_DDL = (
    """
    CREATE TABLE user_goal_progress (
        user_id VARCHAR(100) NOT NULL,
        goal_id VARCHAR(100) NOT NULL,
        challenge_id VARCHAR(100) NOT NULL,
        namespace VARCHAR(100) NOT NULL,
        progress INT NOT NULL DEFAULT 0,
        status VARCHAR(20) NOT NULL DEFAULT 'not_started',
        completed_at TIMESTAMP NULL,
        claimed_at TIMESTAMP NULL,
        created_at TIMESTAMP NOT NULL DEFAULT NOW(),
        updated_at TIMESTAMP NOT NULL DEFAULT NOW(),
        is_active BOOLEAN NOT NULL DEFAULT true,
        assigned_at TIMESTAMP NULL,
        expires_at TIMESTAMP NULL,
        baseline_value INT NULL,
        PRIMARY KEY (user_id, goal_id),
        CONSTRAINT check_status CHECK (status IN ('not_started', 'in_progress', 'completed', 'claimed')),
        CONSTRAINT check_progress_non_negative CHECK (progress >= 0),
        CONSTRAINT check_claimed_implies_completed CHECK (claimed_at IS NULL OR completed_at IS NOT NULL)
    )
    """,
    "CREATE INDEX idx_user_goal_progress_user_challenge ON user_goal_progress(user_id, challenge_id)",
    "CREATE INDEX idx_user_goal_progress_user_active ON user_goal_progress(user_id, is_active) WHERE is_active = true",
    "CREATE INDEX idx_user_goal_count ON user_goal_progress(user_id)",
    "CREATE INDEX idx_user_goal_lookup ON user_goal_progress(user_id, goal_id)",
    "CREATE INDEX idx_user_goal_active_only ON user_goal_progress(user_id) WHERE is_active = true",
)

# What the first version of our migration 0001 created (other index names, predicates
# `WHERE is_active`, CURRENT_TIMESTAMP defaults): databases migrated before the fix.
OLD_OURS_DDL = (
    BACKEND_DDL[0].replace("DEFAULT NOW()", "DEFAULT CURRENT_TIMESTAMP"),
    "CREATE INDEX idx_user_goal_progress_user_challenge ON user_goal_progress (user_id, challenge_id)",
    "CREATE INDEX idx_user_goal_progress_user_active ON user_goal_progress (user_id, is_active) WHERE is_active",
    "CREATE INDEX idx_user_goal_progress_user_id ON user_goal_progress (user_id)",
    "CREATE INDEX idx_user_goal_progress_user_goal ON user_goal_progress (user_id, goal_id)",
    "CREATE INDEX idx_user_goal_progress_user_active_only ON user_goal_progress (user_id) WHERE is_active",
)

_COLUMNS = (
    "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default, "
    "ordinal_position FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = 'user_goal_progress' "
    "ORDER BY ordinal_position"
)
_CONSTRAINTS = (
    "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE conrelid = 'user_goal_progress'::regclass ORDER BY conname"
)
_INDEXES = (
    "SELECT indexname, indexdef FROM pg_indexes "
    "WHERE schemaname = current_schema() AND tablename = 'user_goal_progress' ORDER BY indexname"
)


def _admin(server_url: str, sql: str) -> None:
    """On its own thread and loop: callable from sync and async tests alike."""

    async def run() -> None:
        engine = make_engine(async_database_url("DATABASE_URL", server_url), pool_size=1)
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(sql))
        await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """An empty PostgreSQL database (plain URL), dropped afterwards."""
    name = f"coexist_{uuid.uuid4().hex[:10]}"
    base, _, _ = server_url.rpartition("/")
    _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run_sql(url: str, statements: tuple[str, ...] | list[str]) -> None:
    engine = make_engine(async_database_url("DATABASE_URL", url), pool_size=1)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def definition(url: str) -> dict[str, Any]:
    """user_goal_progress as the catalogs describe it (None when it does not exist)."""
    engine = make_engine(async_database_url("DATABASE_URL", url), pool_size=1)
    try:
        async with engine.connect() as conn:
            exists = (
                await conn.execute(text("SELECT to_regclass('user_goal_progress') IS NOT NULL"))
            ).scalar_one()
            if not exists:
                return {}
            return {
                "columns": [tuple(r) for r in await conn.execute(text(_COLUMNS))],
                "constraints": [tuple(r) for r in await conn.execute(text(_CONSTRAINTS))],
                "indexes": [tuple(r) for r in await conn.execute(text(_INDEXES))],
            }
    finally:
        await engine.dispose()
