"""An event loop whose clock only moves when the test moves it.

Timers (`call_at`, `call_later`, `asyncio.sleep`, `wait_for` timeouts) fire exactly when
the test sets the clock at or past them, whatever the machine's load: a test of deadlines
asserts what happens before and at each deadline without measuring elapsed time.

A scenario on this loop must never await something only a timer can finish without
moving the clock first (`advance_to`): the loop would wait on real time for a clock that
does not move.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """`time()` is `now`, which only `advance_to` changes; every timer is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.timers: list[asyncio.TimerHandle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        handle = super().call_at(when, callback, *args, context=context)
        self.timers.append(handle)
        return handle

    def live_timers(self) -> int:
        """Timers scheduled, not cancelled and not yet due."""
        return sum(1 for h in self.timers if not h.cancelled() and h.when() > self.now)

    async def advance_to(self, when: float, turns: int = 10) -> None:
        """Set the clock to `when`, then let the loop run the timers now due and what
        they wake, for a few turns (no real time passes)."""
        assert when >= self.now, "the clock never goes back"
        self.now = when
        for _ in range(turns):
            await asyncio.sleep(0)


def run_on_virtual_clock(scenario: Callable[[VirtualClockLoop], Coroutine[Any, Any, T]]) -> T:
    """Run `scenario(loop)` to its end on a fresh VirtualClockLoop."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, VirtualClockLoop)
        return runner.run(scenario(loop))
