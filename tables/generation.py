"""One generation: everything buffered between two flushes, and what waits on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.core.challenges import Goal
from app.core.events import Event
from app.core.progress import BufferKey, Delta, fold
from tables.waiters import Waiters
from tables.write_result import WriteResult

# Every event of a generation with the goals it moved (kept with event-id tracking, to
# re-fold a flush without the events another replica already applied).
EventLog = list[tuple[Event, tuple[Goal, ...]]]


@dataclass(slots=True, eq=False)
class Generation:
    """Slotted: the dedup window keeps committed generations for minutes, and each of
    their objects is one more for every full garbage collection to walk."""

    deltas: dict[BufferKey, Delta] = field(default_factory=dict)
    events: int = 0
    # Resolved with the flush result once the flush is done (Kafka acks, replay).
    done: asyncio.Future[WriteResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # What the source notes about this generation's events (the Kafka runtime: records
    # to ack after the commit, where each user's events came from). Owned by the source,
    # which reads it when the flusher hands it the generation (`extra_for`); dropped
    # after the flush.
    notes: object | None = None
    log: EventLog | None = None
    created: float = field(default_factory=time.monotonic)
    urgent: bool = False  # a durable caller waits: flush as soon as none is in flight
    waiters: Waiters = field(default_factory=Waiters)
    # Users whose rows were held by another transaction: their callers wait on these.
    held: dict[str, Waiters] = field(default_factory=dict)
    # Trace contexts of the calls this generation's flush acknowledges (tracing on only).
    trace_links: list[Any] | None = None

    def add(self, event: Event, goals: Iterable[Goal]) -> int:
        """Merge the event into its deltas; returns how many goals it moved."""
        self.events += 1
        if self.log is not None:
            goals = tuple(goals)
            self.log.append((event, goals))
        return fold(self.deltas, event, goals)

    def forget_user(self, user_id: str) -> int:
        """Drop the user's deltas and logged events; returns how many deltas."""
        keys = [key for key, delta in self.deltas.items() if delta.user_id == user_id]
        for key in keys:
            del self.deltas[key]
        if self.log is not None:
            self.log[:] = [item for item in self.log if item[0].user_id != user_id]
        return len(keys)

    def release(self) -> None:
        """After the flush: keep only what its waiters need (the dedup window may keep
        this generation for minutes)."""
        self.deltas, self.log, self.notes, self.trace_links = {}, None, None, None
