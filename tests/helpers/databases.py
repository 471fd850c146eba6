"""Fresh PostgreSQL databases beside the session's one, for tests that compare runs each
into its own database (or must see every row of every table as theirs alone)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from app.core.settings import async_database_url
from tables.db import make_engine
from tables.migrate import upgrade


async def _admin(server_url: str, sql: str) -> None:
    engine = make_engine(async_database_url("DATABASE_URL", server_url))
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def create_database(server_url: str) -> str:
    """A new migrated database on the server of `server_url`; its plain postgresql:// URL.

    Runs its own event loop (migrations are synchronous): call it outside one, or in a
    thread (`asyncio.to_thread`)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    base, _, _ = server_url.rpartition("/")
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    url = f"{base}/{name}"
    upgrade(async_database_url("DATABASE_URL", url))
    return url


def drop_database(server_url: str, url: str) -> None:
    name = url.rpartition("/")[2]
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def fresh_databases(server_url: str, count: int) -> Iterator[list[str]]:
    """`count` fresh databases, dropped afterwards."""
    urls: list[str] = []
    try:
        for _ in range(count):
            urls.append(create_database(server_url))
        yield urls
    finally:
        for url in urls:
            drop_database(server_url, url)
