"""Faust's aiokafka transport with a cheaper hand-over of each fetched record, and a
fetch loop that does not sleep through a drained stream buffer.

Faust's fetch loop hands every record to the topic conductor with
`wait_first(deliver(record), suspend_flow.wait())`: the delivery races a rebalance's flow
suspension so a delivery blocked on a full stream buffer can be abandoned. That race
costs four tasks and an `asyncio.wait` per record — the largest single per-record cost
of the worker (issue 11's profile) — although a delivery almost never blocks: it puts
the event into a stream buffer that has room.

`Consumer.wait_first` runs the delivery's first step directly. When it finishes without
waiting, the outcome is the one Faust's race gives (a delivery that completes at once
wins it) without any task. When it does wait (buffer full, flow suspended, producer
backed up), the started delivery is handed to Faust's race as it was, so suspension
abandons it exactly as before. Every other `wait_first` call goes to Faust unchanged.

Backpressure: while the pipeline's buffer is full the agents stop taking records, their
stream buffers fill, and Faust stops fetching those partitions until a buffer drains
(`on_buffer_full` / `on_buffer_drop`). With every partition stopped, Faust's fetch loop
sleeps a whole second; with some stopped, it waits up to a second for records of the
others only. Either way a partition whose buffer drained meanwhile waited for the rest
of that second: the worker idled ~0.9 s at a time after every full buffer (issue 11's
timeline). Here the loop waits for a partition to resume instead of sleeping, and a
fetch waits at most `FETCH_WAIT`.

Producer buffer: before every record Faust's conductor awaits
`producer.buffer.wait_until_ebb()`, whose size check reads `app.conf.producer_threaded`
through Faust's settings attribute access — ≈ 3 % of the worker's CPU in a profile, for a
buffer only tables' `send_soon` fills (this app has none). `Producer` gives its buffer a
size that reads the queue only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from mode.services import WaitResults

# Longest wait of one fetch for records of the partitions being fetched (Faust: 1 s).
FETCH_WAIT = 0.05

# The flow-suspension wait (`suspend_flow`, an asyncio.Event) Faust's fetch loop races
# every delivery against. Waiting on an event has no side effect, so a wait that was never
# started can be dropped.
_FLOW_WAIT = asyncio.Event.wait.__code__


class _Started:
    """Awaitable that continues a coroutine which already ran up to its first wait."""

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any):
        self.coro = coro
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting_on = self.coro, self.waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:  # cancelled (flow suspended) or thrown in
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waiting_on = coro.send(sent)
                except StopIteration as done:
                    return done.value


async def _continue(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Any:
    return await _Started(coro, waiting_on)


def _is_delivery(coros: tuple[Any, ...]) -> bool:
    """The fetch loop's call: (delivery coroutine, suspend_flow.wait() coroutine)."""
    return (
        len(coros) == 2
        and isinstance(coros[0], Coroutine)
        and getattr(coros[1], "cr_code", None) is _FLOW_WAIT
    )


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer; record hand-over without tasks when it cannot block,
    and fetching resumed as soon as a stream buffer has drained."""

    _resumed_event: asyncio.Event | None = None

    @property
    def _resumed(self) -> asyncio.Event:
        """Set when a partition stopped for a full stream buffer is fetched again."""
        if self._resumed_event is None:
            self._resumed_event = asyncio.Event()
        return self._resumed_event

    def on_buffer_drop(self, tp: TP) -> None:
        super().on_buffer_drop(tp)
        self._resumed.set()

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        resumed = self._resumed
        resumed.clear()  # before looking: a resume from now on ends the wait below
        if self.flow_active and not self.app.client_only and not self._get_active_partitions():
            # every partition stopped for a full stream buffer (Faust sleeps 1 s here)
            await self.wait_first(resumed.wait(), timeout=timeout)
            return {}, set()
        return await super()._wait_next_records(timeout)

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        return await super()._getmany(active_partitions, min(timeout, FETCH_WAIT))

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if timeout is not None or not _is_delivery(coros):
            return await super().wait_first(*coros, timeout=timeout)
        delivery, flow_wait = coros
        try:
            waiting_on = delivery.send(None)
        except StopIteration as done:
            flow_wait.close()  # never started: nothing to clean up
            if self._stopped.is_set() or self._crashed.is_set():
                return WaitResults([], [], True)
            return WaitResults([delivery], [done.value], False)
        except BaseException:
            flow_wait.close()
            raise
        return await super().wait_first(_continue(delivery, waiting_on), flow_wait)


class UnthreadedProducerBuffer(ProducerBuffer):
    """Faust's producer buffer, sized without a settings lookup (unthreaded producer)."""

    @property
    def size(self) -> int:
        return self.pending.qsize()


class Producer(faust_aiokafka.Producer):
    """Faust's aiokafka producer with the cheaper buffer when it is not threaded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.app.conf.producer_threaded:
            buffer = UnthreadedProducerBuffer(loop=self.loop, beacon=self.beacon)
            buffer.app = self.app
            self.buffer = buffer


class Transport(faust_aiokafka.Transport):
    """The aiokafka transport, creating the consumer and producer above."""

    Consumer = Consumer
    Producer = Producer
