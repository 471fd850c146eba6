"""Schema upgrade (`python -m app db upgrade`, and every mode at start) and coexistence
with the AccelByte challenge backend (contract §5.1).

Alembic's versioned migrations create and change only our own `challenge_*` tables (its
version table is `alembic_version`; the backend's golang-migrate keeps
`schema_migrations`). `user_goal_progress` is the backend's: after the migrations, in
the same transaction, it is created only when it is missing and ASSIGNMENT_MODE=auto —
exactly as the backend's migration creates it — and never altered when it exists. With
ASSIGNMENT_MODE=required it is never created: `serve` waits for the backend to create
it (`wait_for_progress_table`), health NOT_SERVING meanwhile.

On PostgreSQL the whole upgrade holds a transaction-level advisory lock, so replicas
starting together migrate one after the other instead of racing on CREATE TABLE.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.settings import Settings
from tables.schema import user_goal_progress

ROOT = Path(__file__).resolve().parent.parent
PROGRESS_TABLE = "user_goal_progress"
MIGRATION_LOCK_KEY = 0x63686C67  # pg_advisory_xact_lock key shared by every replica

log = logging.getLogger(__name__)


def alembic_config(database_url: str, assignment_mode: str | None = None) -> Config:
    """`assignment_mode` None: ASSIGNMENT_MODE from the environment (auto when unset)."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["assignment_mode"] = assignment_mode or Settings.from_env().assignment_mode
    return config


def upgrade(
    database_url: str, revision: str = "head", *, assignment_mode: str | None = None
) -> bool:
    """Run the migrations; returns whether user_goal_progress exists afterwards."""
    config = alembic_config(database_url, assignment_mode)
    command.upgrade(config, revision)
    return bool(config.attributes.get("progress_table", False))


async def upgrade_async(
    database_url: str, revision: str = "head", *, assignment_mode: str | None = None
) -> bool:
    """Alembic's env runs its own event loop; keep it off ours."""
    return await asyncio.to_thread(upgrade, database_url, revision, assignment_mode=assignment_mode)


def lock_migrations(connection: Connection) -> None:
    """Serialise concurrent upgrades (PostgreSQL; SQLite has one writer anyway)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


def ensure_progress_table(connection: Connection, *, create: bool) -> bool:
    """After the migrations, same transaction: create the backend's table when it is
    missing and `create` (ASSIGNMENT_MODE=auto); never touch an existing one.
    Returns whether the table exists."""
    if inspect(connection).has_table(PROGRESS_TABLE):
        return True
    if not create:
        log.warning(
            "user_goal_progress does not exist: ASSIGNMENT_MODE=required leaves it to the "
            "challenge backend, which creates it"
        )
        return False
    user_goal_progress.create(connection)  # with its indexes, named as the backend names them
    log.info("created user_goal_progress as the challenge backend's migration does")
    return True


async def progress_table_exists(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.run_sync(lambda c: inspect(c).has_table(PROGRESS_TABLE)))


async def wait_for_progress_table(
    engine: AsyncEngine, stop: asyncio.Event, *, interval: float = 1.0, remind: float = 60.0
) -> bool:
    """ASSIGNMENT_MODE=required: poll until the backend has created the table.

    Returns True once it exists, False when `stop` is set first. Logs when the wait
    starts, every `remind` seconds while it lasts, and when it ends.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    next_log = started
    while True:
        try:
            if await progress_table_exists(engine):
                if loop.time() > started:
                    log.info(
                        "user_goal_progress appeared: serving",
                        extra={"waited_s": round(loop.time() - started, 1)},
                    )
                return True
        except Exception as exc:  # database unreachable: keep waiting, health says so
            log.debug("table probe failed", extra={"error": str(exc)[:200]})
        if loop.time() >= next_log:
            log.warning(
                "waiting for the challenge backend to create user_goal_progress "
                "(ASSIGNMENT_MODE=required); health NOT_SERVING until it exists",
                extra={"waited_s": round(loop.time() - started, 1)},
            )
            next_log = loop.time() + remind
        try:
            await asyncio.wait_for(stop.wait(), interval)
            return False
        except TimeoutError:
            pass
