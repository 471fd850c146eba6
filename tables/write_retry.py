"""One flush's write, retried until it is done: a flush always finishes.

- An outage (database unreachable, shutting down, schema missing) is retried with capped
  backoff for as long as it lasts; rows another transaction holds (`RowsLocked`, Kafka)
  are polled briskly — they are not an outage.
- A retry-class error (deadlock, lock or statement timeout) is retried a few times, then
  the rows are isolated one by one (poison rows dead-lettered, the rest committed).
- Anything else (a bug) isolates at once; when isolation itself keeps failing, the
  flush is given up (`WriteResult.abandoned`) and its callers told to retry.
- After a write in parts, only the parts that failed are retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_never

from app.core.progress import Delta
from tables.db import RETRY, backoff_delay
from tables.event_ids import EventClaim
from tables.write_result import Extra, RowsLocked, TransientWriteError, WriteResult
from tables.writer import Writer

log = logging.getLogger(__name__)

RETRIES_BEFORE_ISOLATING = 3
ISOLATIONS_BEFORE_GIVING_UP = 3
HELD_ROWS_POLL = 0.2  # longest wait between two looks at rows another transaction holds

FailureListener = Callable[[BaseException, int], None]


class _Again(Exception):
    """This attempt failed; the next one waits `WriteAttempts.delay`."""


class WriteAttempts:
    """The state of one flush's write across its attempts."""

    def __init__(
        self,
        writer: Callable[[], Writer],
        deltas: Sequence[Delta],
        extra: Extra | None,
        claim: EventClaim | None,
        *,
        max_backoff: float,
        on_failure: FailureListener,
    ):
        self.writer = writer  # read at each attempt: the flusher's current writer
        self.deltas = deltas
        self.extra = extra
        self.claim = claim
        self.max_backoff = max_backoff
        self.on_failure = on_failure
        self.result = WriteResult()
        self.attempt = self.retries = self.isolations = 0
        self.isolate = False
        self.delay = 0.0

    async def run(self) -> WriteResult:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Again),
            wait=self._wait,
            stop=stop_never,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._once()
        return self.result

    def _wait(self, _state: RetryCallState) -> float:
        return self.delay

    async def _once(self) -> None:
        if not self.deltas and self.extra is None:
            return
        try:
            written = await self.writer().write(
                self.deltas, self.extra, claim=self.claim, isolate=self.isolate
            )
        except TransientWriteError as exc:
            self._transient(exc)
        except Exception as exc:  # a bug: isolate the rows, then give up on them
            if self._bug(exc):
                return
        else:
            self.result.merge(written)
            return
        raise _Again()

    def _transient(self, exc: TransientWriteError) -> None:
        if exc.remaining is not None:  # some parts committed: retry only the rest
            self.deltas, self.extra = exc.remaining, exc.remaining_extra
            if exc.committed is not None:
                self.result.merge(exc.committed)
            if self.claim is not None:
                self.claim = self.claim.only_users({d.user_id for d in self.deltas})
        self.attempt += 1
        if exc.kind == RETRY:
            self.retries += 1
            self.isolate = self.retries >= RETRIES_BEFORE_ISOLATING
        self.on_failure(exc, self.attempt)
        # Kafka waits for held rows: poll them briskly, they are not an outage.
        cap = min(HELD_ROWS_POLL, self.max_backoff) if isinstance(exc, RowsLocked) else None
        self.delay = backoff_delay(self.attempt, cap=self.max_backoff if cap is None else cap)
        log.warning(
            "flush failed, retrying",
            extra={
                "attempt": self.attempt,
                "retry_in_ms": int(self.delay * 1000),
                "error": str(exc)[:300],
                "rows": len(self.deltas),
            },
        )

    def _bug(self, exc: Exception) -> bool:
        """True when the flush is given up."""
        self.attempt += 1
        self.on_failure(exc, self.attempt)
        if self.isolate:
            self.isolations += 1
        if self.isolations >= ISOLATIONS_BEFORE_GIVING_UP:
            log.error(
                "flush abandoned: its rows could not be written or dead-lettered",
                extra={"rows": len(self.deltas), "attempts": self.attempt},
            )
            self.result.abandoned = len(self.deltas)
            return True
        self.isolate = True
        log.exception("flush failed unexpectedly, isolating rows", extra={"attempt": self.attempt})
        self.delay = backoff_delay(self.attempt, cap=self.max_backoff)
        return False
