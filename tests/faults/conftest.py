"""Fault fixtures: outages of the real services, undone after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from tests.helpers.faults import Outage, RowLock


@pytest.fixture
def outage() -> Iterator[Outage]:
    """`outage.stop("pg")` / `outage.start("pg")` (or "kafka") inside a test."""
    faults = Outage()
    try:
        yield faults
    finally:
        faults.restore()


@pytest.fixture
async def row_lock(pg_url: str) -> AsyncIterator[Callable[..., RowLock]]:
    """`async with row_lock(users) as lock:` -- a second real session holding their rows
    FOR UPDATE (released at the end of the block, or of the test at the latest)."""
    locks: list[RowLock] = []

    def make(users: list[str], goal_id: str | None = None) -> RowLock:
        lock = RowLock(pg_url, users, goal_id)
        locks.append(lock)
        return lock

    yield make
    for lock in locks:
        await lock.release()
