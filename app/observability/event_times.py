"""Counting event times passed over (contract §1.3): every one in the metric, and at most
one warning line a minute in the log, with the counts per reason since the last line.

A producer with a broken clock (or a hostile one) can stamp every event; a log line per
event would turn that into a disk flood. The first fallback is logged at once, so a
single one is still seen; later ones wait for the minute to pass (the metric has them
all meanwhile).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any

from app.observability import metrics

log = logging.getLogger("app.event_times")


class FallbackLog:
    """`note(reason)`: O(1), counts the metric and logs at most once per `interval` s."""

    def __init__(self, logger: logging.Logger = log, interval: float = 60.0):
        self.logger = logger
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self._children: dict[str, Any] = {}
        self._last = -math.inf

    def note(self, reason: str) -> None:
        child = self._children.get(reason)
        if child is None:
            child = self._children[reason] = metrics.EVENT_TIME_FALLBACK.labels(reason)
        child.inc()
        self.counts[reason] += 1
        now = time.monotonic()
        if now - self._last >= self.interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log what fell back since the last line (nothing when nothing did)."""
        now = time.monotonic() if now is None else now
        if self.counts:
            self.logger.warning(
                "event times passed over (out of bounds or unreadable): next source used",
                extra={"fallbacks": dict(self.counts)},
            )
            self.counts.clear()
        self._last = now


# One per process: every source of a process shares the minute's line.
FALLBACKS = FallbackLog()
note = FALLBACKS.note
