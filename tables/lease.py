"""One active publisher per sink across replicas: a PostgreSQL session advisory lock.

The replica whose session holds a sink's lock publishes to that sink; the others stand
by and try again now and then. The lock lives as long as the session: when the active
replica dies (kill -9, a lost connection), PostgreSQL releases it and a standby takes
over, resuming from the outbox (at-least-once; the ids are stable). One writer per sink
keeps the events of one user in id order. SQLite is single-process: always held.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

LEASE_CLASS = 0x636D706C  # the first key of every sink's lock ("cmpl")


def lease_key(sink: str) -> int:
    """The second key: the sink's name, hashed into PostgreSQL's int4."""
    return zlib.crc32(sink.encode()) & 0x7FFFFFFF


class SinkLease:
    """Holds (or tries to take) the publishing lease of one sink."""

    def __init__(self, engine: AsyncEngine, sink: str):
        self.engine = engine
        self.sink = sink
        self.shared = engine.dialect.name == "postgresql"
        self._conn: AsyncConnection | None = None

    @property
    def held(self) -> bool:
        return not self.shared or self._conn is not None

    async def acquire(self) -> bool:
        """True when this process holds the lease now (taken now or kept); a dead
        session is noticed here and the lease taken afresh when free."""
        if not self.shared:
            return True
        if self._conn is not None:
            try:
                await self._conn.execute(text("SELECT 1"))
                await self._conn.commit()
                return True
            except Exception as exc:
                log.warning(
                    "completion publisher lost its lease session",
                    extra={"sink": self.sink, "error": str(exc)[:200]},
                )
                await self.release()
        conn = await self.engine.connect()
        try:
            taken = await conn.scalar(
                text("SELECT pg_try_advisory_lock(:a, :b)"),
                {"a": LEASE_CLASS, "b": lease_key(self.sink)},
            )
            await conn.commit()  # the session lock outlives the transaction
        except BaseException:
            await _close(conn)
            raise
        if not taken:
            await _close(conn)
            return False
        self._conn = conn
        log.info("completion publisher active", extra={"sink": self.sink})
        return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.execute(
                text("SELECT pg_advisory_unlock(:a, :b)"),
                {"a": LEASE_CLASS, "b": lease_key(self.sink)},
            )
            await conn.commit()
        except Exception as exc:  # a dead session released it already
            log.debug("lease unlock failed", extra={"error": str(exc)[:200]})
        await _close(conn)


async def _close(conn: Any) -> None:
    try:
        await conn.close()
    except Exception as exc:
        log.debug("lease connection close failed", extra={"error": str(exc)[:200]})
