"""The buffer: events merge into one `Delta` per (user, goal, period) of the current
generation, and the rows another transaction held wait here for the next flush.

While a generation is being written the next one fills; when that is full too, callers
wait for space (backpressure) instead of growing memory. The flush loop
(tables/sender.py) decides when a generation is taken.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass

from app.core.challenges import Goal
from app.core.events import Event
from app.core.progress import BufferKey, Delta, fold
from tables.generation import EventLog, Generation
from tables.waiters import Ack, Waiters
from tables.write_result import WriteResult


class BufferFull(Exception):
    """The buffer stayed full (database not keeping up) for longer than the caller waits."""


class Closed(Exception):
    """The flusher is shut down and takes no more events."""


@dataclass(slots=True)
class Taken:
    """What one flush writes: a generation and the rows carried from earlier flushes."""

    generation: Generation
    deltas: list[Delta]
    events: EventLog | None


class Accumulator:
    def __init__(self, max_size: int, *, track_events: bool, wake: asyncio.Event):
        self.max_size = max_size
        self.track_events = track_events  # keep every event (re-fold on duplicates)
        self.wake = wake  # the flush loop's: something new to look at
        self.current: Generation | None = None
        self.closed = False
        self._space = asyncio.Event()
        self._space.set()
        # Carried to the next flush: deltas (older first) and, with event ids, their events.
        self.carry: list[Delta] = []
        self._carry_log: EventLog = []
        self.carry_due = 0.0
        self._carry_in_flight = 0
        self._held: dict[str, Waiters] = {}

    @property
    def pending(self) -> int:
        return len(self.current.deltas) if self.current else 0

    @property
    def carried(self) -> int:
        """Deltas waiting for rows another transaction holds (the flush in flight's too)."""
        return len(self.carry) + self._carry_in_flight

    def generation(self) -> Generation:
        if self.current is None:
            self.current = Generation(log=[] if self.track_events else None)
            self.wake.set()  # arm the interval timer of the new generation
        return self.current

    def try_add(
        self, event: Event, goals: Iterable[Goal], urgent: bool = False
    ) -> tuple[Generation, int] | None:
        """Add without waiting; None when the buffer is full."""
        if self.closed:
            raise Closed("flusher is closed")
        current = self.current
        if current is not None and len(current.deltas) >= self.max_size:
            self.wake.set()
            return None
        generation = current or self.generation()
        moved = generation.add(event, goals)
        if urgent and not generation.urgent:
            generation.urgent = True
            self.wake.set()
        elif len(generation.deltas) >= self.max_size:
            self.wake.set()
        return generation, moved

    async def add(
        self,
        event: Event,
        goals: Iterable[Goal],
        *,
        timeout: float | None = None,
        urgent: bool = False,
    ) -> tuple[Generation, int]:
        """Add, waiting for space while the buffer is full (BufferFull after `timeout`)."""
        added = self.try_add(event, goals, urgent)
        if added is not None:
            return added
        goals = tuple(goals)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            added = self.try_add(event, goals, urgent)
            if added is not None:
                return added
            self._space.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise BufferFull("buffer full: database not keeping up")
            try:
                await asyncio.wait_for(self._space.wait(), remaining)
            except TimeoutError:
                raise BufferFull("buffer full: database not keeping up") from None

    def space_freed(self) -> None:
        self._space.set()

    def take(self) -> Taken:
        """The current generation and everything carried, for one flush."""
        generation, self.current = self.current, None
        if generation is None:  # only carried rows to retry
            generation = Generation(log=[] if self.track_events else None)
        self._space.set()  # the next generation may fill while this one is written
        carry, carry_log = self.carry, self._carry_log
        self.carry, self._carry_log = [], []
        self._carry_in_flight = len(carry)
        deltas = [*carry, *generation.deltas.values()]
        events = None if generation.log is None else [*carry_log, *generation.log]
        return Taken(generation, deltas, events)

    def settle(self, taken: Taken, result: WriteResult, carry_retry: float) -> None:
        """Carry the held users' deltas to the next flush; answer everyone else."""
        generation = taken.generation
        self._carry_in_flight = 0
        answer = Ack.ABORTED if result.abandoned else Ack.COMMITTED
        held_users = {d.user_id for d in result.carried}
        for user, waiters in list(self._held.items()):
            if user not in held_users:  # carried rows of this user are now committed
                del self._held[user]
                waiters.settle(answer)
        if held_users:
            self._carry_users(taken, result, held_users)
            self.carry_due = time.monotonic() + carry_retry
            for user in held_users:
                generation.held[user] = self._held.setdefault(user, Waiters())
        generation.waiters.settle(answer)
        if not generation.done.done():
            generation.done.set_result(result)

    def _carry_users(self, taken: Taken, result: WriteResult, users: set[str]) -> None:
        if taken.events is None:
            self.carry = result.carried
            return
        # one delta per key again, from the events in order
        self._carry_log = [item for item in taken.events if item[0].user_id in users]
        folded: dict[BufferKey, Delta] = {}
        for event, goals in self._carry_log:
            fold(folded, event, goals)
        self.carry = list(folded.values())

    def drop_user(self, user_id: str) -> int:
        """GDPR deletion: forget everything still buffered or carried for `user_id`, so
        no later flush re-creates its rows. Callers waiting on its held rows are answered
        (their events are erased with the user). A generation already being written is
        not touched (tables/gdpr.py waits for it). Returns how many entries were dropped."""
        dropped = 0 if self.current is None else self.current.forget_user(user_id)
        carried = sum(1 for delta in self.carry if delta.user_id == user_id)
        if carried:
            self.carry = [delta for delta in self.carry if delta.user_id != user_id]
            self._carry_log = [item for item in self._carry_log if item[0].user_id != user_id]
            dropped += carried
        waiters = self._held.pop(user_id, None)
        if waiters is not None:
            waiters.settle(Ack.COMMITTED)
        if dropped:
            self._space.set()
        return dropped

    def abort(self, flushing: Generation | None) -> None:
        """Shutdown gave up: every waiting caller is told (they answer UNAVAILABLE)."""
        self.closed = True
        for generation in (flushing, self.current):
            if generation is not None:
                generation.waiters.settle(Ack.ABORTED)
        for waiters in self._held.values():
            waiters.settle(Ack.ABORTED)
