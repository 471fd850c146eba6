"""`tables.waiters.Waiters`: the callers of one commit share one deadline timer, yet each
keeps its own deadline, and a caller that goes away disturbs nobody.

Deadlines are tested on an event loop whose clock only the test moves
(tests/helpers/clock.py): what happens before and at each deadline, not elapsed time."""

from __future__ import annotations

import asyncio

from tables.waiters import Ack, Waiters
from tests.helpers.clock import VirtualClockLoop, run_on_virtual_clock

ABORTED, COMMITTED, PENDING, TIMED_OUT = Ack.ABORTED, Ack.COMMITTED, Ack.PENDING, Ack.TIMED_OUT


def test_many_callers_share_one_timer_and_are_answered_by_settle():
    async def scenario(loop: VirtualClockLoop) -> None:
        before = loop.live_timers()
        waiters = Waiters()
        now = loop.time()
        callers = [asyncio.create_task(waiters.wait(now + 60 + i / 1000)) for i in range(500)]
        await asyncio.sleep(0)  # one loop turn: every caller is waiting now
        assert waiters.waiting == 500
        assert loop.live_timers() == before + 1
        waiters.settle(COMMITTED)
        assert set(await asyncio.gather(*callers)) == {COMMITTED}
        assert loop.live_timers() == before  # the shared timer went with the commit
        assert await waiters.wait(now + 60) == COMMITTED  # late callers: answered at once

    run_on_virtual_clock(scenario)


def test_each_caller_times_out_at_its_own_deadline():
    async def scenario(loop: VirtualClockLoop) -> None:
        waiters = Waiters()
        start = loop.time()
        late = asyncio.create_task(waiters.wait(start + 0.3))
        early = asyncio.create_task(waiters.wait(start + 0.1))  # earlier: the timer moves up
        never = asyncio.create_task(waiters.wait(start + 60))
        await loop.advance_to(start + 0.099)
        assert not early.done() and not late.done()
        await loop.advance_to(start + 0.1)
        assert early.done() and early.result() == TIMED_OUT
        assert not late.done() and not never.done()
        await loop.advance_to(start + 0.299)
        assert not late.done()
        await loop.advance_to(start + 0.3)
        assert late.done() and late.result() == TIMED_OUT
        assert not never.done() and waiters.state == PENDING
        waiters.settle(ABORTED)
        await asyncio.sleep(0)  # one loop turn: the settled caller wakes
        assert never.done() and never.result() == ABORTED

    run_on_virtual_clock(scenario)


async def test_a_cancelled_caller_does_not_disturb_the_others():
    loop = asyncio.get_running_loop()
    waiters = Waiters()
    deadline = loop.time() + 60
    gone = asyncio.create_task(waiters.wait(deadline))
    staying = [asyncio.create_task(waiters.wait(deadline)) for _ in range(3)]
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert gone.cancelled()
    assert waiters.waiting == 3
    waiters.settle(COMMITTED)
    assert await asyncio.gather(*staying) == [COMMITTED] * 3
