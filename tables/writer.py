"""Writes one flush of buffered deltas (docs/contract.md §5.2): one transaction, or a
few committed apart when the flush is large (tables/parts.py).

- Deltas for the same (user, goal) but different periods (a replay spanning days) go
  in successive rounds, oldest period first; each round is written in key order, one
  statement per `DB_BATCH_SIZE` rows (tables/merge_runner.py).
- Extra work (Kafka offsets) joins the same transaction through `extra`.
- Held rows, the optimistic and locking forms, poison isolation and transient errors:
  tables/transaction.py and tables/isolation.py.
- A small gRPC flush with event ids may be written as one statement outside a
  transaction (`MergeForm.SINGLE`); what it cannot settle alone is written the long way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.clock import now_utc
from app.core.progress import Delta
from app.core.time_bounds import TimeBounds, refused_deltas
from tables import parts
from tables.event_ids import EventClaim
from tables.merge_runner import MergeRunner
from tables.transaction import LOCK_TIMEOUT, Batch, TransactionWriter
from tables.write_result import Extra, WriteResult


class Writer:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch_size: int = 1000,
        assignment_mode: str = "auto",
        parallelism: int = 1,
        optimistic: bool = True,
        lock_timeout: str = LOCK_TIMEOUT,
        time_bounds: TimeBounds | None = None,
    ):
        self.engine = engine
        # last line of defence: a delta holding a time out of bounds is never sent
        self.time_bounds = time_bounds or TimeBounds()
        self.batch_size = batch_size
        self.dialect = engine.dialect.name
        self.runner = MergeRunner(self.dialect, assignment_mode, batch_size)
        self.transactions = TransactionWriter(
            engine,
            self.runner,
            self.time_bounds,
            optimistic=optimistic,
            lock_timeout=lock_timeout,
        )
        # SQLite has one writer; PostgreSQL can merge disjoint users on several connections.
        self.parallelism = parallelism if self.dialect == "postgresql" else 1

    @property
    def lock_fallbacks(self) -> int:
        """Optimistic flushes redone with row locks (a row held by another transaction)."""
        return self.transactions.lock_fallbacks

    async def write(
        self,
        deltas: Sequence[Delta],
        extra: Extra | None = None,
        *,
        source: str = "flush",
        claim: EventClaim | None = None,
        isolate: bool = False,
    ) -> WriteResult:
        """Commit every delta (or dead-letter the poison ones) plus `extra`.

        With `claim`, the flush's event ids are recorded in the same transaction and
        events already applied (by another replica, or before a restart) are left out.
        `isolate`: go straight to row-by-row isolation (a batch that keeps failing).
        """
        ways = min(self.parallelism, len(deltas) // self.batch_size)
        split = parts.split(deltas, extra, ways)
        if len(split) < 2:
            return await self.write_one(deltas, extra, source, claim, isolate)
        outcomes = await asyncio.gather(
            *(
                self.write_one(
                    part,
                    part_extra,
                    source,
                    None if claim is None else claim.only_users({d.user_id for d in part}),
                    isolate,
                )
                for part, part_extra in split
            ),
            return_exceptions=True,
        )
        return parts.combine(split, outcomes)

    async def write_one(
        self,
        deltas: Sequence[Delta],
        extra: Extra | None,
        source: str,
        claim: EventClaim | None = None,
        isolate: bool = False,
    ) -> WriteResult:
        """One part: one statement when it can settle it alone, else one transaction."""
        # a time out of bounds is dead-lettered by the transaction, never the one statement
        if (
            claim is not None
            and extra is None
            and not isolate
            and self.runner.may_take_single(deltas)
            and not refused_deltas(self.time_bounds, deltas, now_utc())
        ):
            single = await self.runner.single(self.engine, deltas, claim)
            if single is not None:
                return single
        return await self.transactions.write(Batch(deltas, extra, claim, source), isolate)
