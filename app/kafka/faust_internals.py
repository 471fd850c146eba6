"""Every use of a private part of Faust (faust-streaming) and mode, in one place.

The worker's per-record path runs through Faust's consumer, conductor and app. Each
override below replaces a piece of Faust that a profile of the worker showed costing
much more than the work it guards; each relies on a name or a behaviour that is not
Faust's public API, so it is written against the versions in `PINNED` and checked by
tests/unit/test_library_internals.py (`check_versions`, `METHODS`, `ATTRIBUTES`).

- `Consumer.wait_first` (mode `Service.wait_first`, `_stopped`, `_crashed`; Faust's
  fetch loop `Consumer._drain_messages` calling it as
  `wait_first(callback(message), self.suspend_flow.wait())`): Faust races every record's
  delivery against a rebalance's flow suspension, which costs four tasks and an
  `asyncio.wait` per record — the largest single per-record cost of the worker —
  although a delivery almost never blocks (it puts the event into a stream buffer that
  has room). Here the delivery's first step runs directly. When it finishes without
  waiting, the outcome is the one Faust's race gives (a delivery that completes at once
  wins it) without any task; when it does wait (buffer full, flow suspended, producer
  backed up), the started delivery goes to Faust's race as it was, so suspension
  abandons it exactly as before. Every other `wait_first` call goes to mode unchanged.
- `Consumer._wait_next_records`, `_getmany`, `_get_active_partitions`,
  `on_buffer_drop`: while the pipeline's buffer is full the agents stop taking records,
  their stream buffers fill and Faust stops fetching those partitions until a buffer
  drains (`on_buffer_full` / `on_buffer_drop`). With every partition stopped, Faust's
  fetch loop sleeps a whole second; with some stopped, it waits up to a second for
  records of the others only. Either way a partition whose buffer drained meanwhile
  waited for the rest of that second: the worker idled ~0.9 s at a time after every
  full buffer. Here the loop waits for a partition to resume instead of sleeping, and a
  fetch waits at most `FETCH_WAIT`.
- `ProducerBuffer.size` / `pending`: before every record Faust's conductor awaits
  `producer.buffer.wait_until_ebb()`, whose size check reads `app.conf.producer_threaded`
  through Faust's settings attribute access — ≈ 3 % of the worker's CPU in a profile,
  for a buffer only tables' `send_soon` fills (this app has none). The unthreaded
  producer's buffer here reads its queue's size only.
- `App.create_event` (reads `conf.Event`): Faust reads `app.conf.Event` for every record
  it hands to a stream, through the same settings access (≈ 1.7 % of the worker's CPU in
  a profile); the class is read once here.
- `TableManager.on_start`, `_update_channels`, `recovery`: Faust's table manager sleeps
  1 s before it starts so that tables declared while the app is already starting can
  still register. Everything of ours is declared in `create_app`, before the worker
  starts (and it declares no Faust table), so the nap only delayed every start — and
  every restart after a crash — by a second before the consumer subscribed.
- `Producer._settings_extra` (merged last into the aiokafka producer's settings by
  `_new_producer`): the producer is idempotent, which Faust turns on only inside
  transactions. A forwarded copy whose send failed is resent (agents/ingest.py); with
  an idempotent producer no later copy to the same repartition partition can have been
  written before it, so the resent copy is never taken for one already applied.
- `Consumer._committed_offset`: the lag gauge (app/kafka/lag.py) reads the offsets
  Faust already holds per partition; Faust has no public reader of them, and asking the
  broker every few seconds would add a round trip per partition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator, Mapping
from typing import Any, NamedTuple

import faust
import mode
from faust.tables import TableManager
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from mode.services import WaitResults
from mode.utils.locks import Event as ModeEvent

from app.core.pins import pin_mismatch

# The versions every name below was read in; an upgrade re-checks each of them.
PINNED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1"}

# Longest wait of one fetch for records of the partitions being fetched (Faust: 1 s).
FETCH_WAIT = 0.05

# The flow-suspension wait (`suspend_flow`, an asyncio.Event) Faust's fetch loop races
# every delivery against. Waiting on an event has no side effect, so a wait that was never
# started can be dropped.
_FLOW_WAIT = asyncio.Event.wait.__code__


def check_versions() -> str | None:
    """None when the installed Faust and mode are the pinned ones, else what differs."""
    return pin_mismatch(__name__, PINNED)


class Method(NamedTuple):
    """A library method relied on (overridden or called), with its parameter names."""

    owner: type
    name: str
    params: tuple[str, ...]
    # code of the library's method that the override replaces or depends on
    source_has: tuple[str, ...] = ()


class Attribute(NamedTuple):
    """An attribute the library sets on its instances, read or replaced here."""

    owner: type
    name: str
    kind: type


FaustConsumer = faust_consumer.Consumer

METHODS = (
    Method(mode.Service, "wait_first", ("self", "coros", "timeout")),
    Method(
        FaustConsumer,
        "_drain_messages",
        ("self", "fetcher"),
        ("self.wait_first(", "callback(message), self.suspend_flow.wait()"),
    ),
    Method(FaustConsumer, "_wait_next_records", ("self", "timeout"), ("await self.sleep(1)",)),
    Method(faust_aiokafka.Consumer, "_getmany", ("self", "active_partitions", "timeout")),
    Method(FaustConsumer, "_get_active_partitions", ("self",)),
    Method(FaustConsumer, "on_buffer_drop", ("self", "tp")),
    Method(ProducerBuffer, "wait_until_ebb", ("self",), ("self.size",)),
    Method(faust.App, "create_event", ("self", "key", "value", "headers", "message")),
    Method(
        TableManager,
        "on_start",
        ("self",),
        ("await self.sleep(1.0)", "await self._update_channels()", "await self.recovery.start()"),
    ),
    Method(TableManager, "_update_channels", ("self",)),
    Method(faust_aiokafka.Producer, "_settings_extra", ("self",)),
    Method(
        faust_aiokafka.Producer,
        "_new_producer",
        ("self", "transactional_id"),
        ("**self._settings_extra()",),
    ),
)


ATTRIBUTES = (
    Attribute(mode.Service, "_stopped", ModeEvent),
    Attribute(mode.Service, "_crashed", ModeEvent),
    Attribute(FaustConsumer, "suspend_flow", asyncio.Event),
    Attribute(FaustConsumer, "_committed_offset", dict),
    Attribute(ProducerBuffer, "pending", asyncio.Queue),
    Attribute(TableManager, "recovery", mode.Service),
)


# ------------------------------------------------------------------ record hand-over


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


# ------------------------------------------------------------------ producer, app, tables


class UnthreadedProducerBuffer(ProducerBuffer):
    """Faust's producer buffer, sized without a settings lookup (unthreaded producer)."""

    @property
    def size(self) -> int:
        return self.pending.qsize()


class Producer(faust_aiokafka.Producer):
    """Faust's aiokafka producer, idempotent, with the cheaper buffer when it is not
    threaded."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.app.conf.producer_threaded:
            buffer = UnthreadedProducerBuffer(loop=self.loop, beacon=self.beacon)
            buffer.app = self.app
            self.buffer = buffer


class ChallengeApp(faust.App):
    """faust.App creating each record's event without a settings lookup."""

    _event_class: Any = None

    def create_event(self, key: Any, value: Any, headers: Any, message: Any) -> Any:
        event_class = self._event_class
        if event_class is None:
            event_class = self._event_class = self.conf.Event
        return event_class(self, key, value, headers, message)


class TablesDeclaredUpFront(TableManager):
    """Faust's table manager without its one-second nap at start."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


def committed_offsets(consumer: Any) -> Any:
    """The group's committed offset per partition, as Faust's consumer holds it (loaded
    on assignment, advanced on each commit): read for the lag gauge without a broker
    round trip."""
    return getattr(consumer, "_committed_offset", {})
