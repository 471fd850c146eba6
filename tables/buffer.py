"""The dedup buffer and its flusher (SPEC §6).

Events merge into one `Delta` per (user, goal, period) of the current *generation*.
A flush takes the whole generation and writes it in one transaction (group commit:
every call of a generation shares one flush). When it starts:

- at once when a durable caller waits (`urgent`) and no flush is in flight; whatever
  arrives while a flush is in flight forms the next group, flushed right after;
- otherwise when the oldest entry is `interval` old (buffered gRPC acks, Kafka, replay),
  or when `max_size` entries are pending.

While a generation is being written the next one fills; when that is full too, callers
wait (backpressure) instead of growing memory.

Rows held by another transaction (the backend's claim) are skipped by the write: the
users owning them are *carried*, whole and in order, into the next flush, and only
their callers keep waiting (`Generation.held`); everyone else is answered. A failed write
is retried with backoff while the database is unreachable; anything else ends in row
isolation and dead letters, so a flush always finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.core.challenges import Goal
from app.core.events import Event
from app.core.progress import BufferKey, Delta, fold
from tables.db import RETRY, backoff_delay
from tables.event_ids import EventClaim, prune
from tables.writer import Extra, RowsLocked, TransientWriteError, Writer, WriteResult

log = logging.getLogger(__name__)

# What a waiting caller learns (Waiters.wait).
PENDING, COMMITTED, ABORTED, TIMED_OUT = 0, 1, 2, 3

# A flush that keeps failing for other reasons than an outage: isolate after this many.
_RETRIES_BEFORE_ISOLATING = 3
# ... and give up on it (callers are told to retry) after this many failed isolations.
_ISOLATIONS_BEFORE_GIVING_UP = 3
# asyncio may run a timer up to its clock resolution early: deadlines this close count.
_TIMER_SLACK = 0.001


class BufferFull(Exception):
    """The buffer stayed full (database not keeping up) for longer than the caller waits."""


class Closed(Exception):
    """The flusher is shut down and takes no more events."""


class Waiters:
    """Callers waiting for one commit.

    Each caller awaits its own future, so a caller that is cancelled (client gone) never
    disturbs the others. Their deadlines share one timer, armed for the earliest: a timer
    per call cost a handle and a heap push/cancel on every durable call, while a group's
    callers all arrive within one flush and almost never time out.
    """

    __slots__ = ("_timer", "_timer_at", "_waiting", "state")

    def __init__(self) -> None:
        self._waiting: list[tuple[float, asyncio.Future[int]]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.state = PENDING

    def settle(self, state: int) -> None:
        self.state = state
        waiting, self._waiting = self._waiting, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _deadline, future in waiting or ():
            if not future.done():
                future.set_result(state)

    async def wait(self, deadline: float) -> int:
        """COMMITTED, ABORTED, or TIMED_OUT at `deadline` (event-loop time)."""
        if self.state != PENDING:
            return self.state
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
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
                future.set_result(TIMED_OUT)
            else:
                keep.append((deadline, future))
        self._waiting = keep or None
        if keep:
            self._arm(loop, min(deadline for deadline, _f in keep))


@dataclass(slots=True, eq=False)
class Generation:
    """Everything buffered between two flushes, and what its writers wait on.

    Slotted: the dedup window keeps committed generations for minutes, and each of
    their objects is one more for every full garbage collection to walk.
    """

    deltas: dict[BufferKey, Delta] = field(default_factory=dict)
    events: int = 0
    # Resolved with the flush result once the flush is done (Kafka acks, replay).
    done: asyncio.Future[WriteResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. Kafka positions
    # With event-id tracking: every event with its goals, to re-fold without duplicates.
    log: list[tuple[Event, tuple[Goal, ...]]] | None = None
    created: float = field(default_factory=time.monotonic)
    urgent: bool = False  # a durable caller waits: flush as soon as none is in flight
    waiters: Waiters = field(default_factory=Waiters)
    # Users whose rows were held by another transaction: their callers wait on these.
    held: dict[str, Waiters] = field(default_factory=dict)
    # Tracing on only: span contexts of the calls whose events this generation holds,
    # for the flush span's links (app/observability/tracing.py).
    trace_links: list[Any] | None = None

    def add(self, event: Event, goals: Iterable[Goal]) -> int:
        """Merge the event into its deltas; returns how many goals it moved."""
        self.events += 1
        if self.log is not None:
            goals = tuple(goals)
            self.log.append((event, goals))
        return fold(self.deltas, event, goals)


FlushListener = Callable[[Generation, WriteResult, float], None]


class Flusher:
    """Owns the buffer generations, the carried rows and the flush loop."""

    def __init__(
        self,
        writer: Writer,
        *,
        interval: float = 1.0,
        max_size: int = 10_000,
        extra_for: Callable[[Generation], Extra | None] | None = None,
        on_flush: FlushListener | None = None,
        on_retry: Callable[[BaseException, int], None] | None = None,
        max_backoff: float = 5.0,
        event_id_window: float | None = None,
        commit_delay: float = 0.0,
        busy_commit_delay: float | None = None,
        commit_siblings: int = 0,
        carry_retry: float = 0.05,
        prune_every: float = 60.0,
    ):
        self.writer = writer
        self.interval = interval
        self.max_size = max_size
        self.extra_for = extra_for
        self.on_flush = on_flush
        self.on_retry = on_retry
        self.max_backoff = max_backoff
        # Record event ids with the rows (gRPC): dedup across replicas and restarts.
        self.event_id_window = event_id_window
        # Urgent flushes wait `commit_delay` for more callers to join (0: start at once),
        # and `busy_commit_delay` while at least `commit_siblings` callers are in flight
        # (`crowd`, set by the gRPC server): a busy server gathers bigger groups, whose
        # flush costs less per event, without a quiet one paying that latency.
        self.commit_delay = commit_delay
        self.busy_commit_delay = commit_delay if busy_commit_delay is None else busy_commit_delay
        self.commit_siblings = commit_siblings
        self.crowd: Callable[[], int] | None = None
        # Carried rows are retried at least this often while nothing else is flushed.
        self.carry_retry = min(carry_retry, interval)
        # Expired event ids are deleted this often (beside the flushes, never between).
        self.prune_every = prune_every
        self._pruned_at = time.monotonic()
        self._prune_task: asyncio.Task[None] | None = None
        self.current: Generation | None = None
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        # Carried to the next flush: deltas (older first) and, with event ids, their events.
        self._carry: list[Delta] = []
        self._carry_log: list[tuple[Event, tuple[Goal, ...]]] = []
        self._carry_due = 0.0
        self._held: dict[str, Waiters] = {}
        self._flushing: Generation | None = None
        self._carry_in_flight = 0
        # Health: failed attempts in a row, and when the flush in flight started.
        self.failures = 0
        self.flush_started: float | None = None

    # ---------------------------------------------------------------- intake

    @property
    def pending(self) -> int:
        return len(self.current.deltas) if self.current else 0

    @property
    def carried(self) -> int:
        """Deltas waiting for rows another transaction holds (the flush in flight's too)."""
        return len(self._carry) + self._carry_in_flight

    def generation(self) -> Generation:
        if self.current is None:
            self.current = Generation(log=None if self.event_id_window is None else [])
            self._wake.set()  # arm the interval timer of the new generation
        return self.current

    def try_add(
        self, event: Event, goals: Iterable[Goal], urgent: bool = False
    ) -> tuple[Generation, int] | None:
        """Add without waiting; None when the buffer is full."""
        if self._closed:
            raise Closed("flusher is closed")
        current = self.current
        if current is not None and len(current.deltas) >= self.max_size:
            self._wake.set()
            return None
        generation = current or self.generation()
        moved = generation.add(event, goals)
        if urgent and not generation.urgent:
            generation.urgent = True
            self._wake.set()
        elif len(generation.deltas) >= self.max_size:
            self._wake.set()
        return generation, moved

    async def add(
        self,
        event: Event,
        goals: Iterable[Goal],
        *,
        timeout: float | None = None,
        urgent: bool = False,
    ) -> tuple[Generation, int]:
        """Add, waiting for space while the buffer is full (BufferFull after `timeout`).

        `urgent`: the caller will wait for the commit (durable ack): flush at once."""
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

    async def committed(self, generation: Generation, user_id: str, timeout: float) -> int:
        """Wait until `user_id`'s events of `generation` are committed: COMMITTED, or
        TIMED_OUT after `timeout` seconds, or ABORTED (shutdown gave up on them)."""
        deadline = asyncio.get_running_loop().time() + timeout
        state = await generation.waiters.wait(deadline)
        if state != COMMITTED or not generation.held:
            return state
        held = generation.held.get(user_id)
        return state if held is None else await held.wait(deadline)

    def request_flush(self) -> None:
        current = self.current
        if current is not None:
            current.urgent = True
        self._wake.set()

    def stalled(self, after: float) -> bool:
        """Writes stuck: the last attempts failed, or one flush has run for `after` s."""
        started = self.flush_started
        return self.failures >= 2 or (started is not None and time.monotonic() - started > after)

    def drop_user(self, user_id: str) -> int:
        """GDPR deletion: forget everything still buffered or carried for `user_id` — its
        deltas and, with event-id tracking, its logged events — so no later flush
        re-creates its rows. Callers waiting on its held rows are answered (their events
        are erased with the user). A generation already being written is not touched
        (tables/gdpr.py waits for it). Returns how many buffered entries were dropped."""
        dropped = 0
        generation = self.current
        if generation is not None:
            keys = [key for key, delta in generation.deltas.items() if delta.user_id == user_id]
            for key in keys:
                del generation.deltas[key]
            if generation.log is not None:
                generation.log[:] = [item for item in generation.log if item[0].user_id != user_id]
            dropped += len(keys)
        carried = [delta for delta in self._carry if delta.user_id == user_id]
        if carried:
            self._carry = [delta for delta in self._carry if delta.user_id != user_id]
            self._carry_log = [item for item in self._carry_log if item[0].user_id != user_id]
            dropped += len(carried)
        waiters = self._held.pop(user_id, None)
        if waiters is not None:
            waiters.settle(COMMITTED)
        if dropped:
            self._space.set()
        return dropped

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="flusher")

    async def close(self) -> None:
        """Final flush of everything buffered (and carried), then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        else:
            await self._flush_all()
        self._closed = True
        if self._prune_task is not None:
            await self._prune_task  # best effort, never raises

    def abort(self) -> None:
        """Shutdown gave up (database down past the grace period): stop the loop and
        tell every waiting caller so (they answer UNAVAILABLE; the bridge redelivers)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        if self._prune_task is not None:
            self._prune_task.cancel()
        for generation in (self._flushing, self.current):
            if generation is not None:
                generation.waiters.settle(ABORTED)
        for waiters in self._held.values():
            waiters.settle(ABORTED)

    async def barrier(self) -> None:
        """Return once everything taken for writing before this call has been written
        (GDPR deletion). Waits for one empty generation flushed after them, not for
        later traffic nor for other users' carried rows."""
        if self._task is None:
            await self._flush_all()
            return
        generation = self.generation()
        self.request_flush()
        await asyncio.shield(generation.done)

    async def flush_now(self) -> None:
        """Flush everything buffered and carried so far, and wait (replay, tests)."""
        if self._task is None:
            await self._flush_all()
            return
        while self.current is not None or self._carry:
            generation = self.current
            self.request_flush()
            if generation is not None:
                await asyncio.shield(generation.done)
            else:
                await asyncio.sleep(self.carry_retry)

    def _due_in(self) -> float | None:
        """Seconds until the next flush is due (0: now); None: nothing to flush."""
        generation = self.current
        if self._closing:  # flush what is buffered now; held rows at their retry pace
            if generation is not None:
                return 0.0
            return max(0.0, self._carry_due - time.monotonic()) if self._carry else None
        now = time.monotonic()
        due: float | None = None
        if generation is not None:
            if generation.urgent or len(generation.deltas) >= self.max_size:
                return 0.0
            due = generation.created + self.interval - now
        if self._carry:
            carry_due = self._carry_due - now
            due = carry_due if due is None else min(due, carry_due)
        return None if due is None else max(0.0, due)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            due = self._due_in()
            if due is None:
                if self._closing:
                    return
                await self._wake.wait()
                continue
            if due > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), due)
                continue
            delay = self._commit_delay()
            if delay and not self._closing:
                await asyncio.sleep(delay)  # let more callers join the group
            await self._flush_generation()

    def _commit_delay(self) -> float:
        crowd = self.crowd
        if crowd is not None and crowd() >= self.commit_siblings:
            return self.busy_commit_delay
        return self.commit_delay

    async def _flush_all(self) -> None:
        while self.current is not None or self._carry:
            await self._flush_generation()
            if self._carry and self.current is None:
                await asyncio.sleep(self.carry_retry)

    async def _flush_generation(self) -> None:
        generation, self.current = self.current, None
        if generation is None:  # only carried rows to retry
            generation = Generation(log=None if self.event_id_window is None else [])
        self._space.set()  # the next generation may fill while this one is written
        self._flushing = generation
        carry, carry_log = self._carry, self._carry_log
        self._carry, self._carry_log = [], []
        self._carry_in_flight = len(carry)
        deltas = [*carry, *generation.deltas.values()]
        events = None if generation.log is None else [*carry_log, *generation.log]
        extra = self.extra_for(generation) if self.extra_for else None
        claim = (
            EventClaim(events, self.event_id_window)
            if events and self.event_id_window is not None
            else None
        )
        started = time.perf_counter()
        self.flush_started = time.monotonic()
        try:
            result = await self._write(deltas, extra, claim)
        finally:
            self.flush_started = None
        elapsed = time.perf_counter() - started
        self._settle(generation, result, events)
        self._flushing = None
        self._carry_in_flight = 0
        if self.on_flush:
            self.on_flush(generation, result, elapsed)
        # The dedup window keeps generations for minutes: keep only what waiters need.
        generation.deltas, generation.log, generation.meta = {}, None, {}
        self._space.set()
        if claim is not None and time.monotonic() - self._pruned_at > self.prune_every:
            self._pruned_at = time.monotonic()
            # Beside the flushes, not between them: deleting a minute of expired ids can
            # take longer than a flush, and every durable caller would wait for it.
            if self._prune_task is None or self._prune_task.done():
                self._prune_task = asyncio.create_task(self._prune_event_ids(), name="prune")

    async def _write(
        self, deltas: list[Delta], extra: Extra | None, claim: EventClaim | None
    ) -> WriteResult:
        """Retry while the database is unreachable; anything else that keeps failing is
        isolated row by row, and in the very end given up, so this always returns."""
        attempt = retries = isolations = 0
        isolate = False
        result = WriteResult()
        while deltas or extra is not None:
            try:
                result.merge(await self.writer.write(deltas, extra, claim=claim, isolate=isolate))
                break
            except TransientWriteError as exc:
                if exc.remaining is not None:  # some parts committed: retry only the rest
                    deltas, extra = exc.remaining, exc.remaining_extra
                    if exc.committed is not None:
                        result.merge(exc.committed)
                    if claim is not None:
                        claim = claim.only_users({d.user_id for d in deltas})
                attempt += 1
                if exc.kind == RETRY:
                    retries += 1
                    isolate = retries >= _RETRIES_BEFORE_ISOLATING
                self._failed(exc, attempt)
                # Kafka waits for held rows: poll them briskly, they are not an outage.
                cap = min(0.2, self.max_backoff) if isinstance(exc, RowsLocked) else None
                delay = backoff_delay(attempt, cap=self.max_backoff if cap is None else cap)
                log.warning(
                    "flush failed, retrying",
                    extra={
                        "attempt": attempt,
                        "retry_in_ms": int(delay * 1000),
                        "error": str(exc)[:300],
                        "rows": len(deltas),
                    },
                )
                await asyncio.sleep(delay)
            except Exception as exc:  # a bug: isolate the rows, then give up on them
                attempt += 1
                self._failed(exc, attempt)
                if isolate:
                    isolations += 1
                if isolations >= _ISOLATIONS_BEFORE_GIVING_UP:
                    log.error(
                        "flush abandoned: its rows could not be written or dead-lettered",
                        extra={"rows": len(deltas), "attempts": attempt},
                    )
                    result.abandoned = len(deltas)
                    break
                isolate = True
                log.exception(
                    "flush failed unexpectedly, isolating rows", extra={"attempt": attempt}
                )
                await asyncio.sleep(backoff_delay(attempt, cap=self.max_backoff))
        self.failures = 0
        return result

    def _failed(self, exc: BaseException, attempt: int) -> None:
        self.failures += 1
        if self.on_retry:
            self.on_retry(exc, attempt)

    def _settle(
        self,
        generation: Generation,
        result: WriteResult,
        events: list[tuple[Event, tuple[Goal, ...]]] | None,
    ) -> None:
        """Carry the held users' deltas to the next flush; answer everyone else."""
        held_users = {d.user_id for d in result.carried}
        for user, waiters in list(self._held.items()):
            if user not in held_users:  # carried rows of this user are now committed
                del self._held[user]
                waiters.settle(ABORTED if result.abandoned else COMMITTED)
        if held_users:
            if events is not None:  # one delta per key again, from the events in order
                self._carry_log = [item for item in events if item[0].user_id in held_users]
                folded: dict[BufferKey, Delta] = {}
                for event, goals in self._carry_log:
                    fold(folded, event, goals)
                self._carry = list(folded.values())
            else:
                self._carry = result.carried
            self._carry_due = time.monotonic() + self.carry_retry
            for user in held_users:
                generation.held[user] = self._held.setdefault(user, Waiters())
        generation.waiters.settle(ABORTED if result.abandoned else COMMITTED)
        if not generation.done.done():
            generation.done.set_result(result)

    async def _prune_event_ids(self) -> None:
        """Forget event ids older than the window (best effort, its own transaction)."""
        try:
            async with self.writer.engine.begin() as conn:
                removed = await prune(conn)
            log.debug("expired event ids pruned", extra={"rows": removed})
        except Exception as exc:
            log.warning("pruning event ids failed", extra={"error": str(exc)[:300]})
