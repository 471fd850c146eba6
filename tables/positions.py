"""Kafka positions stored with the rows they produced (exactly-once effect).

Rows of `challenge_consumer_offsets`:
- (group, repartition topic, partition) -> next repartition offset to apply;
- (group#partition, source topic, source partition) -> next SOURCE offset to apply
  through that repartition partition. A record the source agent forwarded twice (crash
  between forwarding and committing the source offset) carries an old source offset and
  is dropped.

- (group, source topic, source partition) -> next SOURCE offset applied directly: a
  record keyed by its user id (what AGS produces) skips the repartition hop and is
  applied from the source partition; one position per source partition suffices because
  those records are applied in offset order.

All are upserted by the flush transaction that writes the rows, so after any crash the
database says exactly which records are already in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tables.schema import challenge_consumer_offsets as offsets

SourceTP = tuple[str, int]


@dataclass
class PartitionPositions:
    """What one repartition partition has applied (committed or buffered)."""

    next_offset: int = 0
    sources: dict[SourceTP, int] = field(default_factory=dict)  # next source offset

    def seen(self, offset: int, source: SourceTP, source_offset: int) -> bool:
        """True when this record (or a copy forwarded earlier) is already applied."""
        if offset < self.next_offset:
            return True
        return source_offset < self.sources.get(source, 0)

    def advance(self, offset: int, source: SourceTP, source_offset: int) -> None:
        self.next_offset = offset + 1
        if source_offset + 1 > self.sources.get(source, 0):
            self.sources[source] = source_offset + 1


async def load_direct(engine: AsyncEngine, group: str, topic: str, partition: int) -> int:
    """Next source offset to apply directly (0: none applied yet); once per assignment."""
    t = offsets.c
    query = select(t.next_offset).where(
        (t.consumer_group == group) & (t.topic == topic) & (t.partition == partition)
    )
    async with engine.connect() as conn:
        found = (await conn.execute(query)).scalar()
    return int(found) if found is not None else 0


def direct_rows(group: str, changed: Mapping[SourceTP, int]) -> list[dict[str, object]]:
    return [
        {"consumer_group": group, "topic": topic, "partition": partition, "next_offset": offset}
        for (topic, partition), offset in sorted(changed.items())
    ]


def source_group(group: str, partition: int) -> str:
    return f"{group}#{partition}"


async def load(engine: AsyncEngine, group: str, topic: str, partition: int) -> PartitionPositions:
    """One query per partition assignment (never per event)."""
    t = offsets.c
    query = select(t.consumer_group, t.topic, t.partition, t.next_offset).where(
        or_(
            (t.consumer_group == group) & (t.topic == topic) & (t.partition == partition),
            t.consumer_group == source_group(group, partition),
        )
    )
    positions = PartitionPositions()
    async with engine.connect() as conn:
        for row_group, row_topic, row_partition, next_offset in await conn.execute(query):
            if row_group == group:
                positions.next_offset = int(next_offset)
            else:
                positions.sources[(row_topic, int(row_partition))] = int(next_offset)
    return positions


def rows_for(
    group: str, topic: str, changed: Mapping[int, PartitionPositions]
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for partition, positions in sorted(changed.items()):
        rows.append(
            {
                "consumer_group": group,
                "topic": topic,
                "partition": partition,
                "next_offset": positions.next_offset,
            }
        )
        for (source_topic, source_partition), next_offset in sorted(positions.sources.items()):
            rows.append(
                {
                    "consumer_group": source_group(group, partition),
                    "topic": source_topic,
                    "partition": source_partition,
                    "next_offset": next_offset,
                }
            )
    return rows


async def store(conn: AsyncConnection, rows: list[dict[str, object]]) -> None:
    """Upsert inside the caller's transaction (the flush that wrote the rows)."""
    if not rows:
        return
    insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = insert(offsets)
    statement = statement.on_conflict_do_update(
        index_elements=["consumer_group", "topic", "partition"],
        set_={"next_offset": statement.excluded.next_offset},
    )
    await conn.execute(statement, rows)
