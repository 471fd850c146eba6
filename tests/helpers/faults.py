"""Faults injected into the real services (scripts/services.sh), always undone."""

from __future__ import annotations

import subprocess
from typing import Any

import asyncpg

from tests.helpers.process import ROOT


def services(*args: str) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "services.sh"), *args],
        check=True,
        timeout=180,
        capture_output=True,
    )


class Outage:
    """Stops and starts a real service ("pg" or "kafka"); whatever is still stopped at
    the end of the test is started again by the fixture."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()

    def stop(self, service: str) -> None:
        self.stopped.add(service)
        services("stop", service)

    def start(self, service: str) -> None:
        services("start", service)
        self.stopped.discard(service)

    def restore(self) -> None:
        for service in sorted(self.stopped):
            self.start(service)


class RowLock:
    """A second, real PostgreSQL session holding `SELECT ... FOR UPDATE` on users' rows,
    as the challenge backend's claim does while it grants a reward.

        async with RowLock(pg_url, ["alice"]) as lock:   # held here
            ...
            await lock.release()                          # or at the end of the block
    """

    def __init__(self, pg_url: str, users: list[str], goal_id: str | None = None):
        self.url = pg_url
        self.users = users
        self.goal_id = goal_id
        self.locked = 0
        self._conn: asyncpg.Connection | None = None
        self._tx: Any = None

    async def __aenter__(self) -> RowLock:
        self._conn = await asyncpg.connect(self.url)
        self._tx = self._conn.transaction()
        await self._tx.start()
        sql = "SELECT 1 FROM user_goal_progress WHERE user_id = ANY($1::text[])"
        args: list[Any] = [self.users]
        if self.goal_id is not None:
            sql += " AND goal_id = $2"
            args.append(self.goal_id)
        self.locked = len(await self._conn.fetch(sql + " FOR UPDATE", *args))
        return self

    async def release(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            await self._tx.rollback()
        finally:
            await conn.close()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
