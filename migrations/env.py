"""Alembic environment: async engines (asyncpg / aiosqlite), URL from the app settings."""

from __future__ import annotations

import asyncio

from alembic import context

from app.core.settings import Settings
from tables.db import make_engine
from tables.migrate import ensure_progress_table, lock_migrations
from tables.schema import metadata

config = context.config


def _url() -> str:
    return config.attributes.get("database_url") or Settings.from_env().database_url


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        lock_migrations(connection)
        context.run_migrations()
        # the backend's table: created only when missing and ASSIGNMENT_MODE=auto
        mode = config.attributes.get("assignment_mode") or Settings.from_env().assignment_mode
        config.attributes["progress_table"] = ensure_progress_table(
            connection, create=mode == "auto"
        )


async def _run_async() -> None:
    engine = make_engine(_url(), pool_size=1)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
