"""Positions bookkeeping (no broker): what counts as already applied, and the round trip
through challenge_consumer_offsets inside a transaction."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.events import Event, EventType
from app.core.progress import Delta
from app.kafka.codec import Forwarded, decode, encode
from app.kafka.runtime import FlushPositions
from app.pipeline import source_of
from tables import positions as pos
from tables.db import RETRY
from tables.flusher import Flusher
from tables.write_result import RowsLocked, TransientWriteError
from tables.writer import Writer
from tests.helpers.faults import RowLock
from tests.helpers.kafka import BASE_TIME
from tests.helpers.support import config, goal, login, put_row, row
from tests.helpers.wait import wait_until_async


def test_seen_and_advance():
    p = pos.PartitionPositions()
    src = ("t.src", 2)
    assert not p.seen(0, src, 10)
    p.advance(0, src, 10)
    assert p.seen(0, src, 11)  # repartition offset already applied
    assert p.seen(1, src, 10)  # same source record forwarded again
    assert p.seen(1, src, 9)  # older source record
    assert not p.seen(1, src, 11)
    assert not p.seen(1, ("t.src", 3), 0)  # other source partition: independent
    p.advance(1, src, 8)  # never moves a source position backwards
    assert p.sources[src] == 11 and p.next_offset == 2


def test_forwarded_record_round_trip():
    event = Event("id:1", EventType.STATISTIC, "ns", "u:1", BASE_TIME, "kills", 7, -2)
    item = Forwarded(event, "ns.topic", 3, 1234, 1_700_000_000_000)
    assert decode(encode(item)) == item


@pytest.mark.postgres
async def test_store_then_load(pg_engine: AsyncEngine):
    live = {
        0: pos.PartitionPositions(17, {("a", 0): 5, ("b", 1): 9}),
        3: pos.PartitionPositions(4, {("a", 2): 1}),
    }
    async with pg_engine.begin() as conn:
        await pos.store(conn, pos.rows_for("g", "rt", live))
    live[0] = pos.PartitionPositions(20, {("a", 0): 6, ("b", 1): 9})
    async with pg_engine.begin() as conn:  # upsert moves them on
        await pos.store(conn, pos.rows_for("g", "rt", {0: live[0]}))
    assert await pos.load(pg_engine, "g", "rt", 0) == live[0]
    assert await pos.load(pg_engine, "g", "rt", 3) == live[3]
    assert await pos.load(pg_engine, "other", "rt", 0) == pos.PartitionPositions()


# ----------------------------------------------------------------- flushes in parts

CFG = config(goal("logins", "login", target=1000, type="increment"))


def login_delta(user: str) -> Delta:
    event = login(user, "2026-11-20 10:00")
    (goal_,) = CFG.goals_for(source_of(event), "")
    delta = Delta(goal_, user, event.namespace, None, event.event_time)
    delta.add(event)
    return delta


def direct_row(partition: int, offset: int, topic: str = "t.login") -> list[dict[str, object]]:
    return pos.direct_rows("g", {(topic, partition): offset})


def test_a_flush_splits_by_the_partitions_its_users_came_from():
    """Each part gets the users of its partitions and exactly those partitions'
    positions; partitions sharing a user stay together; the rest goes to the first."""
    users = {"a1": ("d", 0), "a2": ("d", 0), "b1": ("d", 1), "c1": ("d", 2), "c2": ("r", 5)}
    positions = FlushPositions(
        {
            ("d", 0): direct_row(0, 10),
            ("d", 1): direct_row(1, 20),
            ("d", 2): direct_row(2, 30),
            ("r", 5): pos.rows_for("g", "rt", {5: pos.PartitionPositions(7)}),
            ("d", 3): direct_row(3, 40),  # nothing applied (all skipped): still stored
        },
        users,
        {(("d", 2), ("r", 5))},  # c-users: records in a source and the repartition topic
    )
    deltas = [login_delta(u) for u in ("a1", "a2", "b1", "c1", "c2", "stray")]
    parts = positions.split(deltas, 2)
    # largest components first, each to the part with the fewest deltas so far
    assert [sorted(d.user_id for d in part) for part, _ in parts] == [
        ["a1", "a2", "b1", "stray"],
        ["c1", "c2"],
    ]
    ((whole, _store),) = positions.split(deltas, 1)  # one way: one part, all of it
    assert sorted(d.user_id for d in whole) == sorted(d.user_id for d in deltas)
    assert len(positions.split(deltas, 8)) == 3  # never more parts than components


@pytest.mark.postgres
async def test_parts_commit_apart_with_their_own_positions(pg_engine: AsyncEngine, pg_url):
    """A held row in one part: the other part commits with its rows and only its
    partitions' positions; the held part is reported (RowsLocked, its deltas remaining)
    and, retried after the release, commits with the rest. Nothing applied twice."""
    for user in ("p0-a", "p0-b", "p1-a", "p1-b"):
        await put_row(pg_engine, user, "logins", status="not_started")
    users = {"p0-a": ("d", 0), "p0-b": ("d", 0), "p1-a": ("d", 1), "p1-b": ("d", 1)}
    positions = FlushPositions(
        {("d", 0): direct_row(0, 100), ("d", 1): direct_row(1, 200)}, users, set()
    )
    writer = Writer(pg_engine, batch_size=1, parallelism=2)
    deltas = [login_delta(u) for u in users]
    async with RowLock(pg_url, ["p1-b"]):
        with pytest.raises(RowsLocked) as raised:
            await writer.write(deltas, positions)
        assert sorted(d.user_id for d in raised.value.remaining or []) == ["p1-a", "p1-b"]
        assert raised.value.committed is not None and raised.value.committed.updated == 2
        assert await pos.load_direct(pg_engine, "g", "t.login", 0) == 100
        assert await pos.load_direct(pg_engine, "g", "t.login", 1) == 0  # not stored
        assert (await row(pg_engine, "p0-a", "logins")).progress == 1
        assert (await row(pg_engine, "p1-a", "logins")).progress == 0
    assert raised.value.remaining_extra is not None
    result = await writer.write(raised.value.remaining or [], raised.value.remaining_extra)
    assert result.updated == 2
    assert await pos.load_direct(pg_engine, "g", "t.login", 0) == 100
    assert await pos.load_direct(pg_engine, "g", "t.login", 1) == 200
    for user in users:
        assert (await row(pg_engine, user, "logins")).progress == 1


@pytest.mark.postgres
async def test_a_retried_part_stores_only_its_own_positions(pg_engine: AsyncEngine, pg_url):
    """The flusher retries only the held part, with only its partitions' positions: a
    committed part's partition may belong to another worker by then (a rebalance), and
    storing its old position again would move that worker's position back (its events
    applied twice after the next restart)."""
    users = {"p0-a": ("d", 0), "p0-b": ("d", 0), "p1-a": ("d", 1), "p1-b": ("d", 1)}
    for user in users:
        await put_row(pg_engine, user, "logins", status="not_started")
    positions = FlushPositions(
        {("d", 0): direct_row(0, 100), ("d", 1): direct_row(1, 200)}, users, set()
    )
    flusher = Flusher(
        Writer(pg_engine, batch_size=1, parallelism=2),
        interval=0.02,
        max_backoff=0.05,
        extra_for=lambda _generation: positions,
    )
    flusher.start()
    try:
        async with RowLock(pg_url, ["p1-b"]):
            for user in users:
                event = login(user, "2026-11-20 10:00")
                generation, _ = await flusher.add(event, CFG.goals_for(source_of(event), ""))
            # the free part committed; the held one failed (and is retried from now on)
            await wait_until_async(lambda: flusher.failures, message="the held part to fail")
            assert await pos.load_direct(pg_engine, "g", "t.login", 0) == 100
            assert await pos.load_direct(pg_engine, "g", "t.login", 1) == 0
            async with pg_engine.begin() as conn:  # partition 0's new owner moves on
                await pos.store(conn, direct_row(0, 150))
        await asyncio.wait_for(asyncio.shield(generation.done), 10)
    finally:
        await flusher.close()
    assert await pos.load_direct(pg_engine, "g", "t.login", 0) == 150
    assert await pos.load_direct(pg_engine, "g", "t.login", 1) == 200
    for user in users:
        assert (await row(pg_engine, user, "logins")).progress == 1


class _DeadlockInOnePart:
    """A PartedExtra whose first part's work meets a real deadlock-class error."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    async def __call__(self, conn) -> None:  # the flush as one transaction
        self.stored.append("whole")

    def split(self, deltas, ways):
        async def deadlock(conn) -> None:
            await conn.execute(
                text("DO $$ BEGIN RAISE EXCEPTION 'deadlock' USING ERRCODE = '40P01'; END $$")
            )

        async def fine(conn) -> None:
            self.stored.append("p1")

        return [
            ([d for d in deltas if d.user_id.startswith("p0")], deadlock),
            ([d for d in deltas if d.user_id.startswith("p1")], fine),
        ]


