"""Callers waiting for one commit, and what they learn."""

from __future__ import annotations

import asyncio
from enum import IntEnum

# asyncio may run a timer up to its clock resolution early: deadlines this close count.
_TIMER_SLACK = 0.001


class Ack(IntEnum):
    """What a caller waiting for its rows learns."""

    PENDING = 0
    COMMITTED = 1
    ABORTED = 2  # shutdown gave up on the write (the caller answers "retry")
    TIMED_OUT = 3


class Waiters:
    """Callers waiting for one commit.

    Each caller awaits its own future, so a caller that is cancelled (client gone) never
    disturbs the others. Their deadlines share one timer, armed for the earliest: a timer
    per call cost a handle and a heap push/cancel on every durable call, while a group's
    callers all arrive within one flush and almost never time out.
    """

    __slots__ = ("_timer", "_timer_at", "_waiting", "state")

    def __init__(self) -> None:
        self._waiting: list[tuple[float, asyncio.Future[Ack]]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.state = Ack.PENDING

    def settle(self, state: Ack) -> None:
        self.state = state
        waiting, self._waiting = self._waiting, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _deadline, future in waiting or ():
            if not future.done():
                future.set_result(state)

    async def wait(self, deadline: float) -> Ack:
        """COMMITTED, ABORTED, or TIMED_OUT at `deadline` (event-loop time)."""
        if self.state != Ack.PENDING:
            return self.state
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Ack] = loop.create_future()
        if self._waiting is None:
            self._waiting = []
        self._waiting.append((deadline, future))
        if self._timer is None or deadline < self._timer_at:
            self._arm(loop, deadline)
        return await future

    @property
    def waiting(self) -> int:
        """Callers still waiting (cancelled or timed-out ones not counted)."""
        return sum(1 for _d, future in self._waiting or () if not future.done())

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Time out every caller whose deadline has come; re-arm for the next one."""
        self._timer = None
        now = loop.time() + _TIMER_SLACK
        keep = []
        for deadline, future in self._waiting or ():
            if future.done():
                continue
            if deadline <= now:
                future.set_result(Ack.TIMED_OUT)
            else:
                keep.append((deadline, future))
        self._waiting = keep or None
        if keep:
            self._arm(loop, min(deadline for deadline, _f in keep))
