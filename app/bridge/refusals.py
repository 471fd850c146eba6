"""Refused calls in the log without a line per call: one warning per interval with the
counts per reason since the last one (metrics count every call anyway).

Any client can send garbage as fast as it likes; a log line (let alone a traceback) per
bad call would turn that into a disk and CPU flood.
"""

from __future__ import annotations

import logging
import time
from collections import Counter


class RefusalLog:
    """Aggregates refusals; `note` is O(1) and logs at most once per `interval` seconds."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0):
        self.logger = logger
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self._last = time.monotonic()
        self._example: dict[str, str] = {}

    def note(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        self._example.setdefault(reason, message)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Log what was refused since the last line (nothing when nothing was)."""
        if self.counts:
            self.logger.warning(
                "calls refused",
                extra={
                    "refused": dict(self.counts),
                    "examples": dict(self._example),
                    "seconds": round((now or time.monotonic()) - self._last, 1),
                },
            )
            self.counts.clear()
            self._example.clear()
        self._last = now or time.monotonic()