@pytest.mark.postgres
async def test_a_held_part_beside_a_failing_one_is_reported_as_the_failure_not_as_held(
    pg_engine: AsyncEngine, pg_url
):
    """One part held by another transaction, the other failing with a deadlock: the
    error is the deadlock's (a data error, retried a few times and then isolated), not
    RowsLocked (waited for without end). Nothing committed, so the flush is retried
    whole, with its own split (not both parts glued into one transaction)."""
    users = ["p0-a", "p1-a"]
    for user in users:
        await put_row(pg_engine, user, "logins", status="not_started")
    extra = _DeadlockInOnePart()
    writer = Writer(pg_engine, batch_size=1, parallelism=2)
    async with RowLock(pg_url, ["p1-a"]):
        with pytest.raises(TransientWriteError) as raised:
            await writer.write([login_delta(u) for u in users], extra)
    assert not isinstance(raised.value, RowsLocked)
    assert raised.value.kind == RETRY and "deadlock" in str(raised.value)
    assert raised.value.remaining is None and raised.value.remaining_extra is None
    assert extra.stored == []


@pytest.mark.postgres
async def test_each_part_stores_exactly_its_partitions_positions(pg_engine: AsyncEngine):
    positions = FlushPositions(
        {("d", 0): direct_row(0, 10), ("d", 1): direct_row(1, 20), ("d", 3): direct_row(3, 40)},
        {"a": ("d", 0), "b": ("d", 1)},
    )
    parts = positions.split([login_delta("a"), login_delta("b")], 2)
    stored = []
    for _part, store in parts:
        async with pg_engine.begin() as conn:
            await store(conn)
        stored.append([await pos.load_direct(pg_engine, "g", "t.login", n) for n in range(4)])
    # the first part (a) also takes the positions no delta came with (partition 3)
    assert stored == [[10, 0, 0, 40], [10, 20, 0, 40]]
