"""Positions bookkeeping (no broker): what counts as already applied, and the round trip
through challenge_consumer_offsets inside a transaction."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.events import Event, EventType
from app.kafka.codec import Forwarded, decode, encode
from tables import positions as pos
from tests.helpers.kafka import BASE_TIME


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
